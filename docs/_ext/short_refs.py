"""Resolve short cross-references in docstrings, as a reader means them.

A docstring in ``operators/download.py`` says :class:`CartReadyTrigger`, a name it imports; Sphinx
looks for it only in the docstring's own module and at the top level. When the short name (or
dotted tail, as in ``PacificaCartdHook.read_cart``) matches exactly one documented object of this
package, the reference links to it; otherwise it stays plain text, as before.
"""

from __future__ import annotations

from typing import Any

PACKAGE = "airflow_provider_pacifica."


def _resolve(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py" or node.get("reftarget", "").startswith(PACKAGE):
        return None
    target = node["reftarget"].lstrip(".~")
    domain = env.get_domain("py")
    matches = [
        name for name in domain.objects if name.startswith(PACKAGE) and (name.endswith("." + target) or name == target)
    ]
    if len(matches) != 1:
        return None
    node["reftarget"] = matches[0]
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], matches[0], node, contnode)


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
