"""The Label Studio labelling backend: unit tests on a hand-written export, then a real server.

The server test starts ``label-studio`` (its own virtualenv, ``.ci/label_studio_venv.sh``) on 127.0.0.1,
submits a round through our backend, answers it through the SDK as an annotator would, collects the
answers as canonical labels and fine-tunes the annotator on them.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.label_studio import (
    LabelStudioBackend,
    LabelStudioError,
    choice_result,
    round_protocol,
    task_payload,
)
from cosmicman.annotation.label_studio_changes import ChangeCursor
from cosmicman.annotation.label_studio_export import labels_from_export
from cosmicman.annotation.label_studio_images import S3Access, s3_prefixes
from cosmicman.annotation.labelling import LabelTask
from cosmicman.annotation.probe_annotator import ProbeAnnotator
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from tests.support.label_studio_server import label_studio_server

# label-studio-sdk 2.0's own pydantic models still use pydantic-1 style config and validators
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecatedSince20")


def _hierarchy(protocol=None):
    """(parent, child, value, plain): ``child`` is asked only when ``parent == value``; ``plain`` has no
    condition. Picked from the protocol, not by name."""
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    for child in protocol.categories:
        if len(child.requires) == 1:
            ((parent, value),) = child.requires.items()
            if not by_name[parent].requires and len(by_name[parent].answers) >= 2:
                plain = next(c.name for c in protocol.categories if not c.requires and c.name != parent)
                return parent, child.name, value, plain
    raise AssertionError("the protocol has no existence -> detail pair")


def _other(answers, answer):
    return next(a for a in answers if a != answer)


# --------------------------------------------------------------------------------------------------
# Without a server
# --------------------------------------------------------------------------------------------------
def test_export_to_labels_latest_answer_asked_categories_vocabulary_and_hierarchy():
    protocol = load_protocol()
    by_name = protocol.by_name
    parent, child, value, plain = _hierarchy(protocol)
    not_value = _other(by_name[parent].answers, value)
    child_a, child_b = by_name[child].answers[:2]
    plain_a, plain_b = by_name[plain].answers[:2]
    extra = next(c.name for c in protocol.categories if c.name not in (parent, child, plain) and not c.requires)
    asked = (parent, child, plain)
    tasks = [LabelTask(f"t{i}", f"sha{i}", f"https://img/{i}.jpg", asked) for i in range(6)]
    tasks[4] = LabelTask("t4", "sha4", "https://img/4.jpg", (parent, child))  # plain not asked here

    def ann(id_, when, *pairs, cancelled=False):
        return {
            "id": id_,
            "was_cancelled": cancelled,
            "created_at": when,
            "updated_at": when,
            "result": [choice_result(c, a) for c, a in pairs],
        }

    export = [
        # t0: answered twice; the later one (by updated_at, not by list order) wins
        {
            "id": 1,
            "data": {"task_id": "t0"},
            "annotations": [
                ann(11, "2026-01-02T10:00:00Z", (parent, value), (child, child_b), (plain, plain_b)),
                ann(10, "2026-01-01T10:00:00Z", (parent, value), (child, child_a), (plain, plain_a)),
            ],
        },
        # t1: only skipped -> not answered
        {"id": 2, "data": {"task_id": "t1"}, "annotations": [ann(12, "2026-01-01T10:00:00Z", cancelled=True)]},
        # t2: the parent says the child does not apply -> the child's answer is dropped; an answer
        # outside the vocabulary and a two-choice answer are ignored
        {
            "id": 3,
            "data": {"task_id": "t2"},
            "annotations": [
                ann(13, "2026-01-01T10:00:00Z", (parent, not_value), (child, child_a), (plain, "not-an-answer"))
            ],
        },
        # t3: a skip after a real answer does not erase the answer
        {
            "id": 4,
            "data": {"task_id": "t3"},
            "annotations": [
                ann(14, "2026-01-01T10:00:00Z", (parent, value), (plain, plain_a)),
                ann(15, "2026-01-03T10:00:00Z", cancelled=True),
            ],
        },
        # t4: answers a category it did not ask (plain) and one no task asked (extra): both ignored
        {
            "id": 5,
            "data": {"task_id": "t4"},
            "annotations": [
                ann(
                    16,
                    "2026-01-01T10:00:00Z",
                    (parent, value),
                    (child, child_a),
                    (plain, plain_a),
                    (extra, by_name[extra].answers[0]),
                )
            ],
        },
        # not one of our tasks
        {
            "id": 6,
            "data": {"task_id": "someone-else"},
            "annotations": [ann(17, "2026-01-01T10:00:00Z", (parent, value))],
        },
        # t5: no annotation at all
        {"id": 7, "data": {"task_id": "t5"}, "annotations": []},
    ]
    export[2]["annotations"][0]["result"].append(
        {"from_name": plain, "to_name": "image", "type": "choices", "value": {"choices": [plain_a, plain_b]}}
    )
    export = json.loads(json.dumps(export))  # exactly what a JSON export parses to
    labels, answered = labels_from_export(export, 3, tasks, protocol)

    def H(sha, cat, a):
        return LabelRecord(sha, cat, a, "human", 3)

    assert labels == [
        H("sha0", parent, value),
        H("sha0", child, child_b),
        H("sha0", plain, plain_b),
        H("sha2", parent, not_value),
        H("sha3", parent, value),
        H("sha3", plain, plain_a),
        H("sha4", parent, value),
        H("sha4", child, child_a),
    ]
    assert sorted(answered) == ["t0", "t2", "t3", "t4"]
    assert answered["t0"]["id"] == 11 and answered["t3"]["id"] == 14

    # without our task list, the task data says what was asked
    data_export = [{**row, "data": {**row["data"], "image_sha256": "shaX", "categories": [parent]}} for row in export]
    labels, _ = labels_from_export(data_export, 1, None, protocol)
    assert {(lab.category, lab.round, lab.source) for lab in labels} == {(parent, 1, "human")}


def test_task_payload_and_round_protocol():
    protocol = load_protocol()
    parent, child, value, plain = _hierarchy(protocol)
    sub = round_protocol([child, plain], protocol)
    assert [c.name for c in sub.categories] == [c.name for c in protocol.categories if c.name in (parent, child, plain)]
    with pytest.raises(ValueError, match="not in the labelling protocol"):
        round_protocol(["no-such-category"], protocol)
    task = LabelTask(
        "t1",
        "abc",
        "https://x/1.jpg",
        (child, plain),
        predicted={child: protocol.by_name[child].answers[0], parent: value, plain: "not-an-answer"},
        model_version="probe-r0-123",
    )
    p = task_payload(task, "https://x/1.jpg", "round-007", 7, sub)
    assert p["data"] == {
        "image": "https://x/1.jpg",
        "task_id": "t1",
        "image_sha256": "abc",
        "categories": [child, plain],
        "round_id": "round-007",
        "round": 7,
    }
    (pred,) = p["predictions"]
    assert pred["model_version"] == "probe-r0-123"
    assert sorted(r["from_name"] for r in pred["result"]) == sorted([child, parent])  # the bad answer is left out
    assert "predictions" not in task_payload(LabelTask("t2", "d", "u", (plain,)), "u", "r", 1, sub)


def test_image_urls_http_local_and_s3_links_label_studio_resolves(tmp_path):
    root = tmp_path / "files"
    store = Store(str(root / "store"))
    key = store.put_blob(b"jpeg bytes", "jpg").key
    b = LabelStudioBackend(store, "http://127.0.0.1:1", "token", local_files_root=str(root))
    assert b.image_url("https://cdn.example/a.jpg?x=1") == "https://cdn.example/a.jpg?x=1"
    assert b.image_url(store.uri(key)) == f"/data/local-files/?d=store/{key}"
    assert b.image_url(store.path(key)) == f"/data/local-files/?d=store/{key}"
    with pytest.raises(ValueError, match="outside the Label Studio local files root"):
        b.image_url(str(tmp_path / "elsewhere.jpg"))
    with pytest.raises(ValueError, match="local_files_root"):
        LabelStudioBackend(store, "http://127.0.0.1:1", "t").image_url(store.uri(key))
    for uri in ("memory://bucket/a.jpg", "s3a://people/a.jpg", "gs://people/a.jpg"):
        with pytest.raises(ValueError, match="use an s3:// or local store"):
            b.image_url(uri)
    # s3: the link itself, never a URL with an expiry: Label Studio's S3 storage resolves it at view time
    uri = "s3://people/store/blobs/ab/abc.jpg"
    assert b.image_url(uri) == uri
    assert s3_prefixes([uri, "s3://people/store/blobs/cd/cde.jpg", "s3://other/x/y.jpg", "/local/z.jpg"]) == {
        "other": "x",
        "people": "store/blobs",
    }


def test_s3_access_sends_only_what_is_set_and_both_keys_or_none():
    assert S3Access().storage_fields() == {"presign": True, "presign_ttl": 15}
    access = S3Access("AKID", "secret", endpoint="https://s3.internal", region="eu-west-1", presign=False)
    assert access.storage_fields() == {
        "presign": False,
        "presign_ttl": 15,
        "aws_access_key_id": "AKID",
        "aws_secret_access_key": "secret",
        "s3endpoint": "https://s3.internal",
        "region_name": "eu-west-1",
    }
    with pytest.raises(ValueError, match="both label_studio_s3_access_key_id and"):
        S3Access(access_key_id="AKID")
    for ttl in (0, 32768):
        with pytest.raises(ValueError, match="1..32767"):
            S3Access(presign_ttl_min=ttl)
    assert S3Access(presign_ttl_min=1).presign_ttl_min == 1 and S3Access(presign_ttl_min=32767)


def test_unreachable_server_and_missing_settings_fail_with_one_line_naming_the_url(tmp_path):
    from cosmicman.resources.annotation import LabellingResource

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = Store(str(tmp_path / "store"))
    backend = LabellingResource(
        backend_kind="label_studio", label_studio_url=f"http://127.0.0.1:{port}", label_studio_api_key="token"
    ).backend(store)
    assert isinstance(backend, LabelStudioBackend)
    with pytest.raises(LabelStudioError) as e:
        backend.check()
    assert f"http://127.0.0.1:{port} is unreachable" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="label_studio_url"):
        LabellingResource(backend_kind="label_studio").backend(store)
    with pytest.raises(LabelStudioError, match="no API key"):
        LabellingResource(backend_kind="label_studio", label_studio_url="http://x:1").backend(store).check()


# --------------------------------------------------------------------------------------------------
# A real server
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 with an admin whose legacy API token we chose."""
    with label_studio_server(tmp_path_factory.mktemp("label-studio")) as server:
        yield {"url": server.url, "token": server.token, "files": server.files}


def _people(parent, child, value, n_apply=3, n_not=3, seed=7):
    """Kept synthetic people, some for whom ``child`` applies (``parent == value``) and some not."""
    from cosmicman.simulation.world import SyntheticWorld

    world, yes, no = SyntheticWorld(seed=seed), [], []
    for i in range(400):
        s = world.sample(i, case="kept")
        (yes if s.attributes.get(parent) == value else no).append(s)
        if len(yes) >= n_apply and len(no) >= n_not:
            return yes[:n_apply] + no[:n_not], world
    raise AssertionError(f"the synthetic world has too few people with {parent} both = and != {value}")


def test_round_trip_through_a_real_label_studio(label_studio, tmp_path):
    import dagster as dg
    from label_studio_sdk import LabelStudio

    from cosmicman.jobs import labels_arrived_sensor
    from cosmicman.resources.annotation import LabellingResource
    from cosmicman.resources.storage import ObjectStoreResource

    protocol = load_protocol()
    by_name = protocol.by_name
    parent, child, value, plain = _hierarchy(protocol)
    asked = (parent, child, plain)
    people, world = _people(parent, child, value)  # 0..2: child applies; 3..5: it does not
    store_dir = label_studio["files"] / "store"
    store = Store(str(store_dir))
    shas = [store.put_blob(p.image_bytes, "jpg") for p in people]
    truth = {r.sha256: p.attributes for r, p in zip(shas, people)}
    images = {r.sha256: p.image_bytes for r, p in zip(shas, people)}
    tasks = []
    for i, r in enumerate(shas):
        cats = asked if i != 5 else (parent, child)  # the last task does not ask `plain`
        predicted = {}
        if i < 3:  # the annotator's answers pre-filled on half the tasks (one of them wrong)
            predicted = {c: truth[r.sha256][c] for c in cats if c in truth[r.sha256]}
            if i == 1:
                predicted[plain] = _other(by_name[plain].answers, truth[r.sha256][plain])
        tasks.append(
            LabelTask(
                f"round-001-{r.sha256[:16]}",
                r.sha256,
                store.uri(r.key),
                cats,
                predicted=predicted,
                model_version="probe-r0-test" if predicted else "",
            )
        )

    resources = {
        "object_store": ObjectStoreResource(url=str(store_dir)),
        "labelling": LabellingResource(
            backend_kind="label_studio",
            label_studio_url=label_studio["url"],
            label_studio_api_key=label_studio["token"],
            label_studio_import_chunk_size=4,
            label_studio_local_files_root=str(label_studio["files"]),
        ),
    }
    backend = resources["labelling"].backend(store)
    assert backend.check() == "annotator@cosmicman.test"
    with pytest.raises(LabelStudioError, match=f"Label Studio at {label_studio['url']} refused the API key"):
        LabelStudioBackend(store, label_studio["url"], "not-the-token").check()
    backend.submit("round-001", 1, tasks)
    backend.submit("round-001", 1, tasks)  # a retried asset: same project, nothing imported twice

    # --- what Label Studio now holds
    ls = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    pointer = store.read_json("labelling/round-001/label_studio.json")
    project = ls.projects.get(pointer["project_id"])
    assert "round-001" in project.title and json.loads(project.description)["round"] == 1
    assert [p.id for p in ls.projects.list()] == [project.id]
    names = {c.get("name") for c in ET.fromstring(project.label_config).iter("Choices")}
    assert names == {parent, child, plain}
    ls_tasks = {t.data["task_id"]: t for t in ls.tasks.list(project=project.id)}
    assert sorted(ls_tasks) == sorted(t.task_id for t in tasks)
    for t in tasks:
        lt = ls_tasks[t.task_id]
        assert lt.data["image_sha256"] == t.image_sha256 and tuple(lt.data["categories"]) == t.categories
        preds = lt.predictions or []
        assert len(preds) == (1 if t.predicted else 0)
        if t.predicted:
            got = {r["from_name"]: r["value"]["choices"][0] for r in preds[0].result}
            assert got == dict(t.predicted) and preds[0].model_version == "probe-r0-test"
    # the image is a URL the server serves (no base64), byte for byte
    image_url = ls_tasks[tasks[0].task_id].data["image"]
    assert image_url.startswith("/data/local-files/?d=")
    req = urllib.request.Request(
        label_studio["url"] + image_url, headers={"Authorization": f"Token {label_studio['token']}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == images[tasks[0].image_sha256]

    status = backend.open_round_status()
    assert (status.round_id, status.tasks, status.pending) == ("round-001", 6, 6)

    # --- the annotator, through the SDK: choices results answered from the synthetic truth
    def answer(task: LabelTask, extra=(), overrides=None, cancelled=False):
        attrs = {**truth[task.image_sha256], **(overrides or {})}
        result = [choice_result(c, attrs[c]) for c in task.categories if c in attrs] + [
            choice_result(c, a) for c, a in extra
        ]
        return ls.annotations.create(
            id=ls_tasks[task.task_id].id, result=[] if cancelled else result, was_cancelled=cancelled, lead_time=3.5
        )

    t = tasks
    answer(t[0], cancelled=True)  # skipped: still pending
    answer(t[1], overrides={plain: _other(by_name[plain].answers, truth[t[1].image_sha256][plain])})
    time.sleep(0.05)
    answer(t[1])  # corrected: the latest one wins
    answer(t[2])
    wrong_child = by_name[child].answers[0]
    answer(t[3], extra=[(child, wrong_child)])  # parent says no: child dropped
    answer(t[4])
    # t[5] untouched for now
    with dg.instance_for_test() as instance:
        cursors = [None]

        def sensor():  # one tick, with the cursor the previous tick left
            with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursors[-1]) as ctx:
                result = labels_arrived_sensor(ctx)
            cursors.append(result.cursor)
            return result

        assert "2 of 6 tasks still unlabelled" in sensor().skip_reason.skip_message
        first = ChangeCursor.from_json(cursors[-1])
        assert (first.round_id, first.project_id, first.caught_up) == ("round-001", project.id, True)
        labels, pending = backend.collect("round-001", 1)
        assert pending == 2 and {lab.image_sha256 for lab in labels} == {t[i].image_sha256 for i in (1, 2, 3, 4)}

        answer(t[5], extra=[(plain, by_name[plain].answers[0])])  # plain was not asked of t[5]: ignored
        answer(t[0])  # the annotator comes back to the skipped one
        (run,) = sensor().run_requests
        assert ChangeCursor.from_json(cursors[-1]).since > first.since
        status = backend.open_round_status()  # its own look (the newest task and the counters): the same state
        assert (status.round_id, status.tasks, status.pending) == ("round-001", 6, 0)
        assert run.run_key == f"labels-round-001-{status.fingerprint}"
        (again,) = sensor().run_requests  # nothing changed: the same run key (Dagster runs it once)
        assert again.run_key == run.run_key and cursors[-1] == cursors[-2]

    labels, pending = backend.collect("round-001", 1)
    assert pending == 0
    expected = []
    for task in tasks:
        attrs = truth[task.image_sha256]
        for c in task.categories:
            if c in attrs:  # the truth has the child only where the parent allows it
                expected.append(LabelRecord(task.image_sha256, c, attrs[c], "human", 1))
    assert labels == expected
    assert sum(lab.category == child for lab in labels) == 3
    assert all(lab.source == "human" and lab.round == 1 for lab in labels)

    backend.close_round("round-001")
    assert backend.open_round_status() is None
    assert "collected" in ls.projects.get(project.id).title

    # --- the labels drive the next fine-tune
    train = [world.sample(1000 + i, case="kept") for i in range(6)]
    heads_of = list(asked) + [next(c.name for c in protocol.categories if c.name not in asked and not c.requires)]
    base = ProbeAnnotator.train(
        [s.image_bytes for s in train], [{c: s.attributes[c] for c in heads_of if c in s.attributes} for s in train]
    )
    tuned = base.finetune(labels, images)
    assert tuned.version != base.version and tuned.round == 1 and tuned.lineage == (base.version,)
    for c in asked:
        assert c in tuned.heads and not np.array_equal(tuned.heads[c], base.heads.get(c, np.zeros(0))), c
    untouched = heads_of[-1]
    assert np.array_equal(tuned.heads[untouched], base.heads[untouched])
