"""The pool annotated and captioned batch by batch, through the real assets: a new batch costs its own rows
only (the figure bench/scale.py reads from the materializations), the humans' answers about the batch's images
are merged and no others are read, each partition has its own data version, bad input fails in one line."""

import json

import dagster as dg
import polars as pl
import pytest

from cosmicman.assets.annotation import annotation_rounds
from cosmicman.assets.captions import CAPTIONS_SCHEMA
from cosmicman.assets.common import content_digest, sourcing_batches
from cosmicman.assets.pool_annotation import ANNOTATIONS_SCHEMA, human_answers, kept_images
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store
from tests.support.annotated_pool import (
    FIRST,
    KEPT,
    SECOND,
    age_answer,
    annotate,
    annotated_pool,
    latest_storage_id,
    rows_since,
)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(sourcing_batches.name, [FIRST, SECOND])
        inst.add_dynamic_partitions(annotation_rounds.name, ["round-001"])
        yield inst


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two filtered batches in a store, an adopted round-1 annotator trained on round 1's human labels, and
    those labels: one answer about an image of each batch and one about an image of neither."""
    return annotated_pool(tmp_path_factory.mktemp("pool_annotation"))


def test_a_new_batch_annotates_and_captions_its_own_kept_rows_only(instance, pool):
    store = pool["store"]
    assert annotate(instance, store, FIRST).success
    assert not store.exists(table_key("annotations", SECOND))
    landed = latest_storage_id(instance)
    assert annotate(instance, store, SECOND).success
    # one new batch: its kept rows annotated and captioned once each, nothing of the first batch again
    annotated = rows_since(instance, "annotations", "images", landed)
    captioned = rows_since(instance, "captions", "captions", landed)
    assert annotated == captioned == KEPT[SECOND]
    assert (annotated + captioned) / (2 * KEPT[SECOND]) == 1.0
    assert instance.get_materialized_partitions(dg.AssetKey("annotations")) == {FIRST, SECOND}
    for batch in (FIRST, SECOND):
        ann = store.read_table(table_key("annotations", batch))
        cap = store.read_table(table_key("captions", batch))
        kept = sorted(pool["images"][batch][: KEPT[batch]])
        assert ann.columns == list(ANNOTATIONS_SCHEMA) and cap.columns == list(CAPTIONS_SCHEMA)
        assert ann["sha256"].to_list() == kept and sorted(cap["sha256"].to_list()) == kept
        assert set(ann["annotator_version"]) == {pool["version"]} and set(ann["label_rounds"]) == {"[1]"}


def test_each_batch_merges_the_human_answers_about_its_own_images(instance, pool):
    store = pool["store"]
    assert annotate(instance, store, FIRST).success
    ann = store.read_table(table_key("annotations", FIRST))
    labelled = pool["labelled"][FIRST]
    answered = ann.filter(pl.col("human_answers") > 0)
    assert answered["sha256"].to_list() == [labelled] and answered["human_answers"].to_list() == [1]
    assert json.loads(answered["attributes"][0])["age"] == age_answer()
    event = instance.get_latest_materialization_event(dg.AssetKey("annotations"))
    assert event.asset_materialization.metadata["images_with_human_answers"].value == 1
    # only the batch's images' answers are loaded: not the other batch's, not an image of neither
    answers = human_answers(store, (1,), pool["images"][FIRST])
    assert answers == {labelled: {"age": age_answer()}}
    assert human_answers(store, (1,), []) == {} and human_answers(store, (), pool["images"][FIRST]) == {}


def test_each_partition_has_the_data_version_of_its_own_rows(instance, pool):
    store = pool["store"]

    def data_version(batch: str) -> str:
        result = annotate(instance, store, batch)
        (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["annotations"]]
        return event.materialization.tags["dagster/data_version"]

    first = data_version(FIRST)
    ann = store.read_table(table_key("annotations", FIRST))
    assert first == content_digest(f"{s}|{a}" for s, a in ann.select("sha256", "attributes").iter_rows())
    assert data_version(FIRST) == first  # the same batch again: the same version, nothing downstream to redo
    assert data_version(SECOND) != first


def test_a_batch_not_filtered_yet_fails_in_one_line(pool):
    with pytest.raises(dg.Failure, match=r"batch-00009 has no filtered table .*filtered_images\[batch-00009\]"):
        kept_images(pool["store"], "batch-00009")
    assert kept_images(pool["store"], FIRST).height == KEPT[FIRST]


def test_a_pool_without_a_closed_round_is_not_annotated(tmp_path, instance):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(dg.Failure, match="no annotation round has finished"):
        annotate(instance, store, FIRST)
