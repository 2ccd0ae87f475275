"""Where the example pipelines put downloads: one root, and directory names that are safe.

Plain Python, no Airflow import. Read on the worker when a task runs (not when the DAG file is
parsed), so the dag-processor and the workers need not agree on anything but the files' home:
``$PACIFICA_DOWNLOAD_ROOT``, else ``$AIRFLOW_HOME/pacifica-downloads``. With several workers it
must name storage that every worker sees (a shared filesystem mounted at the same path).
"""

from __future__ import annotations

import os
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def download_root() -> str:
    """The absolute directory the example DAGs download into."""
    root = os.environ.get("PACIFICA_DOWNLOAD_ROOT") or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "pacifica-downloads"
    )
    return os.path.abspath(os.path.expanduser(root))


def safe_name(text: object, fallback: str = "unnamed") -> str:
    """A directory name from ``text`` (a run id holds ``:`` and ``+``, an event id anything):
    letters, digits, ``.``, ``_`` and ``-`` only, at most 100 characters, never hidden or empty."""
    name = _UNSAFE.sub("_", str(text)).strip("._")[:100]
    return name or fallback


def destination_for(*parts: object) -> str:
    """``download_root()/<safe part>/<safe part>...``."""
    return os.path.join(download_root(), *(safe_name(part) for part in parts))
