"""The labelling loop's bookkeeping: the round ledger, the round sensor, merging human answers."""

import dagster as dg
import pytest

from cosmicman.annotation.accuracy import merge_human_answers
from cosmicman.annotation.ledger import RoundLedger, round_id, round_number
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, RoundResult, close_round
from cosmicman.core.keys import BASE_ANNOTATOR_KEY
from cosmicman.core.store import Store


def _result(ledger, n, *, gain, asked=100, full=2000, max_rounds=3) -> RoundResult:
    """Round ``n`` planned from the annotator in force and closed by the rules, with ``gain`` on I_e."""
    acc_before = {"a": 0.5, "b": 0.5 + 0.1 * (n - 1)}
    plan = RoundPlan(n, ledger.in_force(before_round=n), acc_before, ("a", "b"), (), full, 0.85)
    after = AnnotatorInForce(f"probe-r{n}", f"models/annotator/probe-r{n}.zip")
    accuracy_after = {k: v + gain for k, v in acc_before.items()}
    return close_round(plan, after, accuracy_after, asked, HitlRules(max_rounds=max_rounds))


def test_round_ids_round_trip_and_reject_junk():
    assert round_id(7) == "round-007" and round_number("round-012") == 12
    with pytest.raises(ValueError):
        round_number("round-1")
    with pytest.raises(ValueError):
        round_id(0)


def test_ledger_walks_the_loop(tmp_path):
    store = Store(str(tmp_path / "store"))
    ledger = RoundLedger(store)
    with pytest.raises(LookupError, match="base_annotator"):
        ledger.in_force()
    store.write_json(BASE_ANNOTATOR_KEY, {"version": "probe-r0", "key": "models/annotator/probe-r0.zip"})
    assert ledger.in_force().version == "probe-r0" and ledger.in_force().round == 0
    assert ledger.next_step().round == 1
    first = _result(ledger, 1, gain=0.2)
    ledger.write_plan(first.plan)
    step = ledger.next_step()
    assert step.round is None and not step.stopped and "waiting" in step.reason
    ledger.write_result(first)
    assert ledger.result(1) == first and ledger.plan(1) == first.plan  # typed records round-trip
    assert ledger.next_step().round == 2
    assert ledger.in_force().version == "probe-r1" and ledger.in_force(before_round=1).version == "probe-r0"
    second = _result(ledger, 2, gain=-0.01, asked=50)
    assert (second.stop, second.stop_reason, second.adopted) == (True, "no gain", False)
    ledger.write_plan(second.plan)
    ledger.write_result(second)
    step = ledger.next_step()
    assert step.round is None and step.stopped and "no gain" in step.reason
    curve = ledger.curve()
    assert [p["round"] for p in curve] == [0, 1, 2]
    assert [p["labels_asked"] for p in curve] == [0, 100, 150]
    assert curve[1]["mean_accuracy"] == pytest.approx(0.7)
    assert curve[2]["mean_accuracy"] == pytest.approx(0.55)  # not adopted: the accuracy before it stands
    assert curve[2]["manual_share"] == pytest.approx(150 / 2000)


def test_round_sensor_opens_rounds_then_annotates_each_batch_once(tmp_path):
    from cosmicman.assets.common import content_digest
    from cosmicman.environments.simulated_data import SimulatedSourcingResource
    from cosmicman.jobs import hitl_round_sensor
    from cosmicman.resources.storage import ObjectStoreResource
    from cosmicman.sourcing.pool import record_batch

    store = Store(str(tmp_path / "store"))
    resources = {
        "object_store": ObjectStoreResource(url=store.url),
        "sourcing": SimulatedSourcingResource(pool_threshold=40),
    }
    ledger = RoundLedger(store)
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None = None):
            with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
                return hitl_round_sensor(ctx)

        # the loop waits for the pool: at its threshold, with every batch filtered
        assert "waiting for the pool: 0 of 40 kept images" in tick().skip_reason.skip_message
        instance.add_dynamic_partitions("sourcing_batches", ["batch-00000", "batch-00001"])
        record_batch(store, "batch-00000", raw=40, kept=30)
        assert "1 batch(es) not filtered yet" in tick().skip_reason.skip_message
        record_batch(store, "batch-00001", raw=40, kept=9)
        assert "39 of 40 kept images" in tick().skip_reason.skip_message
        record_batch(store, "batch-00001", raw=40, kept=10)
        assert "base_annotator" in tick().skip_reason.skip_message
        store.write_json(BASE_ANNOTATOR_KEY, {"version": "probe-r0", "key": "k"})
        result = tick()
        (req,) = result.run_requests
        assert (req.partition_key, req.job_name) == ("round-001", "annotation_round_job")
        assert list(result.dynamic_partitions_requests[0].partition_keys) == ["round-001"]
        first = _result(ledger, 1, gain=0.1, max_rounds=2)
        ledger.write_plan(first.plan)
        assert "waiting for its labels" in tick().skip_reason.skip_message
        ledger.write_result(first)
        assert tick().run_requests[0].partition_key == "round-002"
        second = _result(ledger, 2, gain=0.1, max_rounds=2)  # gains, but max_rounds is 2
        assert second.stop_reason == "max rounds (2)"
        ledger.write_plan(second.plan)
        ledger.write_result(second)
        # one run per batch, keyed by annotator version and batch (Dagster launches a run key once)
        first_ask = tick()
        assert [(r.job_name, r.partition_key, r.run_key) for r in first_ask.run_requests] == [
            ("annotations_job", "batch-00000", "annotate-probe-r2-batch-00000"),
            ("annotations_job", "batch-00001", "annotate-probe-r2-batch-00001"),
        ]
        assert first_ask.cursor == f"probe-r2-{content_digest(['batch-00000', 'batch-00001'])}"
        # with nothing new, the next tick asks for nothing
        again = tick(first_ask.cursor)
        assert (
            not again.run_requests
            and "2 batch(es) was asked to be annotated by probe-r2" in again.skip_reason.skip_message
        )
        # a new batch: one new run key, the others are the ones already launched
        instance.add_dynamic_partitions("sourcing_batches", ["batch-00002"])
        record_batch(store, "batch-00002", raw=40, kept=12)
        grown = tick(first_ask.cursor)
        new_keys = {r.run_key for r in grown.run_requests} - {r.run_key for r in first_ask.run_requests}
        assert new_keys == {"annotate-probe-r2-batch-00002"} and len(grown.run_requests) == 3


def test_merge_human_answers_implies_parents_and_drops_orphans():
    pred = {"hat_exists": "no", "top_exists": "yes", "top_color": "red", "gender": "man"}
    # a human saw the hat (answered its colour) and said there is no top
    merged = merge_human_answers(pred, {"hat_color": "blue", "top_exists": "no"})
    assert merged["hat_exists"] == "yes" and merged["hat_color"] == "blue"
    assert merged["top_exists"] == "no" and "top_color" not in merged
    assert merged["gender"] == "man"
    # an explicit human "no" beats the parent a detail would imply
    assert "hat_color" not in merge_human_answers(pred, {"hat_exists": "no", "hat_color": "blue"})


def test_detail_answers_imply_their_parents_for_free():
    from cosmicman.annotation.accuracy import implied_labels
    from cosmicman.annotation.items import LabelRecord

    asked = {"a": ["hat_color", "skirt_color"], "b": ["hat_color"], "c": ["hat_color", "hat_exists"]}
    answers = [LabelRecord("a", "hat_color", "red", "human", 3), LabelRecord("c", "hat_exists", "no", "human", 3)]
    got = {
        (lab.image_sha256, lab.category, lab.answer, lab.source, lab.round)
        for lab in implied_labels(asked, answers, round=3)
    }
    # a: a hat colour was given (hat), no skirt colour (no skirt); b: no hat; c: the human said it
    assert got == {
        ("a", "hat_exists", "yes", "implied", 3),
        ("a", "skirt_exists", "no", "implied", 3),
        ("b", "hat_exists", "no", "implied", 3),
    }


def test_synthetic_pool_knows_its_truth_and_renders_only_what_is_read():
    from cosmicman.simulation.people import synthetic_pool
    from cosmicman.simulation.world import SyntheticWorld

    pool = synthetic_pool(seed=4, count=50)
    world = SyntheticWorld(seed=4)
    assert [it.pool_id for it in pool[:2]] == ["synth-4-0", "synth-4-1"]
    assert all(it._load is not None for it in pool)  # nothing rendered yet
    sample = world.sample(7, case="kept")
    assert pool[7].attributes == sample.attributes == world.attributes(7)
    assert pool[7].image.size == (sample.width, sample.height) and pool[7]._load is None
    assert sum(it._load is None for it in pool) == 1
