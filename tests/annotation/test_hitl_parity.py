"""One HITL round through the Dagster assets and through the bench's in-memory loop decides the same.

Both paths call cosmicman.annotation.rounds; this pins that neither grows a rule of its own.
"""

import dagster as dg
import polars as pl
import pytest

from cosmicman.annotation.items import AnnotationItem
from cosmicman.annotation.ledger import RoundLedger
from cosmicman.annotation.loop import LoopState, run_hitl_round
from cosmicman.assets.annotation import (
    annotation_rounds,
    annotator,
    base_annotator,
    eval_set,
    human_labels,
    labelling_tasks,
)
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource, SimulatedLabellingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.oracle import SimulatedOracle
from cosmicman.simulation.truth import store_truth
from cosmicman.simulation.world import SyntheticWorld

POOL_SIZE = 16


def _kept_pool(store: Store) -> list[AnnotationItem]:
    """A small kept pool in the store (filtered table + synthetic truth), and the same pool in memory."""
    world = SyntheticWorld(seed=77)
    samples = [world.sample(i, case="kept") for i in range(POOL_SIZE)]
    puts = [store.put_blob(s.image_bytes, "jpg") for s in samples]
    store.write_table(
        table_key("filtered_images", "batch-0001"),
        pl.DataFrame(
            {"sha256": [p.sha256 for p in puts], "blob_key": [p.key for p in puts], "decision": ["kept"] * len(puts)}
        ),
    )
    store_truth("batch-0001", [(s, p.sha256) for s, p in zip(samples, puts)], store)
    return [AnnotationItem.from_bytes(s.image_bytes, s.attributes) for s in samples]


@pytest.mark.slow  # the assets against the bench's loop end to end; the rules' edges are in test_hitl_rules.py
def test_assets_and_bench_loop_decide_round_one_identically(tmp_path):
    store = Store(str(tmp_path / "store"))
    pool = _kept_pool(store)
    annotation = SimulatedAnnotatorResource(eval_size=12, pretrain_size=24, round_sample_size=6)
    labelling = SimulatedLabellingResource()
    resources = {"object_store": ObjectStoreResource(url=store.url), "annotation": annotation, "labelling": labelling}
    with dg.instance_for_test() as instance:
        assert dg.materialize([eval_set, base_annotator], resources=resources, instance=instance).success
        instance.add_dynamic_partitions(annotation_rounds.name, ["round-001"])
        assert dg.materialize(
            [labelling_tasks, human_labels, annotator],
            resources=resources,
            instance=instance,
            partition_key="round-001",
            selection=[labelling_tasks, human_labels, annotator],
        ).success
    via_assets = RoundLedger(store).result(1)
    assert via_assets is not None
    human_via_assets = store.read_table(table_key("human_labels", "round-001"))

    base, _ = annotation.base_annotator()
    assert base.version == RoundLedger(store).base().version
    eval_items = [AnnotationItem.from_bytes(e.image_bytes, e.attributes) for e in annotation.eval_images()]
    oracle = SimulatedOracle(labelling.oracle_error_rate, labelling.oracle_seed)
    model, via_loop, labels = run_hitl_round(LoopState(base), 1, eval_items, pool, oracle, annotation.rules())

    assert via_loop.categories_sent == via_assets.categories_sent and len(via_loop.categories_sent) > 0
    assert via_loop.sampled_ids == via_assets.sampled_ids and len(via_loop.sampled_ids) == 6
    human = [(lab.image_sha256, lab.category, lab.answer) for lab in labels if lab.source != "implied"]
    assert human == list(human_via_assets.select("image_sha256", "category", "answer").iter_rows())
    assert via_loop.labels_asked == via_assets.labels_asked == len(human) > 0
    assert via_loop.full_manual_labels == via_assets.full_manual_labels
    assert (via_loop.adopted, via_loop.stop, via_loop.stop_reason) == (
        via_assets.adopted,
        via_assets.stop,
        via_assets.stop_reason,
    )
    assert dict(via_loop.accuracy_before) == dict(via_assets.accuracy_before)
    assert dict(via_loop.accuracy_after) == dict(via_assets.accuracy_after)
    assert model.version == via_loop.annotator_after == via_assets.annotator_after
