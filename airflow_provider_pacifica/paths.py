"""Relative file paths as Pacifica and the cart's tar give them, checked one way for both.

Plain Python, no Airflow import. Cartd does not sanitise paths (it writes a ``..`` path outside
its cart directory), so the file list is checked before a cart is created and the tar's member
names again when it is read, with the same rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


def path_parts(raw_path: str) -> list[str]:
    """The components of a ``/``-separated path; ``""`` and ``.`` are dropped, so leading,
    doubled and trailing slashes are too (a caller that must refuse absolute paths checks first).

    :raises ValueError: the path holds a NUL byte or ``..``, or is empty; the message says which
        (without the path, which the caller names in its own words).
    """
    if "\x00" in raw_path:
        raise ValueError("contains a NUL byte")
    parts = [part for part in raw_path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("contains '..'")
    if not parts:
        raise ValueError("is empty")
    return parts


def parent_directories(paths: Iterable[str]) -> set[str]:
    """Every directory that holds one of the normalised ``paths`` (``a/b/c`` gives ``a`` and ``a/b``)."""
    directories: set[str] = set()
    for path in paths:
        parts = path.split("/")
        directories.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return directories
