from __future__ import annotations

from airflow.sdk import Asset

from airflow_provider_pacifica import openlineage


def test_the_pacifica_scheme_has_an_openlineage_converter_registered():
    from airflow.providers_manager import ProvidersManager

    converter = ProvidersManager().asset_to_openlineage_converters["pacifica"]
    dataset = converter(Asset(uri="pacifica://metadata/ingest"), None)
    assert (dataset.namespace, dataset.name) == ("pacifica://metadata", "ingest")


def test_a_huge_download_lists_at_most_max_checksums_and_says_how_many_it_left_out(monkeypatch):
    monkeypatch.setattr(openlineage, "MAX_CHECKSUMS", 2)
    files = [{"path": f"f{i}", "size": 1, "hashtype": "sha1", "hashsum": "0" * 40, "id": i} for i in range(5)]
    manifest = {"destination": "/data/x", "cart_uid": "c1", "file_count": 5, "total_bytes": 5, "event": None}
    lineage = openlineage.download_lineage(manifest, "http://user:secret@cartd.example.org:8081", files)
    (source,) = lineage.inputs
    assert (source.namespace, source.name) == ("pacifica://cartd.example.org:8081", "carts/c1")  # no credentials
    facet = lineage.outputs[0].facets["pacifica_checksums"]
    assert [f["path"] for f in facet.files] == ["f0", "f1"]
    assert facet.omitted == 3
    assert "id" not in facet.files[0]


def test_an_s3_download_is_named_by_bucket_and_prefix_and_a_local_one_by_host_and_path():
    import socket

    def output_of(destination: str):
        manifest = {"destination": destination, "cart_uid": "c1", "file_count": 0, "total_bytes": 0, "event": None}
        (output,) = openlineage.download_lineage(manifest, "http://cartd:8081", []).outputs
        return output.namespace, output.name

    assert output_of("s3://pacifica/downloads/run-1/evt") == ("s3://pacifica", "downloads/run-1/evt")
    assert output_of("s3://pacifica") == ("s3://pacifica", "/")
    assert output_of("/data/x") == (f"file://{socket.getfqdn()}", "/data/x")
