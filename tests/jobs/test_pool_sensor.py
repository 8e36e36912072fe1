import os

import dagster as dg
import pytest

from cosmicman.assets.sourcing import SOURCING_POOL, raw_images
from cosmicman.core.keys import POOL_MARKERS_PREFIX
from cosmicman.core.store import Store
from cosmicman.environments.settings import sourcing_concurrency
from cosmicman.environments.simulated_data import SimulatedSourcingResource
from cosmicman.jobs import pool_threshold_sensor
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.pool import PoolStats, decide_sourcing, read_pool_stats, record_batch


def test_decision_under_threshold_adds_the_next_batch():
    d = decide_sourcing(
        PoolStats(frozenset({"batch-00000", "batch-00001"}), 80, 30), 40, ["batch-00000", "batch-00001"], 1
    )
    assert d.new_batches == ("batch-00002",)


def test_the_threshold_edge_a_pool_exactly_at_it_sources_nothing_one_under_sources():
    batches = ["batch-00000", "batch-00001"]
    at = decide_sourcing(PoolStats(frozenset(batches), 90, 40), 40, batches, 1)
    assert at.new_batches == () and "at or above the threshold 40" in at.reason
    assert decide_sourcing(PoolStats(frozenset(batches), 90, 39), 40, batches, 1).new_batches == ("batch-00002",)


def test_decision_waits_for_a_batch_in_flight():
    d = decide_sourcing(PoolStats(frozenset({"batch-00000"}), 40, 10), 40, ["batch-00000", "batch-00001"], 1)
    assert d.new_batches == () and "batch-00001" in d.reason and "at the limit of 1 in flight" in d.reason


def test_the_concurrency_edge_one_under_the_limit_adds_one_at_the_limit_waits():
    recorded = frozenset({"batch-00000"})
    partitions = ["batch-00000", "batch-00001", "batch-00002"]  # two in flight
    under = decide_sourcing(PoolStats(recorded, 40, 10), 40, partitions, 3)
    assert under.new_batches == ("batch-00003",) and "2 in flight, at most 3" in under.reason
    at = decide_sourcing(PoolStats(recorded, 40, 10), 40, [*partitions, "batch-00003"], 3)
    assert at.new_batches == ()
    assert at.reason.startswith("3 batches not filtered yet (batch-00001, batch-00002, batch-00003)")
    assert "at the limit of 3 in flight" in at.reason


def test_an_empty_pool_starts_as_many_batches_as_the_concurrency_allows():
    d = decide_sourcing(PoolStats(frozenset(), 0, 0), 40, [], 4)
    assert d.new_batches == ("batch-00000", "batch-00001", "batch-00002", "batch-00003")
    with pytest.raises(ValueError, match="sourcing concurrency must be at least 1, got 0"):
        decide_sourcing(PoolStats(frozenset(), 0, 0), 40, [], 0)


def test_the_concurrency_setting_per_environment_and_a_bad_value(monkeypatch):
    monkeypatch.delenv("COSMICMAN_SOURCING_CONCURRENCY", raising=False)
    for env, expected in (("local", 1), ("s3", 2), ("k8s", 4)):
        monkeypatch.setenv("COSMICMAN_ENV", env)
        assert sourcing_concurrency() == expected
    monkeypatch.setenv("COSMICMAN_SOURCING_CONCURRENCY", "6")
    assert sourcing_concurrency() == 6
    monkeypatch.setenv("COSMICMAN_SOURCING_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="COSMICMAN_SOURCING_CONCURRENCY='0' is not a positive whole number"):
        sourcing_concurrency()


def test_raw_images_steps_are_in_the_sourcing_pool():
    assert raw_images.op.pool == SOURCING_POOL == "sourcing"


def test_pool_stats_sum_batches_and_rewrites_are_idempotent():
    store = Store(f"memory://pool-{os.urandom(4).hex()}")
    record_batch(store, "batch-00000", raw=40, kept=25)
    record_batch(store, "batch-00001", raw=40, kept=20)
    stats = record_batch(store, "batch-00000", raw=40, kept=25)
    assert (stats.raw, stats.kept) == (80, 45)
    assert read_pool_stats(store) == stats


def test_re_recording_a_batch_replaces_its_counts_and_leaves_one_marker(tmp_path):
    store = Store(str(tmp_path))
    record_batch(store, "batch-00000", raw=40, kept=25)
    record_batch(store, "batch-00001", raw=40, kept=20)
    stats = record_batch(store, "batch-00000", raw=44, kept=30)  # re-filtered with another config
    assert (stats.batches, stats.raw, stats.kept) == (frozenset({"batch-00000", "batch-00001"}), 84, 50)
    assert len(store.list(POOL_MARKERS_PREFIX)) == 2


def test_pool_stats_are_one_listing_without_reading_any_file(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    for i in range(5):
        record_batch(store, f"batch-{i:05d}", raw=10, kept=i)

    def no_reads(key):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(store, "read_bytes", no_reads)
    assert read_pool_stats(store) == PoolStats(frozenset(f"batch-{i:05d}" for i in range(5)), 50, 10)


@pytest.fixture
def sensor_env(tmp_path):
    store_url = str(tmp_path / "store")
    resources = {
        "object_store": ObjectStoreResource(url=store_url),
        "sourcing": SimulatedSourcingResource(pool_threshold=40),
    }
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("fake_person_classifier"))
        yield instance, resources, Store(store_url)


def test_sensor_waits_for_the_fake_person_classifier(tmp_path):
    resources = {
        "object_store": ObjectStoreResource(url=str(tmp_path / "store")),
        "sourcing": SimulatedSourcingResource(pool_threshold=40),
    }
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
            result = pool_threshold_sensor(ctx)
        assert not result.run_requests and not result.dynamic_partitions_requests
        assert "fake_person_classifier is not materialized" in result.skip_reason.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization("fake_person_classifier"))
        with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
            assert [r.partition_key for r in pool_threshold_sensor(ctx).run_requests] == ["batch-00000"]


def test_sensor_under_threshold_adds_exactly_one_partition_and_one_run(sensor_env):
    instance, resources, store = sensor_env
    instance.add_dynamic_partitions("sourcing_batches", ["batch-00000"])
    record_batch(store, "batch-00000", raw=40, kept=12)
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = pool_threshold_sensor(ctx)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].partition_key == "batch-00001"
    (request,) = result.dynamic_partitions_requests
    assert request.partitions_def_name == "sourcing_batches" and list(request.partition_keys) == ["batch-00001"]


def test_sensor_on_an_empty_pool_starts_batch_zero(sensor_env):
    instance, resources, _ = sensor_env
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = pool_threshold_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == ["batch-00000"]


def test_sensor_above_threshold_skips_with_a_reason(sensor_env):
    instance, resources, store = sensor_env
    instance.add_dynamic_partitions("sourcing_batches", ["batch-00000", "batch-00001"])
    record_batch(store, "batch-00000", raw=40, kept=25)
    record_batch(store, "batch-00001", raw=40, kept=25)
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = pool_threshold_sensor(ctx)
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert "50 kept images" in result.skip_reason.skip_message and "threshold 40" in result.skip_reason.skip_message


def test_sensor_keeps_the_concurrency_in_flight_and_says_why_it_waits_at_it(sensor_env, monkeypatch):
    instance, resources, store = sensor_env
    monkeypatch.setenv("COSMICMAN_SOURCING_CONCURRENCY", "3")
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = pool_threshold_sensor(ctx)
    started = ["batch-00000", "batch-00001", "batch-00002"]
    assert [r.partition_key for r in result.run_requests] == [r.run_key for r in result.run_requests] == started
    (request,) = result.dynamic_partitions_requests
    assert list(request.partition_keys) == started
    instance.add_dynamic_partitions("sourcing_batches", started)
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        waiting = pool_threshold_sensor(ctx)
    assert not waiting.run_requests and not waiting.dynamic_partitions_requests
    assert "at the limit of 3 in flight" in waiting.skip_reason.skip_message
    record_batch(store, "batch-00001", raw=40, kept=12)  # one filtered: one more may start
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        assert [r.partition_key for r in pool_threshold_sensor(ctx).run_requests] == ["batch-00003"]
