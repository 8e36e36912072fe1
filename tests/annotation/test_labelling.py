import json
import os

from cosmicman.annotation.labelling import FileInbox, LabelTask
from cosmicman.core.store import Store
from cosmicman.simulation.oracle import SimulatedOracle
from cosmicman.simulation.oracle_inbox import SimulatedOracleInbox


def _store():
    return Store(f"memory://lab-{os.urandom(4).hex()}")


def test_inbox_round_waits_for_human_answers_then_collects_only_asked_categories():
    store = _store()
    inbox = FileInbox(store)
    tasks = [
        LabelTask("t1", "sha1", "memory://x/1.jpg", ("hat_color", "gender")),
        LabelTask("t2", "sha2", "memory://x/2.jpg", ("hat_color", "gender")),
    ]
    inbox.submit("round-001", 1, tasks)
    status = inbox.open_round_status()
    assert (status.round_id, status.tasks, status.pending) == ("round-001", 2, 2)
    store.write_bytes(
        "labelling/round-001/answers/alice.jsonl",
        (
            json.dumps({"task_id": "t1", "image_sha256": "sha1", "answers": {"gender": "woman", "age": "adult"}}) + "\n"
        ).encode(),
    )
    labels, pending = inbox.collect("round-001", 1)
    assert pending == 1
    got = [(lab.image_sha256, lab.category, lab.answer, lab.source) for lab in labels]
    assert got == [("sha1", "gender", "woman", "human")]
    store.write_bytes(
        "labelling/round-001/answers/bob.jsonl",
        (json.dumps({"task_id": "t2", "image_sha256": "sha2", "answers": {"gender": "man"}}) + "\n").encode(),
    )
    assert inbox.open_round_status().pending == 0
    inbox.close_round("round-001")
    assert inbox.open_round_status() is None


def test_oracle_inbox_answers_at_once_with_its_error_rate():
    store = _store()
    truth = {f"sha{i}": {"gender": "woman", "hat_exists": "no"} for i in range(400)}
    inbox = SimulatedOracleInbox(store, truth, SimulatedOracle(error_rate=0.1, seed=3))
    inbox.submit("round-001", 1, [LabelTask(f"t{i}", f"sha{i}", "", ("gender", "hat_color")) for i in range(400)])
    labels, pending = inbox.collect("round-001", 1)
    assert pending == 0
    # hat_color does not apply (no hat), so only gender is answered
    assert {lab.category for lab in labels} == {"gender"} and len(labels) == 400
    wrong = sum(lab.answer != "woman" for lab in labels) / len(labels)
    assert 0.06 < wrong < 0.14


def test_labels_arrived_sensor_waits_then_requests_one_run(tmp_path):
    import dagster as dg

    from cosmicman.jobs import labels_arrived_sensor
    from cosmicman.resources.annotation import LabellingResource
    from cosmicman.resources.storage import ObjectStoreResource

    resources = {
        "object_store": ObjectStoreResource(url=str(tmp_path / "store")),
        "labelling": LabellingResource(backend_kind="inbox"),
    }
    store = Store(str(tmp_path / "store"))
    with dg.instance_for_test() as instance:

        def evaluate():
            with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
                return labels_arrived_sensor(ctx)

        assert "no labelling round" in evaluate().skip_reason.skip_message
        FileInbox(store).submit("round-001", 1, [LabelTask("t1", "sha1", "", ("gender",))])
        assert "1 of 1 tasks still unlabelled" in evaluate().skip_reason.skip_message
        store.write_bytes(
            "labelling/round-001/answers/a.jsonl",
            (json.dumps({"task_id": "t1", "image_sha256": "sha1", "answers": {"gender": "man"}}) + "\n").encode(),
        )
        (request,) = evaluate().run_requests
        assert request.run_key.startswith("labels-round-001-") and request.partition_key == "round-001"
