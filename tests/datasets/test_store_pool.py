"""The next version from the store's per-batch tables (cosmicman.datasets.store_pool.version_store): the path
the cosmicman_hq asset and bench/scale.py take."""

import json

import polars as pl
import pytest

from cosmicman.core.keys import table_key
from cosmicman.core.masks import mask_png
from cosmicman.core.store import Store
from cosmicman.datasets.build import ShardPolicy
from cosmicman.datasets.layout import read_manifest
from cosmicman.datasets.store_pool import version_store
from tests.datasets.test_dataset_version import make_samples

POLICY = ShardPolicy(samples_per_shard=3)


def write_batch(store: Store, batch: str, samples, annotator_round: int = 0) -> None:
    """The five per-batch tables a version joins, for ``samples`` (all kept)."""
    puts = [store.put_blob(s.image_bytes, s.ext, s.sha256) for s in samples]
    masks = []
    for s in samples:
        key = f"parsing/atr-1/{s.sha256[:2]}/{s.sha256}.png"
        store.write_bytes(key, mask_png(s.mask))
        masks.append(key)
    sha = [s.sha256 for s in samples]
    store.write_table(
        table_key("filtered_images", batch),
        pl.DataFrame({"sha256": sha, "blob_key": [p.key for p in puts], "ext": [s.ext for s in samples],
                      "batch": batch, "decision": "kept", "filter_config": '{"min_face_px": 52}'}),
    )  # fmt: skip
    store.write_table(
        table_key("raw_images", batch),
        pl.DataFrame({"sha256": sha, "source": "shhq", "source_id": sha, "licence": "CC-BY-4.0"}),
    )
    store.write_table(
        table_key("human_parsing", batch), pl.DataFrame({"sha256": sha, "mask_key": masks, "parser_version": "atr-1"})
    )
    store.write_table(
        table_key("annotations", batch),
        pl.DataFrame({"sha256": sha, "attributes": [json.dumps(s.attributes) for s in samples],
                      "annotator_version": "probe-r1", "annotator_round": annotator_round,
                      "label_rounds": "[1]", "human_answers": 0}),
    )  # fmt: skip
    store.write_table(
        table_key("captions", batch),
        pl.DataFrame({"sha256": sha, "groups": [json.dumps(s.caption.to_json()) for s in samples]}),
    )


@pytest.fixture(scope="module")
def samples():
    return make_samples(8, seed=5)


def test_the_next_version_shares_the_latest_and_an_unchanged_pool_reuses_it(tmp_path, samples):
    store = Store(str(tmp_path / "store"))
    write_batch(store, "b0", samples[:6])
    first = version_store(store, POLICY)
    assert (first.version, first.reused, first.samples, first.changes) == ("v0001", False, 6, None)
    assert first.counts is not None and first.counts.written_shards == 2
    again = version_store(store, POLICY)
    assert again.reused and again.version == "v0001" and again.fingerprint == first.fingerprint
    write_batch(store, "b1", samples[6:])
    write_batch(store, "b2", samples[:1])  # a batch whose images were all rejected adds nothing
    rejected = store.read_table(table_key("filtered_images", "b2")).with_columns(decision=pl.lit("too_small"))
    store.write_table(table_key("filtered_images", "b2"), rejected)
    second = version_store(store, POLICY)
    assert second.version == "v0002" and second.counts is not None
    assert (second.counts.written_samples, second.counts.reused_samples, second.counts.reused_shards) == (2, 6, 2)
    assert second.changes == {"old": "v0001", "new": "v0002", "added": 2, "removed": 0, "relabelled": 0,
                              "unchanged": 6}  # fmt: skip
    manifest = read_manifest(store.url, "v0002")
    assert sorted(manifest["source_batch"].unique().to_list()) == ["b0", "b1"] and manifest.height == 8


def test_a_batch_not_annotated_yet_has_no_candidate_and_an_empty_pool_is_refused(tmp_path, samples):
    store = Store(str(tmp_path / "store"))
    write_batch(store, "b0", samples[:2])
    store.delete(table_key("captions", "b0"))
    with pytest.raises(ValueError, match="nothing to version"):
        version_store(store, POLICY)


def test_relabelling_a_batch_makes_a_version_that_relabels_its_samples(tmp_path, samples):
    store = Store(str(tmp_path / "store"))
    write_batch(store, "b0", samples[:3])
    write_batch(store, "b1", samples[3:6])
    version_store(store, POLICY)
    write_batch(store, "b1", samples[3:6], annotator_round=2)
    second = version_store(store, POLICY)
    assert second.changes is not None and (second.changes["relabelled"], second.changes["unchanged"]) == (3, 3)
    assert second.counts is not None and second.counts.written_samples == 3


def test_versions_share_on_an_object_store_too(samples):
    """S3 has no empty folders: a build's staging folder exists only once it holds a record."""
    import os

    from cosmicman.datasets.layout import excluded_samples
    from cosmicman.datasets.verification import verify_version
    from tests.support.s3_server import moto_s3

    bucket = f"versions-{os.urandom(4).hex()}"  # s3fs caches a filesystem per endpoint, and ports come back
    with moto_s3(bucket) as endpoint:
        store = Store(f"s3://{bucket}/flywheel", **endpoint.storage_options())
        write_batch(store, "b0", samples[:6])
        first = version_store(store, POLICY)
        write_batch(store, "b1", samples[6:])
        second = version_store(store, POLICY)
        assert (first.version, second.version, second.samples) == ("v0001", "v0002", 8)
        assert second.counts is not None and (second.counts.reused_samples, second.counts.written_samples) == (6, 2)
        assert verify_version(store.url, "v0002", store.storage_options).intact
        assert excluded_samples(store.url, "v0002", store.storage_options) == []


def test_worker_processes_write_the_shards_one_process_writes_and_a_bad_sample_fails_the_same(
    tmp_path, samples, monkeypatch
):
    from cosmicman.datasets.layout import read_shards_table

    monkeypatch.setattr("cosmicman.datasets.prepare_pool.PARALLEL_MIN_ROWS", 1)  # in this process only
    monkeypatch.setattr("cosmicman.datasets.build.PREPARED_ROWS", 2)
    built = {}
    for workers in (1, 2):
        store = Store(str(tmp_path / f"store-{workers}"))
        write_batch(store, "b0", samples[:5])
        write_batch(store, "b1", samples[5:])
        if workers == 2:  # the spawned workers prepare; this process must not

            def not_here(*_):
                raise AssertionError("prepared in the writing process")

            monkeypatch.setattr("cosmicman.datasets.prepare_pool.prepare_rows", not_here)
        version = version_store(store, POLICY, created_at="2026-01-01", workers=workers)
        built[workers] = (read_shards_table(store.url, version.version), read_manifest(store.url, version.version))
    assert built[2][0].equals(built[1][0]) and built[2][1].equals(built[1][1])  # the same shards, byte for byte

    store = Store(str(tmp_path / "bad"))
    write_batch(store, "b0", samples[:5])
    turned = samples[3].mask.T.copy()
    store.write_bytes(f"parsing/atr-1/{samples[3].sha256[:2]}/{samples[3].sha256}.png", mask_png(turned))
    with pytest.raises(ValueError, match=rf"sample {samples[3].sha256}: mask shape"):
        version_store(store, POLICY, workers=2)
