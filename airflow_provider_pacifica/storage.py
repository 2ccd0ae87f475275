"""Where a download goes: a local directory or object storage, from what the user gave.

The example DAGs' download root comes from ONE place that the dag-processor and the workers
agree on, read on the worker when a task runs: the provider option ``[pacifica] download_root``
(env ``AIRFLOW__PACIFICA__DOWNLOAD_ROOT``: an absolute path, or a URL such as ``s3://bucket/prefix``
opened with the connection ``[pacifica] download_conn_id``), else ``$PACIFICA_DOWNLOAD_ROOT``,
else ``$AIRFLOW_HOME/pacifica-downloads`` (:func:`download_destination`).

A destination is an absolute local path (``str`` or ``os.PathLike``) or an
``airflow.sdk.ObjectStoragePath`` (``ObjectStoragePath("s3://bucket/prefix", conn_id="aws_s3")``,
any fsspec backend Airflow has registered; a ``file://`` one is a local path). A relative path
would land wherever the worker happens to run, and a URL given as a string would be written to
a local directory named ``s3:``: both are refused with :class:`InvalidInputError`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_pacifica.destinations import download_root, safe_name
from airflow_provider_pacifica.exceptions import InvalidInputError
from airflow_provider_pacifica.extraction import verify_published
from airflow_provider_pacifica.objectstore import object_url, store_root, verify_published_objects

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import ObjectStoragePath
    from fsspec import AbstractFileSystem

    from airflow_provider_pacifica.cloudevents import CartFile
    from airflow_provider_pacifica.extraction import ExtractedFile

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
LOCAL_PROTOCOLS = frozenset({"file", "local"})


@dataclass(frozen=True)
class StoreDestination:
    """A destination in object storage.

    :param fs: the fsspec filesystem, with the connection's credentials and endpoint.
    :param root: the destination as ``fs`` names it (``bucket/prefix``).
    :param conn_id: the Airflow connection of the store (``None``: the backend's defaults).
    """

    fs: AbstractFileSystem
    root: str
    conn_id: str | None

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``: what ``ObjectStoragePath(url, conn_id=...)`` opens."""
        return object_url(self.fs, self.root)

    def __str__(self) -> str:
        return self.url


Destination = Path | StoreDestination


def resolve_destination(destination: Any) -> Destination:
    """The local directory or object store that ``destination`` names.

    :raises InvalidInputError: a relative path, a URL given as a string, or another type.
    """
    if isinstance(destination, StoreDestination):
        return destination
    if _is_object_storage_path(destination):
        protocol = destination.protocol if isinstance(destination.protocol, str) else destination.protocol[0]
        if protocol in LOCAL_PROTOCOLS:
            return _local(destination.path)
        return StoreDestination(destination.fs, store_root(destination.fs, destination.path), destination.conn_id)
    if isinstance(destination, (str, os.PathLike)):
        text = os.fspath(destination)
        if not isinstance(text, str):
            raise InvalidInputError(f"destination {text!r} must be a text path, not bytes")
        if _URL.match(text):
            raise InvalidInputError(
                f"destination {text!r} is a URL given as a string; pass "
                f"ObjectStoragePath({text!r}, conn_id=...) for object storage (a string is a local path)"
            )
        return _local(text)
    raise InvalidInputError(
        f"destination {destination!r} ({type(destination).__name__}) is neither a local path nor an ObjectStoragePath"
    )


def published_files(destination: Destination, files: Sequence[CartFile], cart_key: str) -> list[ExtractedFile] | None:
    """The files if an earlier attempt already published them all at ``destination``, else None.

    Local: every file is there with the right size and hash. Object storage: the download's
    manifest (its commit marker) lists them and every object is there with the right size.
    """
    if isinstance(destination, StoreDestination):
        return verify_published_objects(destination.fs, destination.root, files, cart_key)
    return verify_published(files, destination)


def _local(text: str) -> Path:
    if not text or not os.path.isabs(text):
        raise InvalidInputError(
            f"destination {text!r} is a relative path; give an absolute path (on storage every worker sees) "
            "or an ObjectStoragePath"
        )
    return Path(text)


def _is_object_storage_path(value: Any) -> bool:
    """An ``ObjectStoragePath`` (imported only when Airflow is there to be asked)."""
    try:
        from airflow.sdk import ObjectStoragePath
    except ImportError:  # pragma: no cover - the provider always runs with Airflow
        return False
    return isinstance(value, ObjectStoragePath)


def configured_download_root() -> str | ObjectStoragePath:
    """The download root of the example DAGs (see the module's doc), read now, on the worker.

    :raises InvalidInputError: ``[pacifica] download_root`` is a relative path.
    """
    from airflow.sdk import ObjectStoragePath, conf

    root = (conf.get("pacifica", "download_root", fallback="") or "").strip()
    if not root:
        return download_root()
    if _URL.match(root):
        conn_id = (conf.get("pacifica", "download_conn_id", fallback="") or "").strip() or None
        destination = ObjectStoragePath(root, conn_id=conn_id)
        if destination.protocol not in LOCAL_PROTOCOLS:
            return destination
        root = destination.path
    expanded = os.path.expanduser(root)
    if not os.path.isabs(expanded):
        raise InvalidInputError(f"[pacifica] download_root {root!r} is a relative path; give an absolute path or a URL")
    return os.path.abspath(expanded)


def download_destination(*parts: object) -> str | ObjectStoragePath:
    """``<download root>/<safe part>/<safe part>...``: a local path, or an ``ObjectStoragePath``
    (with the root's connection) when the root is a URL."""
    root = configured_download_root()
    names = [safe_name(part) for part in parts]
    if isinstance(root, str):
        return os.path.join(root, *names)
    return root.joinpath(*names)
