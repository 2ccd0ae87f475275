from __future__ import annotations

import pytest

from airflow_provider_pacifica.batching import merge_manifests, split_files
from airflow_provider_pacifica.cloudevents import CartFile, files_from_list
from airflow_provider_pacifica.exceptions import InvalidInputError

SHA1 = "4b5e3e59af149a058366bed86b05500c0acd34e0"
FILES = [CartFile(i, f"d/f{i}.bin", "sha1", SHA1, size) for i, size in enumerate([50, 10, 40, 30, 20, 60])]


def test_parts_balance_bytes_and_cover_every_file_once():
    batches = split_files(FILES, parts=3)
    assert len(batches) == 3
    assert sorted(f["id"] for batch in batches for f in batch) == list(range(6))
    assert sorted(sum(f["size"] for f in batch) for batch in batches) == [70, 70, 70]
    for batch in batches:  # event order kept inside a batch, and each batch is a valid file list
        assert [f["id"] for f in batch] == sorted(f["id"] for f in batch)
        files_from_list(batch)


def test_max_files_and_max_bytes_cut_in_event_order():
    assert [[f["id"] for f in b] for b in split_files(FILES, max_files=4)] == [[0, 1, 2, 3], [4, 5]]
    assert [[f["id"] for f in b] for b in split_files(FILES, max_bytes=100)] == [[0, 1, 2], [3, 4], [5]]


def test_more_parts_than_files_gives_one_file_per_batch():
    assert len(split_files(FILES[:2], parts=5)) == 2


@pytest.mark.parametrize("options", [{}, {"parts": 2, "max_files": 2}, {"parts": 0}, {"max_bytes": -1}])
def test_split_needs_exactly_one_positive_option(options):
    with pytest.raises(InvalidInputError):
        split_files(FILES, **options)


def test_merged_manifest_lists_every_file_and_cart():
    manifests = [
        {"destination": "/d", "cart_uid": "a", "files": [{"path": "x", "size": 1}], "event": {"id": "e"}},
        {"destination": "/d", "cart_uid": "b", "files": [{"path": "y", "size": 2}], "event": {"id": "e"}},
    ]
    merged = merge_manifests(manifests)
    assert merged["cart_uids"] == ["a", "b"]
    assert (merged["file_count"], merged["total_bytes"]) == (2, 3)
    assert merged["event"] == {"id": "e"}


def test_manifests_of_different_destinations_are_not_merged():
    with pytest.raises(InvalidInputError, match="different destinations"):
        merge_manifests(
            [{"destination": "/a", "cart_uid": "a", "files": []}, {"destination": "/b", "cart_uid": "b", "files": []}]
        )


def test_parts_spread_files_of_unknown_size():
    unsized = [CartFile(i, f"u/{i}", "sha1", SHA1) for i in range(6)]
    assert [len(batch) for batch in split_files(unsized, parts=3)] == [2, 2, 2]
