"""The ``pacifica://`` asset URI scheme: ``pacifica://<service>/<path>``, e.g. ``pacifica://metadata/ingest``.

Registered in provider info (``asset-uris``) so that Airflow validates and normalises these URIs.
Plain Python, no Airflow import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from urllib.parse import SplitResult

INGEST_ASSET_URI = "pacifica://metadata/ingest"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Require a service (the URI's host part), lower-case it, and drop duplicate and trailing slashes."""
    if not uri.netloc:
        raise ValueError(f"a pacifica:// URI needs a service, as in {INGEST_ASSET_URI!r}")
    if uri.fragment:
        raise ValueError("a pacifica:// URI cannot have a fragment")
    path = "/".join(part for part in uri.path.split("/") if part)
    return uri._replace(netloc=uri.netloc.lower(), path=f"/{path}" if path else "")
