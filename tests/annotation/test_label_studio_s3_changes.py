"""Label Studio at scale, on a real server (its own virtualenv) and a real S3 endpoint (moto on 127.0.0.1).

- ``s3://`` images: the tasks carry the link, the project gets Label Studio's own S3 storage, and Label
  Studio signs (or streams) each image when it is viewed: no URL of ours that expires.
- The labels sensor reads only what changed since its last tick, counted at the HTTP layer: tasks that
  cross the wire, per tick.
"""

from __future__ import annotations

import json

import httpx
import pytest

from cosmicman.annotation.label_studio import LabelStudioError, choice_result
from cosmicman.annotation.label_studio_changes import ChangeCursor
from cosmicman.annotation.labelling import LabelTask
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from tests.support.label_studio_server import label_studio_server
from tests.support.s3_server import ACCESS_KEY, SECRET_KEY, moto_s3

# deploy: a second Label Studio server (with its S3 endpoint) costs a minute: make test-deploy runs it
pytestmark = [pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecatedSince20"), pytest.mark.deploy]
BUCKET = "people"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def label_studio(s3, tmp_path_factory):
    # S3_ENDPOINT: the operator-trusted endpoint of the server's S3 storages (how an in-cluster S3 is set:
    # Label Studio refuses a private-network endpoint sent through its API)
    with label_studio_server(tmp_path_factory.mktemp("label-studio"), {"S3_ENDPOINT": s3.url}) as server:
        yield server


def _plain_category() -> tuple[str, tuple[str, ...]]:
    cat = next(c for c in load_protocol().categories if not c.requires and len(c.answers) >= 2)
    return cat.name, tuple(cat.answers)


def _resource(server, **settings):
    from cosmicman.resources.annotation import LabellingResource

    return LabellingResource(
        backend_kind="label_studio", label_studio_url=server.url, label_studio_api_key=server.token, **settings
    )


def _round(store: Store, n: int, category: str) -> tuple[list[LabelTask], dict[str, bytes]]:
    images = {}
    tasks = []
    for i in range(n):
        data = b"\xff\xd8\xff\xe0 synthetic jpeg " + bytes([i]) * 64
        ref = store.put_blob(data, "jpg")
        images[ref.sha256] = data
        tasks.append(LabelTask(f"t{i}", ref.sha256, store.uri(ref.key), (category,)))
    return tasks, images


def test_s3_images_are_signed_or_streamed_by_label_studio_when_viewed(label_studio, s3):
    category, _ = _plain_category()
    http = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"})
    for presign, store_root in ((True, "store-presigned"), (False, "store-streamed")):
        store = Store(f"s3://{BUCKET}/{store_root}", **s3.storage_options())
        tasks, images = _round(store, 2, category)
        backend = _resource(
            label_studio,
            label_studio_s3_access_key_id=ACCESS_KEY,
            label_studio_s3_secret_access_key=SECRET_KEY,
            label_studio_s3_presign=presign,
            label_studio_s3_presign_ttl_min=20,
        ).backend(store)
        backend.submit("round-001", 1, tasks)
        backend.submit("round-001", 1, tasks)  # a retried asset: the storage is not connected twice
        project_id = store.read_json("labelling/round-001/label_studio.json")["project_id"]

        storages = http.get("/api/storages/s3/", params={"project": project_id})
        (storage,) = storages.json()
        assert (storage["bucket"], storage["prefix"], storage["presign"], storage["presign_ttl"]) == (
            BUCKET,
            f"{store_root}/blobs",
            presign,
            20,
        )
        assert SECRET_KEY not in storages.text  # Label Studio keeps the keys write-only
        # the task holds the link, not a signed URL
        raw = http.get("/api/tasks/", params={"project": project_id, "resolve_uri": "false"}).json()["tasks"]
        assert sorted(t["data"]["image"] for t in raw) == sorted(t.image_url for t in tasks)
        assert all(t["data"]["image"].startswith(f"s3://{BUCKET}/{store_root}/blobs/") for t in raw)
        assert "X-Amz" not in json.dumps(raw)
        # what the labelling UI gets: Label Studio's own resolver, signing or streaming at view time
        shown = http.get("/api/tasks/", params={"project": project_id}).json()["tasks"]
        for task in shown:
            url = task["data"]["image"]
            assert url.startswith(f"{label_studio.url}/tasks/{task['id']}/resolve/?fileuri="), url
            sha = task["data"]["image_sha256"]
            got = http.get(url, follow_redirects=False)
            if presign:
                assert got.status_code == 303, got.text[:200]
                signed = got.headers["location"]
                assert signed.startswith(f"{s3.url}/{BUCKET}/{store_root}/blobs/") and "X-Amz-Expires=1200" in signed
                assert httpx.get(signed).content == images[sha]
            else:
                assert got.status_code == 200 and got.content == images[sha]
            anonymous = httpx.get(url, follow_redirects=False)
            assert anonymous.status_code != 303 and anonymous.content != images[sha]

    # an endpoint on a private address sent through the API: Label Studio refuses it (SSRF protection),
    # and the error names the setting to look at
    store = Store(f"s3://{BUCKET}/store-refused", **s3.storage_options())
    tasks, _ = _round(store, 1, category)
    backend = _resource(label_studio, label_studio_s3_endpoint=s3.url).backend(store)
    with pytest.raises(LabelStudioError, match="label_studio_s3_endpoint") as e:
        backend.submit("round-001", 1, tasks)
    assert "\n" not in str(e.value)


@pytest.fixture
def dagster_instance():
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


def test_labels_sensor_reads_only_the_tasks_changed_since_its_last_tick(label_studio, dagster_instance, monkeypatch):
    import dagster as dg
    from label_studio_sdk import LabelStudio

    from cosmicman.jobs import labels_arrived_sensor
    from cosmicman.resources.storage import ObjectStoreResource

    category, answers = _plain_category()
    store_dir = label_studio.files / "store-changes"
    store = Store(str(store_dir))
    tasks, _ = _round(store, 5, category)
    page_size = 3
    resources = {
        "object_store": ObjectStoreResource(url=str(store_dir)),
        "labelling": _resource(
            label_studio,
            label_studio_local_files_root=str(label_studio.files),
            label_studio_change_page_size=page_size,
        ),
    }
    resources["labelling"].backend(store).submit("round-001", 1, tasks)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id = store.read_json("labelling/round-001/label_studio.json")["project_id"]
    ls_id = {t.data["task_id"]: t.id for t in ls.tasks.list(project=project_id)}
    tid = [ls_id[t.task_id] for t in tasks]

    reads: list[tuple[dict, list[int]]] = []  # per task-list request: its parameters, the task ids that came back
    send = httpx.Client.send

    def counting_send(self, request, **kwargs):
        response = send(self, request, **kwargs)
        if request.method == "GET" and request.url.path.rstrip("/") == "/api/tasks":
            reads.append((dict(request.url.params), [t["id"] for t in response.json()["tasks"]]))
        return response

    monkeypatch.setattr(httpx.Client, "send", counting_send)

    def answer(i: int) -> None:
        ls.annotations.create(id=tid[i], result=[choice_result(category, answers[0])], was_cancelled=False)

    cursor: list[str | None] = [None]

    def tick():
        """One sensor tick: its result and the task-list requests it made (exactly one per tick)."""
        del reads[:]
        with dg.build_sensor_context(instance=dagster_instance, resources=resources, cursor=cursor[-1]) as ctx:
            result = labels_arrived_sensor(ctx)
        cursor.append(result.cursor)
        (request,) = reads
        params, ids = request
        assert int(params["page_size"]) <= page_size and params.get("page", "1") == "1"  # never pages
        assert params.get("resolve_uri") == "false"
        return result, ids

    # the first look at the round: the project's newest task only, never the whole project
    result, ids = tick()
    assert len(ids) == 1 and json.loads(reads[0][0]["query"]) == {"ordering": ["-tasks:updated_at"]}
    assert "5 of 5 tasks still unlabelled" in result.skip_reason.skip_message

    # no change: nothing comes back, the cursor stays
    result, ids = tick()
    assert ids == [] and cursor[-1] == cursor[-2]
    assert "5 of 5 tasks still unlabelled (0 changed task(s) read" in result.skip_reason.skip_message

    # one new annotation: exactly that task
    answer(2)
    result, ids = tick()
    assert ids == [tid[2]]
    assert "4 of 5 tasks still unlabelled (1 changed task(s) read" in result.skip_reason.skip_message
    assert ChangeCursor.from_json(cursor[-1]).since > ChangeCursor.from_json(cursor[-2]).since
    _, ids = tick()
    assert ids == []

    # more changes than a page: the rest on the next tick, and no run until the sensor has caught up
    for i in (0, 1, 3, 4):
        answer(i)
    result, ids = tick()
    assert ids == [tid[0], tid[1], tid[3]] and not result.run_requests
    assert "more on the next tick" in result.skip_reason.skip_message
    assert not ChangeCursor.from_json(cursor[-1]).caught_up
    result, ids = tick()  # the last instant read is asked again (ties), only the new task is counted
    assert ids == [tid[3], tid[4]]
    (run,) = result.run_requests
    assert run.partition_key == "round-001" and ChangeCursor.from_json(cursor[-1]).caught_up

    # all answered, nothing new: the same run key (Dagster starts it once), nothing read
    result, ids = tick()
    assert ids == [] and result.run_requests[0].run_key == run.run_key
    backend = resources["labelling"].backend(store)
    labels, pending = backend.collect("round-001", 1)
    assert pending == 0 and len(labels) == 5

    # a task added by hand in Label Studio: the counters no longer describe the round, said in one line
    ls.projects.import_tasks(project_id, request=[{"data": {"image": "https://x/by-hand.jpg", "task_id": "by-hand"}}])
    with pytest.raises(LabelStudioError, match="holds 6 tasks, the round asked 5: remove the tasks added by hand"):
        backend.watch_round(None)
