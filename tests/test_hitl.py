"""The labelling loop's bookkeeping: the round ledger, the round sensor, merging human answers."""
import dagster as dg
import pytest

from cosmicman.annotation.annotation import merge_human_answers
from cosmicman.annotation.ledger import BASE_ANNOTATOR_KEY, RoundLedger, round_id, round_number
from cosmicman.core.store import Store


def _result(n, *, gain, stop, reason="continue", adopted=True, asked=100, full=2000):
    acc_before = {"a": 0.5, "b": 0.5 + 0.1 * (n - 1)}
    return {"accuracy_before": acc_before, "accuracy_after": {k: v + gain for k, v in acc_before.items()},
            "gain": gain, "labels_asked": asked, "full_manual_labels": full, "adopted": adopted,
            "annotator_in_force": f"probe-r{n}" if adopted else f"probe-r{n - 1}",
            "annotator_key": f"models/annotator/probe-r{n}.zip", "annotator_round": n,
            "label_rounds": list(range(1, n + 1)), "stop": stop, "stop_reason": reason}


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
    assert ledger.next_step(max_rounds=3).round == 1
    ledger.write_plan(1, {"sampled": []})
    step = ledger.next_step(max_rounds=3)
    assert step.round is None and not step.stopped and "waiting" in step.reason
    ledger.write_result(1, _result(1, gain=0.2, stop=False))
    assert ledger.next_step(max_rounds=3).round == 2
    assert ledger.in_force().version == "probe-r1" and ledger.in_force(before_round=1).version == "probe-r0"
    ledger.write_plan(2, {"sampled": []})
    ledger.write_result(2, _result(2, gain=-0.01, stop=True, reason="no gain", adopted=False, asked=50))
    step = ledger.next_step(max_rounds=3)
    assert step.round is None and step.stopped and "no gain" in step.reason
    curve = ledger.curve()
    assert [p["round"] for p in curve] == [0, 1, 2]
    assert [p["labels_asked"] for p in curve] == [0, 100, 150]
    assert curve[1]["mean_accuracy"] == pytest.approx(0.7)
    assert curve[2]["mean_accuracy"] == pytest.approx(0.55)  # not adopted: the accuracy before it stands
    assert curve[2]["manual_share"] == pytest.approx(150 / 2000)


def test_round_sensor_opens_rounds_then_annotates_once(tmp_path):
    from cosmicman.jobs import hitl_round_sensor
    from cosmicman.resources.annotation import AnnotatorResource
    from cosmicman.resources.storage import ObjectStoreResource

    store = Store(str(tmp_path / "store"))
    resources = {"object_store": ObjectStoreResource(url=store.url), "annotation": AnnotatorResource(max_rounds=2)}
    ledger = RoundLedger(store)
    with dg.instance_for_test() as instance:
        def tick():
            with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
                return hitl_round_sensor(ctx)

        assert "base_annotator" in tick().skip_reason.skip_message
        store.write_json(BASE_ANNOTATOR_KEY, {"version": "probe-r0", "key": "k"})
        result = tick()
        (req,) = result.run_requests
        assert (req.partition_key, req.job_name) == ("round-001", "annotation_round_job")
        assert list(result.dynamic_partitions_requests[0].partition_keys) == ["round-001"]
        ledger.write_plan(1, {})
        assert "waiting for its labels" in tick().skip_reason.skip_message
        ledger.write_result(1, _result(1, gain=0.1, stop=False))
        assert tick().run_requests[0].partition_key == "round-002"
        ledger.write_plan(2, {})
        ledger.write_result(2, _result(2, gain=0.1, stop=False))  # gains, but max_rounds is 2
        (req,) = tick().run_requests
        assert req.job_name == "annotations_job" and req.run_key == "annotate-probe-r2"


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
    from cosmicman.annotation.annotation import LabelRecord, implied_labels

    asked = {"a": ["hat_color", "skirt_color"], "b": ["hat_color"], "c": ["hat_color", "hat_exists"]}
    answers = [LabelRecord("a", "hat_color", "red", "human", 3),
               LabelRecord("c", "hat_exists", "no", "human", 3)]
    got = {(lab.image_sha256, lab.category, lab.answer, lab.source, lab.round)
           for lab in implied_labels(asked, answers, round=3)}
    # a: a hat colour was given (hat), no skirt colour (no skirt); b: no hat; c: the human said it
    assert got == {("a", "hat_exists", "yes", "implied", 3), ("a", "skirt_exists", "no", "implied", 3),
                   ("b", "hat_exists", "no", "implied", 3)}


def test_synthetic_pool_knows_its_truth_and_renders_only_what_is_read():
    from cosmicman.annotation.ledger import synthetic_pool
    from cosmicman.simulation.world import SyntheticWorld

    pool = synthetic_pool(seed=4, count=50)
    world = SyntheticWorld(seed=4)
    assert [it.pool_id for it in pool[:2]] == ["synth-4-0", "synth-4-1"]
    assert all(it._load is not None for it in pool)  # nothing rendered yet
    sample = world.sample(7, case="kept")
    assert pool[7].attributes == sample.attributes == world.attributes(7)
    assert pool[7].image.size == (sample.width, sample.height) and pool[7]._load is None
    assert sum(it._load is None for it in pool) == 1
