from __future__ import annotations

import copy
import json

import pytest

from airflow_provider_pacifica.cloudevents import (
    CartFile,
    CloudEventError,
    files_from_cloudevent,
    files_from_list,
    files_from_transaction_info,
    parse_cloudevent,
)
from tests.conftest import load_fixture

SHA1 = "4b5e3e59af149a058366bed86b05500c0acd34e0"


def files_record(**overrides):
    record = {
        "destinationTable": "Files",
        "_id": 7,
        "name": "a.txt",
        "subdir": "x/y",
        "hashtype": "sha1",
        "hashsum": SHA1,
        "size": 3,
    }
    record.update(overrides)
    return record


def test_dispatcher_example_event_gives_its_one_file():
    event = parse_cloudevent(load_fixture("dispatcher-example-event.json"))
    assert event.files == (CartFile(id=1, path="lipsum.txt", hashtype="sha1", hashsum=SHA1, size=614),)
    assert event.id == "C234-1234-1234"
    assert event.type == "org.pacifica.metadata.ingest"
    assert event.source == "/pacifica/metadata/ingest"
    assert event.transaction_id == -1
    assert event.summary()["file_count"] == 1


def test_notifications_fixture_is_refused_for_the_record_without_id():
    with pytest.raises(CloudEventError, match=r"Files record #9 .*lacks _id"):
        files_from_cloudevent(load_fixture("notifications-events.json"))


def test_notifications_fixture_with_the_id_restored_keeps_non_ascii_names_and_normalises_subdirs():
    event = load_fixture("notifications-events.json")
    event["data"][9]["_id"] = 36
    files = files_from_cloudevent(event)
    assert [f.path for f in files] == [
        "a/b/foo.txt",
        "a/b/bar.txt",
        "data/a/c/パソコン資産管理台帳（S&T HK）_現地調達PC.xls",
    ]
    assert [f.id for f in files] == [34, 35, 36]
    assert parse_cloudevent(event).transaction_id == 1234


def test_cloudevents_1_0_keys_are_read():
    event = {
        "specversion": "1.0",
        "type": "org.pacifica.metadata.ingest",
        "id": "abc",
        "source": "/pacifica/metadata/ingest",
        "time": "2026-01-01T00:00:00Z",
        "data": [files_record()],
    }
    parsed = parse_cloudevent(event)
    assert (parsed.id, parsed.type, parsed.time) == ("abc", "org.pacifica.metadata.ingest", "2026-01-01T00:00:00Z")
    assert [f.path for f in parsed.files] == ["x/y/a.txt"]


def test_a_bare_data_object_and_json_text_are_accepted():
    bare = {"data": [files_record()]}
    assert files_from_cloudevent(bare) == files_from_cloudevent(json.dumps(bare))
    assert files_from_cloudevent(json.dumps(bare).encode()) == files_from_cloudevent(bare)
    assert parse_cloudevent(bare).id is None


def test_data_given_as_json_text_is_accepted():
    assert files_from_cloudevent({"data": json.dumps([files_record()])})[0].path == "x/y/a.txt"


def test_only_files_records_are_kept():
    event = {"data": [{"destinationTable": "FileKeyValue", "key": "k", "value": "v"}, files_record()]}
    assert len(files_from_cloudevent(event)) == 1


@pytest.mark.parametrize(
    ("subdir", "path"),
    [("", "a.txt"), ("/", "a.txt"), ("a/b/", "a/b/a.txt"), ("/a//b/", "a/b/a.txt"), ("./a/./b", "a/b/a.txt")],
)
def test_slashes_in_subdir_are_normalised(subdir, path):
    assert files_from_cloudevent({"data": [files_record(subdir=subdir)]})[0].path == path


@pytest.mark.parametrize("missing", ["_id", "name", "hashtype", "hashsum"])
def test_a_files_record_without_a_required_key_is_refused_by_name(missing):
    record = files_record(name="kept.txt")
    del record[missing]
    with pytest.raises(CloudEventError, match=rf"Files record #0 .*lacks {missing}"):
        files_from_cloudevent({"data": [record]})


def test_an_unknown_hashtype_is_refused():
    with pytest.raises(CloudEventError, match="hashtype 'nosuchhash' is not known to hashlib"):
        files_from_cloudevent({"data": [files_record(hashtype="nosuchhash")]})


def test_a_hashsum_of_the_wrong_length_is_refused():
    with pytest.raises(CloudEventError, match="has 40 hex digits, got 4"):
        files_from_cloudevent({"data": [files_record(hashsum="abcd")]})


def test_hashsums_and_types_are_lower_cased():
    file = files_from_cloudevent({"data": [files_record(hashtype="SHA1", hashsum=SHA1.upper())]})[0]
    assert (file.hashtype, file.hashsum) == ("sha1", SHA1)


@pytest.mark.parametrize("subdir", ["../etc", "a/../../b", ".."])
def test_a_path_with_dot_dot_is_refused(subdir):
    with pytest.raises(CloudEventError, match=r"contains '\.\.'"):
        files_from_cloudevent({"data": [files_record(subdir=subdir)]})


@pytest.mark.parametrize("name", ["/etc/passwd", "a/b.txt", "..", "."])
def test_a_name_that_is_not_a_plain_file_name_is_refused(name):
    with pytest.raises(CloudEventError, match="plain file name"):
        files_from_cloudevent({"data": [files_record(name=name)]})


def test_an_absolute_path_in_a_file_list_is_refused():
    with pytest.raises(CloudEventError, match="is absolute"):
        files_from_list([{"id": 1, "path": "/etc/passwd", "hashtype": "sha1", "hashsum": SHA1}])


def test_two_records_with_the_same_path_are_refused():
    event = {"data": [files_record(_id=1), files_record(_id=2, subdir="x//y/")]}
    with pytest.raises(CloudEventError, match=r"files 1 and 2 both have path 'x/y/a.txt'"):
        files_from_cloudevent(event)


def test_a_path_that_is_also_a_directory_is_refused():
    event = {"data": [files_record(_id=1, subdir="x", name="y"), files_record(_id=2)]}
    with pytest.raises(CloudEventError, match="is also a directory"):
        files_from_cloudevent(event)


@pytest.mark.parametrize(
    "event",
    [
        {"data": []},
        {"data": [{"destinationTable": "Transactions._id", "value": 1}]},
    ],
)
def test_an_event_without_files_is_refused(event):
    with pytest.raises(CloudEventError, match="has no Files"):
        files_from_cloudevent(event)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ([], "must be a JSON object"),
        ({"cloudEventsVersion": "0.1"}, "no 'data' member"),
        ({"data": {"a": 1}}, "must be a list"),
        ({"data": ["x"]}, "record #0 is not an object"),
    ],
)
def test_malformed_events_are_refused_with_a_clear_message(event, message):
    with pytest.raises(CloudEventError, match=message):
        files_from_cloudevent(event)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("_id", True, "id must be an integer or a string"),
        ("_id", "a/b", "not a valid archive id"),
        ("size", -1, "is not a byte count"),
        ("size", "12", "is not a byte count"),
        ("hashsum", "zz" * 20, "not hexadecimal"),
    ],
)
def test_bad_field_values_are_refused(field, value, message):
    with pytest.raises(CloudEventError, match=message):
        files_from_cloudevent({"data": [files_record(**{field: value})]})


def test_transaction_info_files_are_keyed_by_id():
    info = {
        "files": {
            "103": {"name": "foo.txt", "subdir": "a/b", "hashtype": "sha1", "hashsum": SHA1, "size": 5},
            "104": {"name": "baré.txt", "subdir": "a/b/é", "hashtype": "sha1", "hashsum": SHA1},
        },
        "transactions": {"_id": 67},
    }
    files = files_from_transaction_info(info)
    assert [(f.id, f.path, f.size) for f in files] == [("103", "a/b/foo.txt", 5), ("104", "a/b/é/baré.txt", None)]
    assert files_from_transaction_info(json.dumps(info)) == files


def test_transaction_info_without_files_is_refused():
    with pytest.raises(CloudEventError, match="'files' object"):
        files_from_transaction_info({"transactions": {}})


def test_a_file_list_round_trips_through_to_dict():
    files = files_from_cloudevent(load_fixture("dispatcher-example-event.json"))
    assert files_from_list([f.to_dict() for f in files]) == files
    assert files_from_list(json.dumps([f.to_dict() for f in files])) == files


def test_parsing_does_not_change_the_event():
    event = load_fixture("dispatcher-example-event.json")
    before = copy.deepcopy(event)
    parse_cloudevent(event)
    assert event == before


def test_a_shake_hashtype_without_a_fixed_length_is_refused():
    with pytest.raises(CloudEventError, match="no fixed digest size"):
        files_from_cloudevent({"data": [files_record(hashtype="shake_128", hashsum="ab" * 16)]})
