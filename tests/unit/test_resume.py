"""Dropped downloads: resumed with Range in bundle mode, restarted from zero otherwise."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException

from airflow_provider_pacifica.hooks.cartd import PacificaCartdHook
from airflow_provider_pacifica.operators.download import PacificaDownloadOperator
from tests.httpserver import Reply, cartd_head
from tests.tars import CONTENTS, build_tar, cart_files
from tests.unit.test_extraction import snapshot
from tests.unit.test_sensor_and_operator import make_context

LAST_MODIFIED = "Mon, 23 Nov 2026 23:22:51 GMT"


class BundleServer:
    """Serves one bundle-mode cart like CherryPy's serve_file: sized, Range-aware; cuts on demand."""

    def __init__(self, tar: bytes, cuts: list[int], honour_range: bool = True, change_after_cut: bool = False):
        self.tar = tar
        self.cuts = list(cuts)  # absolute byte offsets at which successive responses break
        self.honour_range = honour_range
        self.change_after_cut = change_after_cut
        self.ranges: list[str | None] = []

    def __call__(self, request):
        if request.method == "HEAD":
            return cartd_head("ready")
        if request.method == "DELETE":
            return Reply(200)
        range_header = request.headers.get("Range")
        self.ranges.append(range_header)
        modified = (
            LAST_MODIFIED if not (self.change_after_cut and len(self.ranges) > 1) else "Tue, 24 Nov 2026 00:00:00 GMT"
        )
        headers = {"Accept-Ranges": "bytes", "Last-Modified": modified, "Content-Type": "application/octet-stream"}
        start = 0
        status = 200
        if range_header and self.honour_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(self.tar) - 1}/{len(self.tar)}"
        body = self.tar[start:]
        headers["Content-Length"] = str(len(body))
        cut = None
        if self.cuts:
            cut = self.cuts.pop(0) - start
        return Reply(status, headers, [body[i : i + 8192] for i in range(0, len(body), 8192)], cut_after=cut)


def operator(tmp_path, **kwargs):
    return PacificaDownloadOperator(
        task_id="d",
        destination=str(tmp_path / "dest"),
        files=[f.to_dict() for f in cart_files()],
        bundle=True,
        **kwargs,
    )


def test_a_dropped_bundle_download_resumes_from_the_last_byte_and_verifies(http_server, cartd_conn, tmp_path):
    cartd_conn()
    op = operator(tmp_path)
    uid = op.cart_uid_for(make_context(), cart_files())
    tar = build_tar(top=uid)
    server = BundleServer(tar, cuts=[20_000, 90_000])
    http_server.handler = server
    manifest = op.execute(make_context())
    assert server.ranges == [None, "bytes=20000-", "bytes=90000-"]
    for path, data in CONTENTS.items():
        assert (tmp_path / "dest" / path).read_bytes() == data
    assert manifest["file_count"] == len(CONTENTS)


def test_resumes_are_bounded_then_the_download_restarts(http_server, cartd_conn, tmp_path):
    cartd_conn()
    op = operator(tmp_path, max_resumes=1, download_attempts=2)
    tar = build_tar(top=op.cart_uid_for(make_context(), cart_files()))
    server = BundleServer(tar, cuts=[10_000, 30_000])  # second break exceeds the resume budget
    http_server.handler = server
    op.execute(make_context())
    assert server.ranges == [None, "bytes=10000-", None]  # restarted from zero, then clean
    assert (tmp_path / "dest" / "bin" / "blob.bin").read_bytes() == CONTENTS["bin/blob.bin"]


def test_a_server_that_ignores_range_means_a_restart_not_a_corrupt_file(http_server, cartd_conn, tmp_path):
    cartd_conn()
    op = operator(tmp_path)
    tar = build_tar(top=op.cart_uid_for(make_context(), cart_files()))
    server = BundleServer(tar, cuts=[10_000], honour_range=False)
    http_server.handler = server
    op.execute(make_context())
    assert server.ranges[:2] == [None, "bytes=10000-"]
    assert server.ranges[2] is None
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == CONTENTS["a/b.txt"]


def test_a_tar_that_changed_between_requests_is_not_spliced(http_server, cartd_conn, tmp_path):
    cartd_conn()
    op = operator(tmp_path, download_attempts=1)
    tar = build_tar(top=op.cart_uid_for(make_context(), cart_files()))
    http_server.handler = BundleServer(tar, cuts=[10_000], change_after_cut=True)
    before = snapshot(tmp_path)
    with pytest.raises(AirflowException, match="cannot resume at byte 10000"):
        op.execute(make_context())
    assert snapshot(tmp_path) == before


def test_a_streaming_mode_download_that_keeps_breaking_fails_after_its_attempts(http_server, cartd_conn, tmp_path):
    cartd_conn()
    tar = build_tar()
    gets = []

    def handler(request):
        if request.method == "HEAD":
            return cartd_head("ready")
        gets.append(request.headers.get("Range"))
        return Reply(200, {}, [tar], chunked=True, cut_after=5000)

    http_server.handler = handler
    op = PacificaDownloadOperator(
        task_id="d", destination=str(tmp_path / "dest"), files=[f.to_dict() for f in cart_files()], download_attempts=3
    )
    with pytest.raises(AirflowException, match="download failed 3 times"):
        op.execute(make_context())
    assert gets == [None, None, None]  # no Range on a chunked stream: each attempt starts at zero
    assert not (tmp_path / "dest").exists()


def test_the_reader_reports_progress_in_bytes(http_server, cartd_conn):
    cartd_conn()
    tar = build_tar(top="x")
    http_server.handler = BundleServer(tar, cuts=[4096])
    with PacificaCartdHook().read_cart("x") as reader:
        data = b"".join(iter(lambda: reader.read(1000), b""))
    assert data == tar
    assert (reader.offset, reader.resumes, reader.size) == (len(tar), 1, len(tar))
