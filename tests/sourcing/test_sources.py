import json
import os

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cosmicman.core.keys import raw_table_key, synthetic_truth_key, truth_mask_key
from cosmicman.core.store import Store
from cosmicman.simulation.source import SyntheticSource
from cosmicman.simulation.world import SyntheticWorld
from cosmicman.sourcing.ingest import IngestConfig, source_batch
from cosmicman.sourcing.sources import FolderSource, ParquetSource, SourceItem


def _store() -> Store:
    return Store(f"memory://src-{os.urandom(4).hex()}")


@pytest.fixture
def folder(tmp_path):
    world = SyntheticWorld(seed=9)
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        (root / f"p{i}.jpg").write_bytes(world.sample(i, case="kept").image_bytes)
    (root / "sub" / "copy.jpg").write_bytes((root / "p0.jpg").read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / "captions.jsonl").write_text(json.dumps({"file": "p1.jpg", "caption": "a woman in a red dress"}) + "\n")
    return root


def test_plain_folder_batches_its_sorted_image_files_and_reads_captions(folder):
    src, store = FolderSource(str(folder)), _store()
    first, second = src.plan(0, 3, store), src.plan(1, 3, store)
    assert [i.source_id for i in first] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [i.source_id for i in second] == ["sub/copy.jpg"]
    assert first[1].alt_text == "a woman in a red dress" and first[0].url.startswith("file://")
    (folder / "p3.jpg").write_bytes(b"new file after the first listing")
    assert len(src.plan(1, 3, store)) == 1  # the listing is kept in the store: batches stay stable


def test_shhq_layout_takes_no_segment_images_only(tmp_path):
    root = tmp_path / "SHHQ-1.0"
    for sub in ("no_segment", "segments"):
        (root / sub).mkdir(parents=True)
        for i in range(2):
            (root / sub / f"{i:06d}.png").write_bytes(b"x")
    items = FolderSource(str(root), layout="shhq", licence="CC0").plan(0, 10, _store())
    assert [i.source_id for i in items] == ["no_segment/000000.png", "no_segment/000001.png"]
    assert {i.licence for i in items} == {"CC0"}


def test_deepfashion_multimodal_layout_reads_its_captions(tmp_path):
    root = tmp_path / "DeepFashion-MultiModal"
    (root / "images").mkdir(parents=True)
    (root / "parsing").mkdir()
    (root / "images" / "MEN-Denim-id_00000080-01_7_additional.jpg").write_bytes(b"x")
    (root / "parsing" / "MEN-Denim-id_00000080-01_7_additional_segm.png").write_bytes(b"x")
    (root / "captions.json").write_text(
        json.dumps({"MEN-Denim-id_00000080-01_7_additional.jpg": "The man wears a long-sleeve denim shirt."})
    )
    [item] = FolderSource(str(root), layout="deepfashion_mm").plan(0, 10, _store())
    assert item.source_id == "images/MEN-Denim-id_00000080-01_7_additional.jpg"
    assert item.alt_text == "The man wears a long-sleeve denim shirt."


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(str(tmp_path / "nope")).plan(0, 4, _store())
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="not in the shhq layout"):
        FolderSource(str(tmp_path / "flat"), layout="shhq").plan(0, 4, _store())
    with pytest.raises(ValueError, match="unknown folder layout"):
        FolderSource(str(tmp_path), layout="coco")


def _write_laion(path, start, n, upper=False):
    cols = {
        "url": [f"http://h/{i}.jpg" for i in range(start, start + n)],
        "caption": [f"photo {i}" for i in range(start, start + n)],
        "width": [640 + i for i in range(start, start + n)],
        "height": [480] * n,
        "license": [None if i % 2 else "cc-by" for i in range(start, start + n)],
    }
    if upper:
        cols = {{"caption": "TEXT"}.get(k, k).upper(): v for k, v in cols.items()}
    pq.write_table(pa.table(cols), path, row_group_size=7)


def test_parquet_source_slices_rows_across_files_and_row_groups(tmp_path):
    folder = tmp_path / "laion"
    folder.mkdir()
    _write_laion(folder / "part-00000.parquet", 0, 30)
    _write_laion(folder / "part-00001.parquet", 30, 30, upper=True)  # LAION-400M's upper-case columns
    src = ParquetSource(str(folder))
    batch = src.plan(2, 12)  # rows 24..35: the end of one file and the start of the next
    assert [i.url for i in batch] == [f"http://h/{i}.jpg" for i in range(24, 36)]
    assert batch[0].source_id == "part-00000.parquet:24" and batch[-1].source_id == "part-00001.parquet:5"
    assert (batch[0].alt_text, batch[0].width, batch[0].height, batch[0].licence) == ("photo 24", 664, 480, "cc-by")
    assert batch[1].licence.startswith("unknown")
    assert len(src.plan(4, 12)) == 12 and len(src.plan(5, 12)) == 0
    assert [i.url for i in ParquetSource(str(folder / "part-00001.parquet")).plan(0, 2)] == [
        "http://h/30.jpg",
        "http://h/31.jpg",
    ]


def test_parquet_without_url_column_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"link": ["http://h/x.jpg"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no url column"):
        ParquetSource(str(tmp_path / "bad.parquet")).plan(0, 5)


def test_synthetic_items_render_to_the_worlds_samples():
    src = SyntheticSource(seed=3)
    items = src.plan(1, 4)
    assert [i.source_id for i in items] == [f"synth-3-{i}" for i in range(4, 8)]
    sample = src.render(items[2])
    world = SyntheticWorld(seed=3)
    assert sample.image_bytes == world.sample(6, world.case_of(6, 0.3)).image_bytes
    with pytest.raises(ValueError, match="not an item of synthetic world 4"):
        SyntheticSource(seed=4).render(items[0])


def test_ingest_keeps_the_synthetic_truth_beside_the_pool_and_none_for_other_sources(folder):
    store = _store()
    synthetic = SyntheticSource(seed=3, negative_fraction=0.5)
    report = source_batch(
        store, "batch-00000", 0, [(synthetic, 8), (FolderSource(str(folder)), 4)], IngestConfig(workers=0)
    )
    stored = report.raw.filter(pl.col("source") == "synthetic")
    truth = store.read_table(synthetic_truth_key("batch-00000"))
    assert sorted(truth["sha256"]) == sorted(stored["sha256"]) and len(truth) > 0  # folder images have no truth
    with_mask = truth.filter(pl.col("mask_key").is_not_null())
    assert all(store.exists(truth_mask_key(sha)) for sha in with_mask["sha256"])
    # the hook is idempotent: a batch killed while finishing records the same truth again
    synthetic.record_stored(
        "batch-00000",
        [(SourceItem("synthetic", r["source_id"], r["url"]), r["sha256"]) for r in stored.iter_rows(named=True)],
        store,
    )
    assert store.read_table(synthetic_truth_key("batch-00000")).equals(truth)

    real = _store()
    source_batch(real, "batch-00000", 0, [(FolderSource(str(folder)), 4)], IngestConfig(workers=0))
    assert not real.exists(synthetic_truth_key("batch-00000")) and real.list("truth") == []
    assert len(real.read_table(raw_table_key("batch-00000"))) == 3  # sub/copy.jpg is a duplicate of p0.jpg
