"""Sphinx configuration of the airflow-provider-pacifica documentation.

Why Sphinx: it is what Apache Airflow's own providers use, the docstrings are written with reST
``:param:`` fields that autodoc renders as they are (no napoleon), and ``sphinx-build -W`` fails on
any warning. The API reference is ``sphinx.ext.autodoc`` over every module of the package
(``api/``; ``tests/package/test_docs.py`` checks none is missing). The connection's fields and the
``[pacifica]`` options are rendered from ``get_provider_info()`` by ``_ext/provider_info.py``,
so they are written once, in the code.

The build needs no network: intersphinx (links to Python's, Airflow's and requests' docs) is off
unless ``PACIFICA_DOCS_INTERSPHINX=1`` is set, because it downloads their inventories.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path[:0] = [str(REPO), str(DOCS / "_ext")]

# autodoc imports the modules, and importing Airflow reads (and may write) $AIRFLOW_HOME: never
# the user's own ~/airflow for a docs build.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="pacifica-docs-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_pacifica import __version__  # noqa: E402

project = "airflow-provider-pacifica"
author = "The airflow-provider-pacifica authors"
copyright = "the airflow-provider-pacifica authors, Apache-2.0"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.extlinks",
    "provider_info",
    "short_refs",
]
if os.environ.get("PACIFICA_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "airflow": ("https://airflow.apache.org/docs/apache-airflow/stable", None),
        "requests": ("https://requests.readthedocs.io/en/latest", None),
    }

# :readme:`anchor <reliability>` links to a section of the README, where a fact is said once there.
extlinks = {"readme": ("https://github.com/pacifica/airflow-provider-pacifica/blob/main/README.md#%s", "README: %s")}

exclude_patterns = ["_build", "README.md"]
root_doc = "index"
smartquotes = False  # JSON and shell text in descriptions keeps its straight quotes
default_role = "literal"  # `x` is code, as in the README
# Every reference into this package must resolve (a renamed class breaks the build); references to
# other projects (requests, aiohttp, Airflow, the standard library) have no target without
# intersphinx and stay plain text.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!~?airflow_provider_pacifica\.).*")]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show `conf.getboolean(...)`, not the value on the build machine

html_theme = "alabaster"
html_title = f"airflow-provider-pacifica {release}"
html_theme_options = {
    "description": "Apache Airflow provider for Pacifica Cartd",
    "fixed_sidebar": True,
    "page_width": "1200px",  # the tables of fields and outcomes need the room
}
html_static_path: list[str] = []
