"""The forward-only tar reader: it must read what ``tarfile`` writes, in every format and chunking."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_pacifica.exceptions import StreamError, UnsafeMemberError
from airflow_provider_pacifica.tarstream import MAX_EXTENDED_HEADER, TarStreamReader, _plain_header

FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}


class Trickle:
    """A stream that returns at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, self._step) if size >= 0 else self._step)


def make_tar(members: list[tuple[str, bytes | None]], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of files (bytes) and directories (None), written by ``tarfile`` itself."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def read_all(stream, chunk_size: int = 1 << 20) -> list[tuple[str, bytes, int, bytes]]:
    reader = TarStreamReader(stream, chunk_size)
    return [(m.name, m.type, m.size, b"".join(bytes(v) for v in reader.data())) for m in reader]


def read_with_tarfile(data: bytes) -> list[tuple[str, bytes, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [
            (m.name, m.type, m.size, tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in tar
        ]


@pytest.mark.parametrize("tar_format", FORMATS.values(), ids=FORMATS.keys())
def test_long_names_and_non_ascii_names_read_as_tarfile_reads_them(tar_format):
    long_dir = "/".join(["a-rather-long-directory-name"] * 5)
    names = [f"data/{long_dir}/file.txt", "data/short.bin", "data/d/é ✓.txt"]
    if tar_format == tarfile.USTAR_FORMAT:  # ustar has no way to store these; only the prefix split
        names = [f"data/{'p' * 90}/{'n' * 90}.txt", "data/short.bin"]
    data = make_tar([("data", None)] + [(name, name.encode() * 3) for name in names], tar_format)
    assert read_all(io.BytesIO(data)) == read_with_tarfile(data)


@given(
    files=st.lists(
        st.tuples(
            st.text(alphabet="abé/ _-.", min_size=1, max_size=120).filter(lambda n: n.strip("/") and "\x00" not in n),
            st.binary(max_size=3000),
        ),
        max_size=6,
    ),
    tar_format=st.sampled_from(list(FORMATS.values())),
    step=st.integers(min_value=1, max_value=2000),
)
@settings(max_examples=120, deadline=None)
def test_any_tar_that_tarfile_writes_reads_the_same_whatever_the_chunking(files, tar_format, step):
    try:
        data = make_tar([(f"top/{name}", body) for name, body in files], tar_format)
    except ValueError:  # a name the format cannot hold
        return
    assert read_all(Trickle(data, step), chunk_size=step) == read_with_tarfile(data)


@pytest.mark.parametrize("tar_format", FORMATS.values(), ids=FORMATS.keys())
def test_the_fast_header_path_agrees_with_tarfile_or_steps_aside(tar_format):
    long_path = f"data/{'p' * 90}/{'n' * 90}.txt"
    data = make_tar([("data/", None), ("data/a.txt", b"x" * 700), (long_path, b"y"), ("data/é.bin", b"z")], tar_format)
    blocks = [data[i : i + 512] for i in range(0, len(data), 512)]
    decoded = 0
    for block in blocks:
        fast = _plain_header(block, "utf-8")
        if fast is None:
            continue
        decoded += 1
        slow = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        assert (fast.name, fast.type, fast.size) == (slow.name, slow.type, slow.size)
    # tarfile's PAX and ustar headers take the fast path; GNU headers go to frombuf
    assert (decoded > 0) == (tar_format != tarfile.GNU_FORMAT)


def test_data_left_unread_is_skipped():
    data = make_tar([("top/a", b"x" * 5000), ("top/b", b"second")])
    reader = TarStreamReader(Trickle(data, 700), 700)
    members = iter(reader)
    assert next(members).name == "top/a"  # its data is never asked for
    second = next(members)
    assert (second.name, b"".join(reader.data())) == ("top/b", b"second")


def test_a_global_pax_header_applies_to_the_members_after_it():
    data = make_tar([("top/a", b"1")])
    header = tarfile.TarInfo("global")
    header.type = tarfile.XGLTYPE
    comment = record("comment", "anything")
    header.size = len(comment)
    prefix = header.tobuf(tarfile.USTAR_FORMAT) + comment + bytes(-len(comment) % 512)
    assert [m[0] for m in read_all(io.BytesIO(prefix + data))] == ["top/a"]


def record(key: str, value: str) -> bytes:
    """One PAX record, its length counting itself."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_member(records: bytes, name: str = "top/a", body: bytes = b"data") -> bytes:
    """A member preceded by a hand-written PAX header holding ``records``."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = len(records)
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + records
        + bytes(-len(records) % 512)
        + info.tobuf(tarfile.USTAR_FORMAT)
        + body
        + bytes(-len(body) % 512)
        + bytes(1024)
    )


def test_a_pax_path_overrides_the_plain_name():
    assert read_all(io.BytesIO(pax_member(record("path", "top/../x"))))[0][0] == "top/../x"


def test_a_pax_sparse_member_is_marked_sparse():
    member = next(iter(TarStreamReader(io.BytesIO(pax_member(record("GNU.sparse.major", "1"))))))
    assert member.type == tarfile.GNUTYPE_SPARSE


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (b"garbage\n", "malformed PAX header record"),
        (b"99 path=x\n", "malformed PAX header record"),
        (b"5 path=x\n", "malformed PAX header record"),
        (record("size", "-1"), "negative size"),
        (record("size", "ten"), "PAX size 'ten'"),
    ],
)
def test_a_malformed_pax_header_is_refused_by_name(records, message):
    with pytest.raises(UnsafeMemberError, match=message):
        read_all(io.BytesIO(pax_member(records)))


def test_a_negative_base256_size_is_refused():
    block = bytearray(make_tar([("top/a", b"")], tarfile.GNU_FORMAT)[:512])
    block[124:136] = b"\xff" * 12  # base-256 minus one
    block[148:156] = b" " * 8  # the checksum counts its own field as spaces
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(UnsafeMemberError, match="negative size"):
        read_all(io.BytesIO(bytes(block) + bytes(1024)))


def test_an_oversized_extended_header_is_refused_before_it_is_read():
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = MAX_EXTENDED_HEADER + 1
    with pytest.raises(UnsafeMemberError, match="extended header of"):
        read_all(io.BytesIO(header.tobuf(tarfile.GNU_FORMAT)))


def test_a_corrupt_header_after_the_first_is_reported_with_its_offset():
    data = bytearray(make_tar([("top/a", b"1"), ("top/b", b"2")]))
    data[1024 + 148] ^= 0xFF  # the second header's checksum
    with pytest.raises(StreamError, match=r"corrupt: .* at byte 1024"):
        read_all(io.BytesIO(bytes(data)))


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, "empty file"),
        (100, "inside a header"),
        (512 + 2, "inside a file"),
        (1024 + 10, "inside a header"),
        (1024, None),
    ],
)
def test_where_the_stream_ends_decides_the_error(cut, message):
    data = make_tar([("top/a", b"x" * 512)], tarfile.USTAR_FORMAT)[:cut]
    if message is None:  # ended between members, no end marker: like tarfile, the members read are all
        assert [m[0] for m in read_all(io.BytesIO(data))] == ["top/a"]
        return
    with pytest.raises(StreamError, match=message):
        read_all(io.BytesIO(data))


def test_a_stream_ending_after_an_extended_header_is_truncated():
    data = pax_member(record("path", "top/xyz"))
    with pytest.raises(StreamError, match="ended after an extended header"):
        read_all(io.BytesIO(data[:1024]))
