import json
import os

import pytest

from cosmicman.data.sources import FolderSource, SyntheticSource, ingest
from cosmicman.data.store import Store
from cosmicman.data.synthetic import SyntheticWorld


@pytest.fixture
def folder(tmp_path):
    world = SyntheticWorld(seed=9)
    root = tmp_path / "shhq"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        (root / f"p{i}.jpg").write_bytes(world.sample(i, case="kept").image_bytes)
    (root / "sub" / "copy.jpg").write_bytes((root / "p0.jpg").read_bytes())  # same bytes, other name
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "captions.jsonl").write_text(json.dumps({"file": "p1.jpg", "caption": "a woman in a red dress"}) + "\n")
    return root


def test_folder_source_batches_its_sorted_image_files(folder):
    src = FolderSource(str(folder))
    first = list(src.records(0, 3))
    second = list(src.records(1, 3))
    assert [r.source_id for r in first] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [r.source_id for r in second] == ["sub/broken.jpg", "sub/copy.jpg"]
    assert first[1].alt_text == "a woman in a red dress" and first[0].url.startswith("file://")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(FolderSource(str(tmp_path / "nope")).records(0, 4))


def test_ingest_keeps_undecodable_rows_and_stores_each_byte_string_once(folder):
    store = Store(f"memory://src-{os.urandom(4).hex()}")
    result = ingest(FolderSource(str(folder)).records(0, 10), store, "batch-00000", known_sha256=set())
    assert (result.sourced, result.duplicates, len(result.table)) == (5, 1, 4)
    broken = result.table.filter(result.table["source_id"] == "sub/broken.jpg").row(0, named=True)
    assert broken["decode_error"] and broken["width"] == 0 and broken["ext"] == "bin"
    assert len(store.list("blobs")) == 4 == result.blobs_created
    again = ingest(FolderSource(str(folder)).records(0, 10), store, "batch-00001",
                   known_sha256=set(result.table["sha256"]))
    assert len(again.table) == 0 and again.duplicates == 5 and again.blobs_created == 0


def test_synthetic_source_carries_truth_beside_the_bytes():
    store = Store(f"memory://syn-{os.urandom(4).hex()}")
    result = ingest(SyntheticSource(seed=3).records(0, 12), store, "batch-00000", known_sha256=set())
    assert len(result.truth) == len(result.table) == result.sourced - result.duplicates
    truth_by_sha = {r["sha256"] for r in result.table.iter_rows(named=True)}
    assert {t.sample_id for t in result.truth} <= {f"synth-3-{i}" for i in range(12)}
    assert len(truth_by_sha) == len(result.truth)
