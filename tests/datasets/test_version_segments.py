"""A version names manifest segments shared like its shards (cosmicman.datasets.segments): a small version
writes bytes in proportion to its change, its manifest reads the same to users as a version written whole,
removed samples stay named right, and a base segment mostly of dead rows hands its live rows over."""

import dataclasses
import hashlib
import io

import fsspec
import numpy as np
import polars as pl
import pytest
from PIL import Image

from cosmicman.datasets.build import ShardPolicy, build_version
from cosmicman.datasets.diff import diff_counts, diff_versions
from cosmicman.datasets.layout import (
    excluded_samples,
    iter_manifest,
    read_manifest,
    read_segments_table,
    read_shards_table,
    read_stats,
)
from cosmicman.datasets.lineage import dataset_lineage
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.shards import iter_samples
from cosmicman.datasets.verification import verify_shards, verify_version
from tests.datasets.test_dataset_version import make_samples
from tests.datasets.test_shared_versions import PER_SHARD, ListPool

PREFIX = "datasets/cosmicman-hq"


def tiny_samples(n: int) -> list[DatasetSample]:
    """Samples of a few hundred bytes each (2x2 images, a short caption): the manifest rows weigh the most."""
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
        provenance = {"source": "shhq", "source_id": str(i), "source_batch": f"b{i % 4}", "annotator_round": 0}
        out.append(
            DatasetSample(
                hashlib.sha256(data).hexdigest(), data, "png", np.zeros((2, 2), np.uint8), {}, {"caption": "a person"},
                provenance,
            )
        )  # fmt: skip
    return out


def listing(root: str) -> dict[str, int]:
    """Every file under the dataset prefix with its size."""
    fs, path = fsspec.core.url_to_fs(root)
    found = fs.find(f"{path}/{PREFIX}", detail=True)
    return {p.removeprefix(f"{path}/{PREFIX}/"): int(e["size"]) for p, e in found.items()}


def build(root, version, batches, base=None, policy=PER_SHARD):
    source = ListPool(batches)
    info, counts = build_version(root, version, source, base=base, policy=policy, created_at="2026-01-01")
    return source, info, counts


def test_a_two_percent_version_writes_its_shards_one_segment_and_small_files(tmp_path):
    root = str(tmp_path / "store")
    pool = tiny_samples(2550)
    policy = ShardPolicy(samples_per_shard=100)
    build(root, "v0001", {"b0": pool[:2500]}, policy=policy)
    before = listing(root)
    _, info, counts = build(root, "v0002", {"b0": pool[:2500], "b1": pool[2500:]}, base="v0001", policy=policy)
    after = listing(root)
    assert {k: after[k] for k in before} == before  # nothing the base version holds was rewritten
    new = {k: v for k, v in after.items() if k not in before}
    shards = read_shards_table(root, "v0002")
    fresh = shards.filter(~pl.col("shard").is_in(read_shards_table(root, "v0001")["shard"].implode()))
    (segment,) = read_segments_table(root, "v0002").filter(pl.col("n_rows") == 50)["segment"]
    expected = {
        *(f"shards/{s}" for s in fresh["shard"]),
        *(f"shards/{s.removesuffix('.tar')}.parquet" for s in fresh["shard"]),
        f"manifests/{segment}",
        *(f"v0002/{f}" for f in ("shards.parquet", "segments.parquet", "removed.parquet", "stats.json")),
        "v0002/DATACARD.md",
        "v0002/_SUCCESS",
    }
    assert set(new) == expected and fresh["n_live"].sum() == counts.written_samples == 50
    # the staging records (deleted at publish) are all the build wrote beyond what is left
    assert sum(new.values()) < counts.written_bytes < sum(new.values()) + 200 * counts.written_shards
    assert counts.written_shard_bytes == fresh["n_bytes"].sum()
    ratio = counts.written_bytes / counts.written_shard_bytes
    assert ratio <= 1.5, f"hq_rewrite_ratio {ratio:.2f}"
    assert info.n_samples == read_manifest(root, "v0002", columns=["sha256"]).height == 2550


def test_a_shared_version_reads_as_the_same_version_written_whole(tmp_path):
    pool = sorted(make_samples(12, seed=4), key=lambda s: s.sha256)  # v0001's shards: [0..3], [4..7]
    relabelled = dataclasses.replace(pool[5], provenance={**pool[5].provenance, "annotator_round": 3})
    second = {"b0": [s for s in pool[:8] if s is not pool[1]] + [relabelled], "b1": pool[8:12]}
    second["b0"].remove(pool[5])
    shared, whole = str(tmp_path / "shared"), str(tmp_path / "whole")
    build(shared, "v0001", {"b0": pool[:8]})
    build(shared, "v0002", second, base="v0001")
    build(whole, "v0002", second)
    columns = [c for c in read_manifest(whole, "v0002").columns if c not in ("shard", "shard_sha256")]
    a, b = (read_manifest(r, "v0002", columns=columns).sort("sha256") for r in (shared, whole))
    assert a.equals(b) and a.height == 11
    laid_out = ("n_shards", "n_bytes")  # the shards differ: compaction wrote the relabelled one's shard anew
    stats = [{k: v for k, v in read_stats(r, "v0002").items() if k not in laid_out} for r in (shared, whole)]
    assert stats[0] == stats[1] and stats[0]["n_images"] == 11
    assert dataset_lineage(shared, "v0002") == dataset_lineage(whole, "v0002")
    assert diff_counts(shared, "v0001", "v0002") == {
        "old": "v0001", "new": "v0002", "added": 4, "removed": 1, "relabelled": 1, "unchanged": 6,
    }  # fmt: skip
    assert diff_versions(shared, "v0001", "v0002").removed == (pool[1].sha256,)
    # what the shards hold beyond the manifest is exactly what excluded_samples names
    held = {s["sha256"] for s in iter_samples(shared, "v0002")}
    assert sorted(held - set(a["sha256"])) == excluded_samples(shared, "v0002") == [pool[1].sha256]
    pieces = list(iter_manifest(shared, "v0002", columns=["sha256"], batch_rows=4))
    assert (
        max(p.height for p in pieces) <= 4
        and pl.concat(pieces)["sha256"].to_list() == read_manifest(shared, "v0002")["sha256"].to_list()
    )
    assert verify_version(shared, "v0002").intact


def test_a_removed_sample_that_comes_back_is_referenced_where_it_lies(tmp_path):
    root = str(tmp_path / "store")
    pool = make_samples(8, seed=6)
    gone = sorted(pool, key=lambda s: s.sha256)[0]
    build(root, "v0001", {"b0": pool})
    build(root, "v0002", {"b0": [s for s in pool if s is not gone]}, base="v0001")
    assert excluded_samples(root, "v0002") == [gone.sha256]
    source, v3, c3 = build(root, "v0003", {"b0": pool}, base="v0002")
    assert (c3.written_samples, source.loaded, excluded_samples(root, "v0003")) == (0, [], [])
    assert read_shards_table(root, "v0003")["n_live"].to_list() == [4, 4] and verify_version(root, "v0003").intact


@pytest.mark.parametrize(("dropped", "moved"), [(0, 0), (1, 1)])
def test_a_segment_under_the_live_fraction_hands_its_rows_to_the_new_one(tmp_path, dropped, moved):
    root = str(tmp_path / "store")
    pool = sorted(make_samples(12, seed=8)[:8], key=lambda s: s.sha256) + make_samples(12, seed=8)[8:]
    build(root, "v0001", {"b0": pool[:8]})  # one segment of 8 rows: shards [0..3] and [4..7]
    (first,) = read_segments_table(root, "v0001")["segment"]
    # the first shard leaves whole; of the second, ``dropped`` leave: 4/8 kept is not under 0.5, 3/8 is
    stay = pool[4 + dropped : 8]
    _, _, counts = build(root, "v0002", {"b0": stay, "b1": pool[8:]}, base="v0001")
    assert counts.moved_segments == moved and counts.compacted_shards == 0 and counts.written_samples == 4
    segments = read_segments_table(root, "v0002")
    assert (first in segments["segment"].to_list()) == (not moved)
    assert segments["n_rows"].to_list() == ([4 + 4] if moved else [8, 4])
    assert read_manifest(root, "v0002")["sha256"].sort().to_list() == sorted(s.sha256 for s in [*stay, *pool[8:]])
    assert excluded_samples(root, "v0002") == sorted(s.sha256 for s in pool[4 : 4 + dropped])
    assert verify_version(root, "v0002").intact


def test_a_changed_segment_or_removed_list_is_reported(tmp_path):
    pool = make_samples(8, seed=6)
    root = str(tmp_path / "changed")
    build(root, "v0001", {"b0": pool})
    fs, path = fsspec.core.url_to_fs(root)
    (segment,) = read_segments_table(root, "v0001")["segment"]
    stored = f"{path}/{PREFIX}/manifests/{segment}"
    fs.pipe_file(stored, b"x" * fs.size(stored))  # same size, never verified: its bytes are re-read
    problems = verify_shards(root, "v0001")
    assert problems[0].startswith(f"segment {segment}: sha256") and len(problems) == 1

    root = str(tmp_path / "removed")
    build(root, "v0001", {"b0": pool})
    build(root, "v0002", {"b0": pool[1:]}, base="v0001")
    fs, path = fsspec.core.url_to_fs(root)
    pl.DataFrame(schema={"sha256": pl.String, "shard": pl.String, "content_key": pl.String}).write_parquet(
        f"{path}/{PREFIX}/v0002/removed.parquet"
    )
    shard = read_shards_table(root, "v0002").filter(pl.col("n_live") < pl.col("n_samples"))["shard"].item()
    assert verify_shards(root, "v0002") == [f"{shard}: 4 of its samples are in the version, shards.parquet says 3"]
