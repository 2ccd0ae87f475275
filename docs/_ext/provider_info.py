"""Tables rendered from ``get_provider_info()``, so that the docs cannot drift from the code.

``.. pacifica-conn-fields::`` lists the extra fields of the ``pacifica_cartd`` connection form;
``.. pacifica-config-options::`` lists the ``[pacifica]`` configuration options.
"""

from __future__ import annotations

import json
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from airflow_provider_pacifica.get_provider_info import get_provider_info


def _cell(text: Any) -> str:
    """Plain text in a reST cell: markup characters are escaped, never interpreted."""
    text = " ".join(str(text).split())
    for char in "\\*`|_":
        text = text.replace(char, "\\" + char)
    return text or "—"


def _literal(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return f"``{json.dumps(value) if not isinstance(value, str) else value}``"


class _Table(SphinxDirective):
    has_content = False
    title = ""
    header: tuple[str, ...] = ()
    widths = ""

    def rows(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        lines = [f".. list-table:: {self.title}", "   :header-rows: 1", f"   :widths: {self.widths}", ""]
        for row in [self.header, *self.rows()]:
            lines.append(f"   * - {row[0]}")
            lines.extend(f"     - {cell}" for cell in row[1:])
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="get_provider_info()"), self.content_offset, container)
        return container.children


class ConnFields(_Table):
    """The ``conn-fields`` of the ``pacifica_cartd`` connection type."""

    title = "Extra fields of the ``pacifica_cartd`` connection (from provider info)"
    header = ("extra", "form label", "type", "default", "meaning")
    widths = "15 18 12 10 45"

    def rows(self) -> list[tuple[str, ...]]:
        (conn_type,) = (c for c in get_provider_info()["connection-types"] if c["connection-type"] == "pacifica_cartd")
        rows = []
        for name, spec in conn_type["conn-fields"].items():
            schema = spec["schema"]
            kinds = [kind for kind in schema["type"] if kind != "null"]
            kind = " or ".join(kinds) + (" (secret)" if schema.get("format") == "password" else "")
            rows.append(
                (f"``{name}``", _cell(spec["label"]), kind, _literal(schema.get("default")), _cell(spec["description"]))
            )
        return rows


class ConfigOptions(_Table):
    """The options of the provider's ``[pacifica]`` configuration section."""

    title = "The ``[pacifica]`` section (``AIRFLOW__PACIFICA__<OPTION>``; from provider info)"
    header = ("option", "type", "default", "meaning")
    widths = "22 10 20 48"

    def rows(self) -> list[tuple[str, ...]]:
        options = get_provider_info()["config"]["pacifica"]["options"]
        return [
            (f"``{name}``", spec["type"], _literal(spec["default"]), _cell(spec["description"]))
            for name, spec in options.items()
        ]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("pacifica-conn-fields", ConnFields)
    app.add_directive("pacifica-config-options", ConfigOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
