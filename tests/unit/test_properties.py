"""Property-based tests: random and hostile input never escapes the parser's or extractor's contract."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from airflow_provider_pacifica.cloudevents import CartFile, CloudEventError, files_from_cloudevent
from airflow_provider_pacifica.exceptions import ExtractionError, InvalidInputError
from airflow_provider_pacifica.extraction import extract_cart

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
path_parts = st.sampled_from(["a", "b", "..", ".", "", "é", "x y", "/", "//", "\x00", "c.txt", "~", "-"])
hostile_text = st.lists(path_parts, max_size=5).map("/".join) | st.text(max_size=12)
files_records = st.fixed_dictionaries(
    {"destinationTable": st.just("Files")},
    optional={
        "_id": st.integers() | st.text(max_size=8) | st.booleans() | st.none(),
        "name": hostile_text | st.none() | st.integers(),
        "subdir": hostile_text | st.none() | st.integers(),
        "hashtype": st.sampled_from(["sha1", "md5", "sha256", "SHA1", "nosuch", "", "shake_128"]) | json_scalars,
        "hashsum": st.text(alphabet="0123456789abcdefABCDEFxz", max_size=70) | json_scalars,
        "size": st.integers(min_value=-5, max_value=10**12) | json_scalars,
    },
)
events = st.fixed_dictionaries(
    {},
    optional={
        "cloudEventsVersion": json_values,
        "specversion": json_values,
        "eventID": json_values,
        "data": st.lists(files_records | json_values, max_size=6) | json_values,
    },
)


@PROFILE
@given(event=events | json_values)
def test_the_parser_raises_only_its_own_error(event):
    for form in (event, json.dumps(event)):
        try:
            files = files_from_cloudevent(form)
        except CloudEventError:
            continue
        # Whatever is accepted is safe to send to Cartd and to write to disk.
        assert files
        assert len({f.path for f in files}) == len(files)
        for file in files:
            parts = file.path.split("/")
            assert not file.path.startswith("/")
            assert ".." not in parts
            assert "" not in parts
            assert "\x00" not in file.path
            assert len(file.hashsum) == 2 * hashlib.new(file.hashtype).digest_size > 0


@PROFILE
@given(raw=st.binary(max_size=3000))
def test_random_bytes_are_refused_as_json(raw):
    with contextlib.suppress(CloudEventError):
        files_from_cloudevent(raw)


# -- tar streams ------------------------------------------------------------------------------

names = st.lists(st.sampled_from(["data", "a", "b", "..", ".", "", "c.txt", "other", "é"]), min_size=1, max_size=4).map(
    "/".join
) | st.sampled_from(["/abs/x", "data/a/../../x", "data//a/./c.txt"])
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)
contents = st.binary(max_size=200)
members = st.lists(st.tuples(names, kinds, contents), max_size=8)
requested = st.dictionaries(
    st.sampled_from(["a/c.txt", "b/c.txt", "c.txt", "é/c.txt", "a/b/c.txt"]),
    st.binary(max_size=200),
    min_size=1,
    max_size=3,
).filter(lambda d: not ({"a/c.txt", "a/b/c.txt"} <= set(d)))


def build(members_list) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members_list:
            info = tarfile.TarInfo(name or ".")
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "data/a/c.txt"
                tar.addfile(info)
    return buffer.getvalue()


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@PROFILE
@given(
    wanted=requested,
    noise=members,
    honest_first=st.booleans(),
    cut=st.none() | st.integers(min_value=0, max_value=6000),
    corrupt=st.none() | st.integers(min_value=0, max_value=6000),
)
def test_random_tar_streams_succeed_only_with_every_file_verified(
    tmp_path_factory, wanted, noise, honest_first, cut, corrupt
):
    root = tmp_path_factory.mktemp("prop")
    destination = root / "dest"
    destination.mkdir()
    (destination / "keep").write_bytes(b"keep")
    before = tree(root)
    honest = [(f"data/{path}", tarfile.REGTYPE, data) for path, data in wanted.items()]
    stream = build(honest + noise if honest_first else noise + honest)
    if corrupt is not None and corrupt < len(stream):
        stream = stream[:corrupt] + bytes([stream[corrupt] ^ 0xFF]) + stream[corrupt + 1 :]
    if cut is not None:
        stream = stream[:cut]
    files = [
        CartFile(i, path, "sha256", hashlib.sha256(data).hexdigest(), len(data))
        for i, (path, data) in enumerate(wanted.items())
    ]
    try:
        extract_cart(io.BytesIO(stream), files, destination, "data", durable=False)
    except (ExtractionError, InvalidInputError) as err:
        event(f"refused: {type(err).__name__}")
        assert tree(root) == before  # nothing written, nothing left, nothing outside
        return
    event("extracted")
    after = tree(root)
    for path, data in wanted.items():
        assert (destination / path).read_bytes() == data
    written = {k for k, v in after.items() if v is not None} - {k for k, v in before.items() if v is not None}
    assert written == {f"dest/{path}" for path in wanted}
    assert all(name.startswith("dest") for name in after)
