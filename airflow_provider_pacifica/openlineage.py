"""OpenLineage for Pacifica downloads: what was read (a Pacifica transaction or cart) and what was
written (the destination, as one dataset with its file count, bytes and checksums).

Imported only when ``apache-airflow-providers-openlineage`` is installed and asks for lineage.
Naming: inputs are in the namespace ``pacifica://<cartd host:port>``, named
``transactions/<id>`` when the event names the transaction (else ``carts/<cart uid>``); the
output is ``file://<host>`` + the destination path, or for object storage the bucket as namespace
(``s3://<bucket>``) and the prefix as name, at the destination's level, never one dataset per file.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.openlineage.facet import (
    Dataset,
    DatasetFacet,
    InputDataset,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
)
from attrs import define, field

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk.definitions.asset import Asset

MAX_CHECKSUMS = 1000  # files whose checksums go into the facet; a bigger cart says how many were left out


@define
class PacificaChecksumsDatasetFacet(DatasetFacet):
    """The verified files of a download: relative path, size and Pacifica's hash of each.

    :param files: ``{"path", "size", "hashtype", "hashsum"}`` per file, at most ``MAX_CHECKSUMS``.
    :param omitted: how many files were left out of ``files``.
    """

    files: list[dict[str, Any]] = field(factory=list)
    omitted: int = 0

    @staticmethod
    def _get_schema() -> str:
        return "https://github.com/pacifica/airflow-provider-pacifica/blob/main/docs/openlineage/checksums.json"


def download_lineage(manifest: Mapping[str, Any], cartd_url: str, files: list[dict[str, Any]]) -> OperatorLineage:
    """The lineage of one download from its manifest and the verified ``files``."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    authority = urlsplit(cartd_url).netloc.rsplit("@", 1)[-1]  # never the credentials
    event = manifest.get("event") or {}
    transaction = event.get("transaction_id")
    source = InputDataset(
        namespace=f"pacifica://{authority}",
        name=f"transactions/{transaction}" if transaction is not None else f"carts/{manifest['cart_uid']}",
    )
    checksums = PacificaChecksumsDatasetFacet(
        files=[{key: entry[key] for key in ("path", "size", "hashtype", "hashsum")} for entry in files[:MAX_CHECKSUMS]],
        omitted=max(0, len(files) - MAX_CHECKSUMS),
    )
    namespace, name = _destination_dataset(str(manifest["destination"]))
    destination = OutputDataset(
        namespace=namespace,
        name=name,
        facets={"pacifica_checksums": checksums},
        outputFacets={
            "outputStatistics": OutputStatisticsOutputDatasetFacet(
                size=int(manifest["total_bytes"]), fileCount=int(manifest["file_count"])
            )
        },
    )
    return OperatorLineage(inputs=[source], outputs=[destination])


def _destination_dataset(destination: str) -> tuple[str, str]:
    """OpenLineage's naming: ``s3://<bucket>`` + the prefix for object storage (``gs://``,
    ``abfss://``... alike), ``file://<host>`` + the path for a local directory."""
    parts = urlsplit(destination)
    if parts.scheme and parts.netloc and parts.scheme != "file":
        return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/") or "/"
    return f"file://{socket.getfqdn()}", destination


def convert_asset_to_openlineage(asset: Asset, lineage_context: Any) -> Dataset:
    """The ``pacifica://<service>/<path>`` asset as an OpenLineage dataset (provider info's
    ``to_openlineage_converter`` for the ``pacifica`` scheme)."""
    parts = urlsplit(asset.uri)
    return Dataset(namespace=f"pacifica://{parts.netloc}", name=parts.path.lstrip("/") or "/")
