"""The pool annotated and captioned batch by batch, through the real assets: a new batch costs its own rows
only (the figure bench/scale.py reads from the materializations), the humans' answers about the batch's images
are merged and no others are read, each partition has its own data version, bad input fails in one line."""

import json

import dagster as dg
import polars as pl
import pytest

from cosmicman.annotation.ledger import RoundLedger
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, close_round
from cosmicman.assets.annotation import LABEL_SCHEMA, annotation_rounds
from cosmicman.assets.captions import CAPTIONS_SCHEMA, captions
from cosmicman.assets.common import content_digest, sourcing_batches
from cosmicman.assets.pool_annotation import ANNOTATIONS_SCHEMA, build_annotations, human_answers, kept_images
from cosmicman.core.keys import annotator_key, table_key
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.pretraining import pretrained_probe
from cosmicman.simulation.world import SyntheticWorld

FIRST, SECOND = "batch-00000", "batch-00001"
# kept and rejected images of each batch: only the kept ones are annotated
KEPT = {FIRST: 4, SECOND: 3}
REJECTED = {FIRST: 2, SECOND: 1}


def _age_answer() -> str:
    (age,) = [c for c in load_protocol().categories if c.name == "age"]
    return age.answers[-1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two filtered batches in a store, an adopted round-1 annotator trained on round 1's human labels, and
    those labels: one answer about an image of each batch and one about an image of neither."""
    store = Store(str(tmp_path_factory.mktemp("pool_annotation") / "store"))
    world = SyntheticWorld(seed=21)
    images: dict[str, list[str]] = {}
    index = 0
    for batch in (FIRST, SECOND):
        decisions = ["kept"] * KEPT[batch] + ["too_small"] * REJECTED[batch]
        puts = [store.put_blob(world.sample(index + i, case="kept").image_bytes, "jpg") for i in range(len(decisions))]
        index += len(decisions)
        store.write_table(
            table_key("filtered_images", batch),
            pl.DataFrame(
                {"sha256": [p.sha256 for p in puts], "blob_key": [p.key for p in puts], "decision": decisions}
            ),
        )
        images[batch] = [p.sha256 for p in puts]
    pretrain = [world.sample(100 + i, case="kept") for i in range(8)]
    model = pretrained_probe([s.image_bytes for s in pretrain], [s.attributes for s in pretrain], seed=0)
    store.write_bytes(annotator_key(model.version), model.save())
    ledger = RoundLedger(store)
    ledger.write_base(model.version, annotator_key(model.version))
    before = {"a": 0.25, "b": 1.0}
    plan = RoundPlan(1, ledger.base(), before, tuple(before), (), 100, 0.5)
    ledger.write_plan(plan)
    after = AnnotatorInForce(model.version, annotator_key(model.version))
    result = close_round(plan, after, {"a": 0.75, "b": 1.0}, 3, HitlRules(threshold=0.5))
    assert result.adopted and result.in_force.label_rounds == (1,)
    ledger.write_result(result)
    labelled = {FIRST: images[FIRST][0], SECOND: images[SECOND][0], "elsewhere": "f" * 64}
    store.write_table(
        table_key("human_labels", "round-001"),
        pl.DataFrame(
            [
                {"image_sha256": sha, "category": "age", "answer": _age_answer(), "source": "human", "round": 1}
                for sha in labelled.values()
            ],
            schema=LABEL_SCHEMA,
        ),
    )
    return {"store": store, "images": images, "labelled": labelled, "version": model.version}


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(sourcing_batches.name, [FIRST, SECOND])
        inst.add_dynamic_partitions(annotation_rounds.name, ["round-001"])
        yield inst


def annotate(instance, store: Store, batch: str) -> dg.ExecuteInProcessResult:
    annotations = build_annotations()
    upstream = [
        dg.AssetSpec("filtered_images", partitions_def=sourcing_batches),
        dg.AssetSpec("annotator", partitions_def=annotation_rounds),
    ]
    return dg.materialize(
        [*upstream, annotations, captions],
        selection=[annotations, captions],
        partition_key=batch,
        instance=instance,
        resources={"object_store": ObjectStoreResource(url=store.url)},
    )


def rows_since(instance, asset: str, figure: str, after: int) -> int:
    """What bench/scale.py adds up: the rows an asset's materializations after storage id ``after`` wrote."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=after), limit=1000
    ).records
    return sum(int(r.asset_materialization.metadata[figure].value) for r in records)


def latest_storage_id(instance) -> int:
    records = instance.fetch_materializations(dg.AssetKey("captions"), limit=1).records
    return records[0].storage_id


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
    assert json.loads(answered["attributes"][0])["age"] == _age_answer()
    event = instance.get_latest_materialization_event(dg.AssetKey("annotations"))
    assert event.asset_materialization.metadata["images_with_human_answers"].value == 1
    # only the batch's images' answers are loaded: not the other batch's, not an image of neither
    answers = human_answers(store, (1,), pool["images"][FIRST])
    assert answers == {labelled: {"age": _age_answer()}}
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
