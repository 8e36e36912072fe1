"""Filtering a batch in shards: the plain core (chunks, shard keys, examples) and the graph-backed
``filtered_images`` asset (a batch cut into shards gives the table of one shard; per-environment step tags)."""

import json

import dagster as dg
import polars as pl
import pytest

from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.filtering import build_filtered_images, fake_person_classifier
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store
from cosmicman.environments.simulated_data import SimulatedFilterResource
from cosmicman.filtering.batch import (
    BASE_SCHEMA,
    concat_tables,
    filter_rows,
    pick_examples,
    plan_shards,
    write_filtered_shard,
)
from cosmicman.filtering.decisions import FilterResult
from cosmicman.resources.step_outputs import ObjectStoreStepIOManager
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.world import SyntheticWorld
from cosmicman.sourcing.pool import read_pool_stats

CASES = [
    "kept",
    "too_small",
    "corrupt",
    "fake_person",
    "kept",
    "low_quality",
    "no_person",
    "many_people",
    "small_face",
    "kept",
]


class ByteChain:
    """Decides by the image bytes ``b"<decision>:<n>"``; how far an image got decides which scores exist."""

    def process(self, data: bytes) -> FilterResult:
        decision, n = data.decode().split(":")
        scores = {"width": float(n)} if decision == "too_small" else {"width": float(n), "n_faces": 1.0}
        return FilterResult(decision, scores, "" if decision == "kept" else f"{decision} {n}")


def _rows(n: int) -> list[dict]:
    decisions = ["kept", "too_small", "no_person"]
    return [{"sha256": f"{i:064x}", "blob_key": f"{decisions[i % 3]}:{i}", "ext": "jpg"} for i in range(n)]


def test_chunked_rows_give_the_table_of_one_chunk_with_canonical_columns():
    rows = _rows(10)
    one = filter_rows(rows, str.encode, ByteChain(), batch="b", filter_config="{}", chunk_rows=100)
    chunked = filter_rows(rows, str.encode, ByteChain(), batch="b", filter_config="{}", chunk_rows=3)
    assert chunked.equals(one) and len(one) == 10
    assert one.columns == [*BASE_SCHEMA, "score_n_faces", "score_width"]
    assert one["decision"].to_list()[:3] == ["kept", "too_small", "no_person"]
    assert one.filter(pl.col("decision") == "too_small")["score_n_faces"].null_count() == 3
    # a chunk with only too_small rows lacks n_faces: the column is still Float64, null there
    only_small = filter_rows(
        [r for r in rows if r["blob_key"].startswith("too_small")],
        str.encode,
        ByteChain(),
        batch="b",
        filter_config="{}",
        chunk_rows=2,
    )
    mixed = concat_tables([only_small, one])
    assert mixed.schema["score_n_faces"] == pl.Float64 and len(mixed) == 13


def test_an_empty_batch_is_one_empty_shard_and_an_empty_table():
    raw = pl.DataFrame(schema={"sha256": pl.Utf8})
    (shard,) = plan_shards(raw, "batch-00000", "raw", 10, "{}", "f")
    assert shard.rows == 0
    assert filter_rows([], str.encode, ByteChain(), batch="b", filter_config="{}").schema == pl.Schema(BASE_SCHEMA)


def test_shard_keys_follow_rows_and_config_and_a_written_shard_is_skipped(tmp_path):
    store = Store(str(tmp_path))
    rows = _rows(7)
    for r in rows:  # the "image" bytes are the blob key itself (see ByteChain)
        store.write_bytes(r["blob_key"], r["blob_key"].encode())
    raw = pl.DataFrame(rows)
    store.write_table("raw.parquet", raw)
    shards = plan_shards(raw, "batch-00003", "raw.parquet", 3, "{}", "config-a")
    assert [(s.start, s.rows) for s in shards] == [(0, 3), (3, 3), (6, 1)]
    same = plan_shards(raw, "batch-00003", "raw.parquet", 3, "{}", "config-a")
    other = plan_shards(raw, "batch-00003", "raw.parquet", 3, "{}", "config-b")
    assert [s.key for s in shards] == [s.key for s in same]
    assert not {s.key for s in shards} & {s.key for s in other}

    assert write_filtered_shard(store, shards[1], ByteChain)
    assert store.read_table(shards[1].key)["sha256"].to_list() == raw["sha256"].to_list()[3:6]

    def no_chain():
        raise AssertionError("a written shard must not load the chain")

    assert not write_filtered_shard(store, shards[1], no_chain)


def test_examples_are_the_first_kept_and_the_first_of_each_reason():
    table = filter_rows(
        _rows(40) + [{"sha256": "c", "blob_key": "corrupt:1", "ext": "bin"}],
        str.encode,
        ByteChain(),
        batch="b",
        filter_config="{}",
    )
    examples = pick_examples(table)
    assert examples.kept == [f"kept:{i}" for i in range(0, 36, 3)]
    assert examples.rejected == {"too_small": "too_small:1", "no_person": "no_person:2"}


# --- the asset ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_store(tmp_path_factory):
    """One batch of 10 renders (every decision) and a small fake-person head, in a local store."""
    root = tmp_path_factory.mktemp("filter-batch")
    store_url = str(root / "store")
    resources = {
        "object_store": ObjectStoreResource(url=store_url),
        "filters": SimulatedFilterResource(fake_head_train_size=40),
    }
    assert dg.materialize([fake_person_classifier], resources=resources).success
    store = Store(store_url)
    world = SyntheticWorld(seed=11)
    rows = []
    for i, case in enumerate(CASES):
        put = store.put_blob(world.sample(i, case).image_bytes, "jpg")
        rows.append({"sha256": put.sha256, "blob_key": put.key, "ext": "jpg", "source": "synthetic"})
    store.write_table(table_key("raw_images", "batch-00000"), pl.DataFrame(rows))
    return store, resources


def _materialize(resources: dict, instance: dg.DagsterInstance, shard_rows: int | None = None):
    config = {"ops": {"filtered_images": {"ops": {"plan_filter_shards": {"config": {"shard_rows": shard_rows}}}}}}
    raw = dg.AssetSpec("raw_images", partitions_def=sourcing_batches)
    result = dg.materialize(
        [raw, dg.AssetSpec("fake_person_classifier"), build_filtered_images()],
        selection=["filtered_images"],
        resources=resources,
        instance=instance,
        partition_key="batch-00000",
        run_config=config if shard_rows else None,
    )
    (event,) = result.get_asset_materialization_events()
    return result, {k: v.value for k, v in event.materialization.metadata.items()}, event.materialization.tags


def test_a_batch_cut_into_shards_gives_the_table_of_one_shard_and_reruns_skip_them(batch_store):
    store, resources = batch_store
    # op outputs through the object store, as on Kubernetes (one pod per step)
    sharded_resources = {**resources, "io_manager": ObjectStoreStepIOManager(object_store=resources["object_store"])}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sourcing_batches", ["batch-00000"])
        _, one_meta, one_tags = _materialize(resources, instance)
        one = store.read_table(table_key("filtered_images", "batch-00000"))
        _, meta, tags = _materialize(sharded_resources, instance, shard_rows=4)
        sharded = store.read_table(table_key("filtered_images", "batch-00000"))
        again, _, again_tags = _materialize(sharded_resources, instance, shard_rows=4)
        skipped = [r.user_message for r in instance.all_logs(again.run_id) if "already filtered" in r.user_message]
    assert (one_meta["shards"], meta["shards"]) == (1, 3)
    assert sharded.equals(one) and len(one) == len(CASES)
    assert set(one["decision"]) >= {"kept", "too_small", "corrupt", "fake_person"}
    assert one["sha256"].to_list() == store.read_table(table_key("raw_images", "batch-00000"))["sha256"].to_list()
    assert {k: meta[k] for k in ("raw", "kept", "rejected", "decisions")} == {
        k: one_meta[k] for k in ("raw", "kept", "rejected", "decisions")
    }
    assert tags["dagster/data_version"] == one_tags["dagster/data_version"] == again_tags["dagster/data_version"]
    assert meta["pool_kept_total"] == meta["kept"] == read_pool_stats(store).kept
    assert "data:image/jpeg;base64" in meta["kept_sample"] and "corrupt" not in meta["rejected_examples"]
    assert json.loads(one["filter_config"][0]) == resources["filters"].chain_settings()
    assert len(store.list("shards/filtered_images/batch-00000")) == 4  # 1 + 3 shard tables
    assert store.list("dagster/step-outputs")
    assert len(skipped) == 3 and store.read_table(table_key("filtered_images", "batch-00000")).equals(one)


# --- the environments' step tags -------------------------------------------------------------------------


def _filter_step_tags(env: str) -> tuple[dg.Definitions, dict]:
    from cosmicman.definitions import definitions_for

    defs = definitions_for(env)
    node = defs.resolve_assets_def("filtered_images").node_def.node_named("filter_shard")
    return defs, node.tags


def test_k8s_filter_and_annotation_steps_ask_for_a_gpu_and_local_ones_do_not(monkeypatch):
    from tests.support.deployed_env import K8S_REQUIRED

    for name, value in K8S_REQUIRED.items():
        monkeypatch.setenv(name, value)
    from dagster_k8s.job import get_user_defined_k8s_config

    from cosmicman.definitions import definitions_for

    monkeypatch.setenv("COSMICMAN_FILTER_GPUS", "2")
    monkeypatch.setenv("COSMICMAN_ANNOTATION_GPUS", "3")
    k8s_defs, k8s_tags = _filter_step_tags("k8s")
    user_config = get_user_defined_k8s_config(k8s_tags)  # how the k8s executor reads a step's tags
    assert user_config.container_config["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert k8s_defs.resolve_job_def("pool_job").executor_def.name == "k8s"
    assert isinstance(k8s_defs.resources["io_manager"], ObjectStoreStepIOManager)
    # the local environment runs a run's steps in its one process (a local batch is one shard); s3 keeps Dagster's
    for env, executor in (("local", "in_process"), ("s3", "multi_or_in_process_executor")):
        defs, tags = _filter_step_tags(env)
        assert "dagster-k8s/config" not in tags
        assert defs.resolve_job_def("pool_job").executor_def.name == executor
    # each batch's annotation step runs the VLM: its pod asks for COSMICMAN_ANNOTATION_GPUS
    annotation_tags = k8s_defs.resolve_assets_def("annotations").op.tags
    assert get_user_defined_k8s_config(annotation_tags).container_config["resources"]["limits"] == {
        "nvidia.com/gpu": "3"
    }
    assert "dagster-k8s/config" not in definitions_for("local").resolve_assets_def("annotations").op.tags
    other_steps = k8s_defs.resolve_assets_def("filtered_images").node_def
    assert all(
        "dagster-k8s/config" not in other_steps.node_named(n).tags
        for n in ("plan_filter_shards", "merge_filter_shards")
    )
