"""A folder dataset: no link followed out of its root, no file content in any record, every entry counted."""

import io
import logging
import os
from pathlib import Path

import dagster as dg
import fsspec
import polars as pl
import pytest
from PIL import Image

from cosmicman.assets.sourcing import raw_images
from cosmicman.core.store import Store
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.folder_walk import RefusedRead, is_inside
from cosmicman.sourcing.ingest import IngestConfig, source_batch
from cosmicman.sourcing.sources import FolderSource, SourceItem
from tests.sourcing.test_ingest import jpeg, photo_like

SECRET = "SECRET-MARKER-5c1e09"  # in every file outside the root, and in one text file inside it
BATCH = "batch-00000"

# What each entry under the root becomes: the walk's skip reason, or the ingest outcome of a listed file.
EXPECTED_SKIPS = {
    "escape.jpg": "link_outside_root",  # a file link to the secret file beside the root
    "escape_dir": "link_outside_root",  # a directory link out of the root
    "parent": "link_outside_root",  # a link to exactly the root's parent
    "sibling.jpg": "link_outside_root",  # into "<root>2/": shares the root's name as a prefix only
    "myself": "link_to_directory",  # a link to the root itself: inside, never descended
    "dangling.jpg": "broken_link",
    "notes.txt": "unsupported_extension",
    "README": "unsupported_extension",
    "captions.jsonl": "captions_file",
    "pipe.jpg": "not_a_regular_file",
}
EXPECTED_OUTCOMES = {
    "a.jpg": ("stored", None),
    "b.png": ("stored", None),
    "still.gif": ("stored", None),  # GIF and TIFF decode like any format the pool takes
    "scan.tif": ("stored", None),
    "sub/scan2.tiff": ("stored", None),
    "anim.gif": ("failed", "animated"),
    "broken.jpg": ("failed", "truncated"),  # a JPEG cut short, its end marker missing
    "secret_text.jpg": ("failed", "not_an_image"),
    "sub/inner_link.jpg": ("duplicate", None),  # a link inside the root is read; its bytes are a.jpg's
}


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_text(f"{SECRET} password=hunter2\n")
    sibling = tmp_path / "ds2"
    sibling.mkdir()
    (sibling / "x.jpg").write_text(SECRET)
    (tmp_path / "secret_captions.jsonl").write_text(f'{{"file": "a.jpg", "caption": "{SECRET}"}}\n')

    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg(photo_like(1)))
    (root / "b.png").write_bytes(_encode(photo_like(2), "PNG"))
    (root / "still.gif").write_bytes(_encode(photo_like(3).quantize(64), "GIF"))
    frames = [photo_like(4).quantize(64), photo_like(5).quantize(64)]
    (root / "anim.gif").write_bytes(_encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    (root / "scan.tif").write_bytes(_encode(photo_like(6), "TIFF"))
    (root / "sub" / "scan2.tiff").write_bytes(_encode(photo_like(7), "TIFF"))
    (root / "broken.jpg").write_bytes(jpeg(photo_like(8))[:600] + b"\x00" * 2000)
    (root / "secret_text.jpg").write_text(f"{SECRET} inside the root, but still nobody's business\n")
    (root / "notes.txt").write_text(SECRET)
    (root / "README").write_text(SECRET)
    (root / "captions.jsonl").write_text('{"file": "a.jpg", "caption": "a man in a blue coat"}\n')
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "parent").symlink_to(tmp_path, target_is_directory=True)
    (root / "sibling.jpg").symlink_to(sibling / "x.jpg")
    (root / "myself").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "sub" / "inner_link.jpg").symlink_to(Path("..") / "a.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root


def _entries_under(root: Path) -> int:
    """Every non-directory entry under the root, links not followed (a directory link is one entry)."""
    total = 0
    for _, dirs, files in os.walk(root, followlinks=False):
        total += len(files) + sum((Path(_) / d).is_symlink() for d in dirs)
    return total


def _secret_anywhere(store_root: Path) -> list[str]:
    """Store files that hold the marker: raw bytes (JSON, blobs) and every decoded table value (parquet
    compresses, so a raw grep alone could miss it)."""
    found = []
    for path in store_root.rglob("*"):
        if not path.is_file():
            continue
        in_bytes = SECRET.encode() in path.read_bytes()
        if in_bytes or (path.suffix == ".parquet" and SECRET in str(pl.read_parquet(path).rows())):
            found.append(str(path))
    return found


def test_every_entry_is_listed_or_skipped_and_no_link_leaves_the_root(dataset, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    store = Store(str(tmp_path / "store"))
    source = FolderSource(str(dataset))
    report = source_batch(store, BATCH, 0, [(source, 100)], IngestConfig(workers=0))

    skipped = store.read_table(source.skipped_table_key())
    assert dict(zip(skipped["path"], skipped["reason"], strict=True)) == EXPECTED_SKIPS
    log = report.log.filter(pl.col("source") == "folder")
    outcomes = {r["source_id"]: (r["status"], r["reason"]) for r in log.iter_rows(named=True)}
    assert outcomes == EXPECTED_OUTCOMES
    a_sha = log.filter(pl.col("source_id") == "a.jpg")["sha256"].item()
    assert log.filter(pl.col("source_id") == "sub/inner_link.jpg")["duplicate_of"].item() == a_sha

    # every entry accounted for, once: listed ones each end as one outcome, the rest as one skip
    accounting = source.accounting(store)
    assert accounting["listed"] == len(EXPECTED_OUTCOMES) == len(log)
    assert sum(accounting.values()) == len(EXPECTED_SKIPS) + len(EXPECTED_OUTCOMES) == _entries_under(dataset)
    assert {k: v for k, v in accounting.items() if k != "listed"} == {
        "broken_link": 1,
        "captions_file": 1,
        "link_outside_root": 4,
        "link_to_directory": 1,
        "not_a_regular_file": 1,
        "unsupported_extension": 2,
    }
    assert FolderSource(str(dataset)).accounting(store) == accounting  # read back from the stored listing

    # the content of no file, inside the root or out of it, reaches a record or a log line
    assert _secret_anywhere(tmp_path / "store") == []
    assert SECRET not in caplog.text
    assert not any(SECRET in str(v) for v in report.log.rows())
    assert set(skipped["detail"]) and all(0 < len(d) < 100 for d in skipped["detail"])
    rejected = log.filter(pl.col("source_id") == "secret_text.jpg")["detail"].item()
    size = (dataset / "secret_text.jpg").stat().st_size
    assert (
        rejected
        == f"not_an_image: text (an HTML page, JSON, plain text), not an image (no known signature, {size} bytes)"
    )


def test_a_file_swapped_for_a_link_after_the_listing_is_refused_at_read(dataset, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    store = Store(str(tmp_path / "store"))
    source = FolderSource(str(dataset))
    assert "b.png" in source.files(store)
    (dataset / "b.png").unlink()
    (dataset / "b.png").symlink_to(tmp_path / "outside" / "secret.jpg")
    report = source_batch(store, BATCH, 0, [(source, 100)], IngestConfig(workers=0))
    row = report.log.filter(pl.col("source_id") == "b.png").row(0, named=True)
    assert (row["status"], row["reason"], row["sha256"], row["n_bytes"]) == ("failed", "link_outside_root", None, None)
    assert _secret_anywhere(tmp_path / "store") == [] and SECRET not in caplog.text
    with pytest.raises(RefusedRead, match="item 'b.png'") as refused:
        source.read(SourceItem("folder", "b.png", row["url"]))
    assert SECRET not in str(refused.value)


def test_a_captions_file_linked_out_of_the_root_is_refused_not_read(dataset, tmp_path):
    (dataset / "captions.jsonl").unlink()
    (dataset / "captions.jsonl").symlink_to(tmp_path / "secret_captions.jsonl")
    with pytest.raises(RefusedRead, match="captions file 'captions.jsonl'") as refused:
        FolderSource(str(dataset)).plan(0, 10, Store(str(tmp_path / "store")))
    assert refused.value.reason == "link_outside_root" and SECRET not in str(refused.value)


def test_inside_is_by_path_components(tmp_path):
    root = str(tmp_path / "ds")
    assert is_inside(root, root) and is_inside(f"{root}/a/b.jpg", root)
    assert not is_inside(str(tmp_path), root)  # the parent
    assert not is_inside(f"{root}2/x.jpg", root)  # a sibling sharing the name as a prefix
    assert not is_inside("/", root)


def test_a_dataset_root_that_is_itself_a_link_is_walked_as_its_target(dataset, tmp_path):
    (tmp_path / "mounted").symlink_to(dataset, target_is_directory=True)
    via_link = FolderSource(str(tmp_path / "mounted")).files()
    assert via_link == FolderSource(str(dataset)).files() and "sub/inner_link.jpg" in via_link


def test_the_sourcing_asset_reports_every_entry_by_reason_and_no_content(dataset, tmp_path):
    sourcing = SourcingResource(folder_url=str(dataset), folder_batch_size=100, workers=0)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sourcing_batches", [BATCH])
        result = dg.materialize(
            [raw_images],
            partition_key=BATCH,
            instance=instance,
            resources={"object_store": ObjectStoreResource(url=str(tmp_path / "store")), "sourcing": sourcing},
        )
        events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    meta = {k: v.value for k, v in result.asset_materializations_for_node("raw_images")[0].metadata.items()}
    entries = meta["folder_entries_by_reason"]
    assert entries["listed"] == len(EXPECTED_OUTCOMES) and entries["link_outside_root"] == 4
    assert sum(entries.values()) == _entries_under(dataset)
    assert (meta["requested"], meta["stored"], meta["duplicate"], meta["failed"]) == (9, 5, 1, 3)
    assert meta["failed_by_reason"] == {"animated": 1, "not_an_image": 1, "truncated": 1}
    assert SECRET not in events and SECRET not in str(meta)
    assert _secret_anywhere(tmp_path / "store") == []


def test_a_dataset_in_a_bucket_is_classified_by_name(tmp_path):
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{os.urandom(4).hex()}/SHHQ-1.0"
    for name, data in {"no_segment/0.png": b"x", "no_segment/1.txt": b"x", "segments/0.png": b"x"}.items():
        fs.pipe(f"{root}/{name}", data)
    source = FolderSource(f"memory://{root}", layout="shhq")
    assert source.files() == ["no_segment/0.png"]
    assert source.accounting() == {"listed": 1, "outside_image_folder": 1, "unsupported_extension": 1}
