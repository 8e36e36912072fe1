"""Versions that share content-addressed shards (cosmicman.datasets.build): only new or changed samples are
written, removals leave through removed.parquet, compaction at the live-share edge, resume after a kill, and a
check that re-reads only new shards."""

import dataclasses
import itertools
import uuid

import fsspec
import polars as pl
import pytest

from cosmicman.datasets.build import ShardPolicy, build_version
from cosmicman.datasets.diff import diff_counts, diff_versions
from cosmicman.datasets.layout import (
    excluded_samples,
    read_manifest,
    read_segments_table,
    read_shards_table,
    shard_urls,
)
from cosmicman.datasets.lineage import dataset_lineage
from cosmicman.datasets.samples import DatasetSample, content_key
from cosmicman.datasets.shards import iter_samples
from cosmicman.datasets.verification import verify_version
from tests.datasets.test_dataset_version import make_samples

PER_SHARD = ShardPolicy(samples_per_shard=4, min_live_fraction=0.5)


class ListPool:
    """A pool of whole samples in batches (``batch -> samples``), counting the samples it hands out."""

    def __init__(self, batches: dict[str, list[DatasetSample]]) -> None:
        self.by_batch = batches
        self.loaded: list[str] = []

    def batches(self) -> list[str]:
        return list(self.by_batch)

    def rows(self, batch: str) -> pl.DataFrame:
        samples = self.by_batch[batch]
        keys = [content_key(s.sha256, s.attributes, s.provenance) for s in samples]
        return pl.DataFrame({"sha256": [s.sha256 for s in samples], "content_key": keys}, schema=pl.Schema(
            {"sha256": pl.String, "content_key": pl.String}
        )).sort("sha256")  # fmt: skip

    def samples(self, rows: pl.DataFrame):
        by_sha = {s.sha256: s for batch in self.by_batch.values() for s in batch}
        for sha in rows["sha256"].to_list():
            self.loaded.append(sha)
            yield by_sha[sha]


@pytest.fixture(scope="module")
def pool() -> list[DatasetSample]:
    return make_samples(14, seed=3)


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "store")


def shard_files(root: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(root)
    return {p.rsplit("/", 1)[1] for p in fs.glob(f"{path}/datasets/cosmicman-hq/shards/*.tar")}


def build(root, version, batches, base=None, policy=PER_SHARD):
    source = ListPool(batches)
    info, counts = build_version(root, version, source, base=base, policy=policy, created_at="2026-01-01")
    return source, info, counts


def test_a_new_version_writes_only_new_samples_and_references_the_rest(root, pool):
    _, v1, c1 = build(root, "v0001", {"b0": pool[:8]})
    assert (c1.written_samples, c1.written_shards, c1.reused_samples) == (8, 2, 0)
    before = shard_files(root)
    source, v2, c2 = build(root, "v0002", {"b0": pool[:8], "b1": pool[8:10]}, base="v0001")
    assert sorted(source.loaded) == sorted(s.sha256 for s in pool[8:10])  # only the new samples were read
    assert (c2.written_samples, c2.written_shards, c2.reused_samples, c2.reused_shards) == (2, 1, 8, 2)
    assert shard_files(root) - before == {v2.shards[-1]} and v2.shards[:2] == v1.shards
    assert read_manifest(root, "v0002").height == 10 and excluded_samples(root, "v0002") == []
    got = [s["sha256"] for s in iter_samples(root, "v0002")]
    assert sorted(got) == sorted(s.sha256 for s in pool[:10])
    assert all(u.endswith(s) for u, s in zip(shard_urls(root, "v0002"), v2.shards))
    assert diff_versions(root, "v0001", "v0002").counts() == diff_counts(root, "v0001", "v0002") == {
        "old": "v0001", "new": "v0002", "added": 2, "removed": 0, "relabelled": 0, "unchanged": 8,
    }  # fmt: skip


def test_a_removed_sample_leaves_through_the_manifest(root, pool):
    _, v1, _ = build(root, "v0001", {"b0": pool[:8]})
    gone = sorted(pool[:4], key=lambda s: s.sha256)[0]  # in the first shard (rows are written sha-sorted)
    _, v2, c2 = build(root, "v0002", {"b0": [s for s in pool[:8] if s is not gone]}, base="v0001")
    assert c2.written_samples == 0 and v2.shards == v1.shards and v2.n_samples == 7
    shards = read_shards_table(root, "v0002")
    assert shards["n_live"].to_list() == [3, 4] and shards["n_samples"].to_list() == [4, 4]
    assert excluded_samples(root, "v0002") == [gone.sha256]
    assert diff_versions(root, "v0001", "v0002").removed == (gone.sha256,)
    assert verify_version(root, "v0002").intact


@pytest.mark.parametrize(("kept", "compacted"), [(2, False), (1, True)])
def test_a_shard_is_compacted_once_its_live_share_falls_under_the_fraction(root, pool, kept, compacted):
    build(root, "v0001", {"b0": pool[:8]})
    first = sorted(pool[:8], key=lambda s: s.sha256)
    stay = first[:kept] + first[4:]  # of the first shard's 4 samples, ``kept`` stay: 2/4 = 0.5 is not under 0.5
    source, v2, c2 = build(root, "v0002", {"b0": stay}, base="v0001")
    assert c2.compacted_shards == int(compacted)
    assert sorted(source.loaded) == (sorted(s.sha256 for s in first[:kept]) if compacted else [])
    assert read_manifest(root, "v0002").height == kept + 4 and verify_version(root, "v0002").intact
    assert (excluded_samples(root, "v0002") == []) == compacted


def test_a_relabelled_sample_is_written_anew_and_its_stale_copy_never_excluded_by_name(root, pool):
    build(root, "v0001", {"b0": pool[:8]})
    target = sorted(pool[:8], key=lambda s: s.sha256)[5]
    relabelled = dataclasses.replace(target, provenance={**target.provenance, "annotator_round": 7})
    batch = [relabelled if s is target else s for s in pool[:8]]
    _, v2, c2 = build(root, "v0002", {"b0": batch}, base="v0001")
    # the old copy's shard is compacted, so excluded_samples never names a sample the version holds
    assert c2.compacted_shards == 1 and excluded_samples(root, "v0002") == []
    assert diff_versions(root, "v0001", "v0002").relabelled == (target.sha256,)
    rounds = dict(read_manifest(root, "v0002").select("sha256", "annotator_round").iter_rows())
    assert rounds[target.sha256] == 7


def test_a_build_killed_mid_way_resumes_without_rewriting_a_shard(root, pool, monkeypatch):
    build(root, "v0001", {"b0": pool[:4]})
    batches = {"b0": pool[:4], "b1": pool[4:14]}
    calm = ListPool(batches)
    reference = f"memory://ref-{uuid.uuid4().hex}"
    build(reference, "v0001", {"b0": pool[:4]})
    whole, _ = build_version(reference, "v0002", calm, base="v0001", policy=PER_SHARD, created_at="2026-01-01")

    class Killed(RuntimeError):
        pass

    dying = ListPool(batches)
    original = dying.samples
    served = itertools.count()

    def die_after_six(rows):
        for s in original(rows):
            if next(served) == 6:
                raise Killed("killed")
            yield s

    monkeypatch.setattr(dying, "samples", die_after_six)
    monkeypatch.setattr("cosmicman.datasets.build.PREPARED_ROWS", 2)  # samples are read and written two by two
    with pytest.raises(Killed):
        build_version(root, "v0002", dying, base="v0001", policy=PER_SHARD)
    written = shard_files(root)
    fs, path = fsspec.core.url_to_fs(root)
    mtimes = {n: fs.modified(f"{path}/datasets/cosmicman-hq/shards/{n}") for n in written}
    source, info, counts = build(root, "v0002", batches, base="v0001")
    assert counts.resumed_shards == 1 and counts.written_shards == 2  # 10 new: 4 stored before the kill, 6 now
    assert len(source.loaded) == 6 and counts.written_samples == 6
    assert all(fs.modified(f"{path}/datasets/cosmicman-hq/shards/{n}") == t for n, t in mtimes.items())
    assert info.shards == whole.shards  # the same shards as a build never killed
    # and the same one segment, byte for byte: the rows of the shard stored before the kill, then the rest
    assert read_segments_table(root, "v0002").equals(read_segments_table(reference, "v0002"))
    assert len(fs.glob(f"{path}/datasets/cosmicman-hq/manifests/*.parquet")) == 2  # v0001's and v0002's
    assert read_manifest(root, "v0002").equals(read_manifest(reference, "v0002"))
    assert read_manifest(root, "v0002").height == 14 and verify_version(root, "v0002").intact


def test_the_check_rereads_only_shards_never_verified(root, pool):
    build(root, "v0001", {"b0": pool[:8]})
    assert verify_version(root, "v0001").reread == 2
    build(root, "v0002", {"b0": pool[:8], "b1": pool[8:12]}, base="v0001")
    second = verify_version(root, "v0002")
    assert second.intact and second.reread == 1 and (second.shards, second.samples) == (3, 12)
    assert verify_version(root, "v0002").reread == 0


def test_lineage_names_the_batches_and_rounds_of_each_shared_version(root, pool):
    a = [
        dataclasses.replace(s, provenance={**s.provenance, "source_batch": "b0", "label_rounds": [1]}) for s in pool[:6]
    ]
    b = [
        dataclasses.replace(s, provenance={**s.provenance, "source_batch": "b1", "label_rounds": [2]})
        for s in pool[6:9]
    ]
    build(root, "v0001", {"b0": a})
    build(root, "v0002", {"b0": a[2:], "b1": b}, base="v0001")
    one, two = dataset_lineage(root, "v0001"), dataset_lineage(root, "v0002")
    assert (one["sourcing_batches"], one["label_rounds"], one["samples"]) == (["b0"], [1], 6)
    assert (two["sourcing_batches"], two["label_rounds"], two["samples"]) == (["b0", "b1"], [1, 2], 7)
    d = diff_versions(root, "v0001", "v0002")
    assert set(d.removed) == {s.sha256 for s in a[:2]} and set(d.added) == {s.sha256 for s in b}


def test_a_shard_policy_out_of_range_is_one_clear_error():
    with pytest.raises(ValueError, match="min_live_fraction=1.5"):
        ShardPolicy(4, min_live_fraction=1.5)
    with pytest.raises(ValueError, match="samples_per_shard=0"):
        ShardPolicy(0)
