"""A filter worker process loads its chain once for every shard of one fingerprint, and filters on one
OpenCV / torch thread (shards, one per core, share out the cores)."""

import uuid

import cv2
import dagster as dg
import polars as pl
import pytest

from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.filtering import build_filtered_images, fake_person_classifier
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store
from cosmicman.environments.simulated_data import SimulatedFilterResource
from cosmicman.filtering import worker
from cosmicman.filtering.batch import plan_shards, write_filtered_shard
from cosmicman.filtering.decisions import FilterResult
from cosmicman.filtering.worker import compute_threads, worker_chain
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.world import SyntheticWorld


class ThreadRecordingChain:
    """Keeps every image; records OpenCV's thread count while it filters."""

    def __init__(self) -> None:
        self.threads_seen: set[int] = set()

    def process(self, data: bytes) -> FilterResult:
        self.threads_seen.add(cv2.getNumThreads())
        return FilterResult("kept", {"width": float(len(data))})


class CountingLoader:
    def __init__(self) -> None:
        self.calls = 0
        self.chain = ThreadRecordingChain()

    def __call__(self) -> ThreadRecordingChain:
        self.calls += 1
        return self.chain


def _store_with_rows(tmp_path, n: int) -> tuple[Store, pl.DataFrame]:
    store = Store(str(tmp_path))
    raw = pl.DataFrame([{"sha256": f"{i:064x}", "blob_key": f"img/{i}", "ext": "jpg"} for i in range(n)])
    for key in raw["blob_key"]:
        store.write_bytes(key, key.encode())
    store.write_table("raw.parquet", raw)
    return store, raw


def test_a_worker_loads_its_chain_once_for_all_shards_of_one_fingerprint(tmp_path):
    store, raw = _store_with_rows(tmp_path, 7)
    fingerprint = uuid.uuid4().hex  # a fingerprint no other test has loaded in this process
    shards = plan_shards(raw, "batch-00000", "raw.parquet", 3, "{}", fingerprint)
    loader = CountingLoader()
    assert all(write_filtered_shard(store, s, loader) for s in shards)
    assert len(shards) == 3 and loader.calls == 1
    assert sum(len(store.read_table(s.key)) for s in shards) == 7
    # another fingerprint (a new head, config or code version) loads its own chain
    (other,) = plan_shards(raw, "batch-00000", "raw.parquet", 7, "{}", uuid.uuid4().hex)
    assert write_filtered_shard(store, other, loader) and loader.calls == 2


def test_one_chain_is_held_and_dropped_before_another_loads():
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    held_while_loading = []
    loaded = worker_chain(first, object)
    assert worker_chain(first, list) is loaded  # the same fingerprint: the chain already held
    worker_chain(second, lambda: held_while_loading.append(worker._LOADED) or object())
    assert held_while_loading == [None]


def test_a_shard_filters_on_one_thread_and_the_process_gets_its_threads_back(tmp_path):
    store, raw = _store_with_rows(tmp_path, 4)
    (shard,) = plan_shards(raw, "batch-00000", "raw.parquet", 4, "{}", uuid.uuid4().hex)
    loader = CountingLoader()
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        assert write_filtered_shard(store, shard, loader)
        assert loader.chain.threads_seen == {1}
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_thread_counts_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"), compute_threads(0):
        pass


def test_the_asset_run_in_one_process_loads_the_chain_once_for_its_shards(tmp_path, monkeypatch):
    """The in-process executor runs a batch's shards one after another in one process: one load."""
    resources = {
        "object_store": ObjectStoreResource(url=str(tmp_path)),
        "filters": SimulatedFilterResource(fake_head_train_size=40),
    }
    assert dg.materialize([fake_person_classifier], resources=resources).success
    store = Store(str(tmp_path))
    world = SyntheticWorld(seed=12)
    rows = []
    for i, case in enumerate(["kept", "too_small", "corrupt", "fake_person", "low_quality"]):
        put = store.put_blob(world.sample(i, case).image_bytes, "jpg")
        rows.append({"sha256": put.sha256, "blob_key": put.key, "ext": "jpg"})
    store.write_table(table_key("raw_images", "batch-00000"), pl.DataFrame(rows))
    loads = []
    chain = FilterResource.chain
    monkeypatch.setattr(FilterResource, "chain", lambda self, s: loads.append(1) or chain(self, s))
    monkeypatch.setattr(worker, "_LOADED", None)  # nothing this process loaded before counts
    config = {"ops": {"filtered_images": {"ops": {"plan_filter_shards": {"config": {"shard_rows": 2}}}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sourcing_batches.name, ["batch-00000"])
        result = dg.materialize(
            [
                dg.AssetSpec("raw_images", partitions_def=sourcing_batches),
                dg.AssetSpec("fake_person_classifier"),
                build_filtered_images(),
            ],
            selection=["filtered_images"],
            resources=resources,
            instance=instance,
            partition_key="batch-00000",
            run_config=config,
        )
    assert result.success
    assert len(store.list("shards/filtered_images/batch-00000")) == 3 and len(loads) == 1
    assert len(store.read_table(table_key("filtered_images", "batch-00000"))) == 5
