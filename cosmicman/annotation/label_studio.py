"""Label Studio as the labelling backend: one Label Studio project per round, answers back as labels.

``submit`` creates the round's project (title ``"<round_id> · round <n>"``) whose labelling config is
:func:`label_studio_config` restricted to the categories the round asks (plus the existence questions
they depend on, so the conditional views can open), then imports the tasks in chunks. Each task is
``{"data": {"image": URL, "task_id", "image_sha256", "categories", "round_id", "round"}}`` and, when the
:class:`LabelTask` carries the annotator's answers, one prediction (``model_version``, ``result``) that
the annotator sees pre-filled and corrects.

Where the round lives. The object store stays the record of rounds, with the same layout as the file
inbox: ``labelling/<round>/tasks.jsonl`` (what we asked, authoritative for ``collect``), a pointer
``labelling/<round>/label_studio.json`` (server URL, project id, round id and number) and
``labelling/<round>/collected.json`` once closed. ``open_round_status`` picks the open pointer with the
highest round number. So nothing depends on searching project titles in a Label Studio that other teams
share, a re-submitted round (a retried asset) finds its project and imports only the missing tasks, and
the project description repeats the round id and number for people browsing Label Studio.

Image URLs: Label Studio resolves them itself, so they never expire (``label_studio_images``): ``s3://``
links stay as they are and the project gets an S3 source storage that presigns (or streams) them at view
time; local files are served by Label Studio's local-files storage; ``http(s)://`` passes unchanged.

The labels sensor watches the open round with :meth:`LabelStudioBackend.watch_round`: per tick one request
for the tasks changed since its cursor (``label_studio_changes``) and one for the project's counters, never
the whole project. ``collect`` (once per round) reads the project's JSON export as canonical labels
(``label_studio_export``). Training stays in the orchestrator: Label Studio only collects answers.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.label_studio_changes import (
    CHANGE_FIELDS,
    COUNT_FIELDS,
    ChangeCursor,
    ChangedTask,
    advance,
    changed_task,
    changes_query,
    fingerprint,
    newest_query,
)
from cosmicman.annotation.label_studio_config import label_studio_config
from cosmicman.annotation.label_studio_export import IMAGE_FIELD, labels_from_export
from cosmicman.annotation.label_studio_images import S3Access, local_storage_dir, s3_prefixes, task_image_url
from cosmicman.annotation.labelling import LabelTask, RoundStatus
from cosmicman.core.keys import LABELLING_PREFIX, labelling_key
from cosmicman.core.protocol import Protocol, load_protocol
from cosmicman.core.store import Store

log = logging.getLogger(__name__)

POINTER = "label_studio.json"
TASKS = "tasks.jsonl"
COLLECTED = "collected.json"
TITLE_MAX = 50  # Label Studio rejects longer project titles


class LabelStudioError(RuntimeError):
    """The Label Studio server could not be reached, refused the API key, or refused a request."""


# --------------------------------------------------------------------------------------------------
# Tasks -> Label Studio
# --------------------------------------------------------------------------------------------------
def round_protocol(categories: Iterable[str], protocol: Protocol | None = None) -> Protocol:
    """The protocol cut down to ``categories`` and every category they require (transitively)."""
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    keep: set[str] = set()
    todo = list(categories)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        if name not in by_name:
            raise ValueError(f"category {name!r} is not in the labelling protocol")
        keep.add(name)
        todo.extend(by_name[name].requires)
    return Protocol(protocol.version, protocol.parts, tuple(c for c in protocol.categories if c.name in keep), ())


def choice_result(category: str, answer: str) -> dict[str, Any]:
    """One Label Studio ``choices`` result (the shape of predictions and annotations)."""
    return {"from_name": category, "to_name": IMAGE_FIELD, "type": "choices", "value": {"choices": [answer]}}


def task_payload(
    task: LabelTask, image_url: str, round_id: str, round_number: int, protocol: Protocol
) -> dict[str, Any]:
    """The Label Studio task JSON for one :class:`LabelTask` (``protocol``: the round's protocol)."""
    data = {
        IMAGE_FIELD: image_url,
        "task_id": task.task_id,
        "image_sha256": task.image_sha256,
        "categories": list(task.categories),
        "round_id": round_id,
        "round": int(round_number),
    }
    out: dict[str, Any] = {"data": data}
    by_name = protocol.by_name
    result = [
        choice_result(name, str(ans))
        for name, ans in sorted(task.predicted.items())
        if name in by_name and str(ans) in by_name[name].answers
    ]
    if result:
        out["predictions"] = [{"model_version": task.model_version or "unknown", "result": result}]
    return out


@dataclass(frozen=True)
class RoundWatch:
    """One look at the open round: its status, the sensor's next cursor, and the tasks read this time
    (changed since the cursor; none on a round's first look)."""

    status: RoundStatus
    cursor: ChangeCursor
    changed: tuple[ChangedTask, ...]


class LabelStudioBackend:
    """The LabellingBackend on a Label Studio server (see the module docstring)."""

    source = "human"

    def __init__(
        self,
        store: Store,
        url: str,
        api_key: str | None,
        *,
        import_chunk_size: int = 500,
        local_files_root: str | None = None,
        s3_access: S3Access | None = None,
        change_page_size: int = 1000,
        timeout_s: float = 60.0,
        protocol: Protocol | None = None,
    ) -> None:
        if not url:
            raise ValueError("the Label Studio backend needs the server URL (label_studio_url)")
        if import_chunk_size < 1:
            raise ValueError(f"import_chunk_size must be positive, not {import_chunk_size}")
        if change_page_size < 1:
            raise ValueError(f"change_page_size must be positive, not {change_page_size}")
        self.store = store
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.import_chunk_size = int(import_chunk_size)
        self.local_files_root = os.path.abspath(local_files_root) if local_files_root else None
        self.s3_access = s3_access or S3Access()
        self.change_page_size = int(change_page_size)
        self.timeout_s = float(timeout_s)
        self.protocol = protocol or load_protocol()
        self._client = None

    def can_label(self, sha256: str) -> bool:
        return True

    def applicable_category_count(self, shas: Sequence[str]) -> int:
        """Every category per image: an upper bound (which ones apply is what people would find out)."""
        return len(shas) * len(self.protocol.categories)

    # -- the server -------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            if not self.api_key:
                raise LabelStudioError(f"Label Studio at {self.url}: no API key (set label_studio_api_key)")
            from label_studio_sdk import (
                LabelStudio,  # the SDK imports pandas: load it only when used
            )

            self._client = self._call(
                "connect", lambda: LabelStudio(base_url=self.url, api_key=self.api_key, timeout=self.timeout_s)
            )
        return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one SDK call; turn transport and HTTP errors into a one-line LabelStudioError."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except httpx.TransportError as e:
            raise LabelStudioError(
                f"Label Studio at {self.url} is unreachable ({what}): {type(e).__name__}: {e}"
            ) from None
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API key ({what}: HTTP "
                    f"{e.status_code}); check label_studio_api_key (a legacy token needs "
                    "legacy tokens enabled for the organization)"
                ) from None
            body = e.body if isinstance(e.body, str) else json.dumps(e.body, default=str)
            raise LabelStudioError(
                f"Label Studio at {self.url}: {what} failed (HTTP {e.status_code}): {' '.join(str(body).split())[:300]}"
            ) from None

    def check(self) -> str:
        """The email of the API key's user; raises LabelStudioError if the server or the key is wrong."""
        me = self._call("who am I", lambda: self.client.users.whoami())
        return str(getattr(me, "email", "") or getattr(me, "username", ""))

    def image_url(self, uri: str) -> str:
        """What a task's ``$image`` holds for ``uri`` (``label_studio_images``)."""
        return task_image_url(uri, self.local_files_root)

    # -- the round record in the store --------------------------------------------------------------
    def _key(self, round_id: str, name: str) -> str:
        return labelling_key(round_id, name)

    def _pointer(self, round_id: str) -> dict[str, Any] | None:
        key = self._key(round_id, POINTER)
        return self.store.read_json(key) if self.store.exists(key) else None

    def tasks(self, round_id: str) -> list[LabelTask]:
        raw = self.store.read_bytes(self._key(round_id, TASKS)).decode()
        out = []
        for line in raw.splitlines():
            if line.strip():
                r = json.loads(line)
                out.append(LabelTask(**{**r, "categories": tuple(r["categories"])}))
        return out

    def _export(self, project_id: int | None) -> list[dict[str, Any]]:
        """The project's tasks with all their annotations (skipped ones included), as Label Studio's JSON export."""
        if project_id is None:
            return []

        def run() -> bytes:
            return b"".join(
                self.client.projects.exports.download_sync(
                    int(project_id), export_type="JSON", download_all_tasks=True, download_resources=False
                )
            )

        raw = self._call(f"export of project {project_id}", run)
        return json.loads(raw) if raw.strip() else []

    # -- LabellingBackend ---------------------------------------------------------------------------
    def submit(self, round_id: str, round_number: int, tasks: Sequence[LabelTask]) -> None:
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{round_id}: task ids are not unique")
        protocol = round_protocol({c for t in tasks for c in t.categories}, self.protocol)
        urls = [self.image_url(t.image_url) for t in tasks]  # fail on an unusable image before creating anything
        storage_dir = local_storage_dir((t.image_url for t in tasks), self.local_files_root)
        pointer = self._pointer(round_id)
        if pointer and pointer.get("url") != self.url:
            raise LabelStudioError(f"{round_id} was submitted to Label Studio at {pointer.get('url')}, not {self.url}")
        self.store.write_bytes(
            self._key(round_id, TASKS), "".join(json.dumps(asdict(t), sort_keys=True) + "\n" for t in tasks).encode()
        )
        if not tasks:  # nothing to ask: no project (a config without questions is not valid)
            self.store.write_json(
                self._key(round_id, POINTER),
                {"url": self.url, "project_id": None, "round_id": round_id, "round": int(round_number), "tasks": 0},
            )
            return
        config = label_studio_config(protocol)
        description = json.dumps(
            {"cosmicman_round": round_id, "round": int(round_number), "store": self.store.url}, sort_keys=True
        )
        project_id: Any = pointer.get("project_id") if pointer else None
        resumed = project_id is not None
        if resumed:
            project = self._call(f"get project {project_id}", lambda: self.client.projects.get(int(project_id)))
            if project.label_config != config:
                self._call(
                    f"update the config of project {project_id}",
                    lambda: self.client.projects.update(int(project_id), label_config=config),
                )
        else:
            title = f"{round_id} · round {int(round_number)}"[:TITLE_MAX]
            project = self._call(
                "create project",
                lambda: self.client.projects.create(
                    title=title, description=description, label_config=config, show_skip_button=True
                ),
            )
            project_id = int(project.id)
            # the pointer first: a retried submit finds this project instead of creating another
            self.store.write_json(
                self._key(round_id, POINTER),
                {
                    "url": self.url,
                    "project_id": project_id,
                    "round_id": round_id,
                    "round": int(round_number),
                    "tasks": len(tasks),
                    "created_at": datetime.now(UTC).isoformat(),
                },
            )
        if storage_dir is not None:
            self._grant_local_files(int(project_id), storage_dir)
        for bucket, prefix in s3_prefixes(t.image_url for t in tasks).items():
            self._connect_s3(int(project_id), bucket, prefix)
        present = (
            {str((row.get("data") or {}).get("task_id")) for row in self._export(project_id)} if resumed else set()
        )
        todo = [
            task_payload(t, u, round_id, round_number, protocol)
            for t, u in zip(tasks, urls)
            if t.task_id not in present
        ]
        for start in range(0, len(todo), self.import_chunk_size):
            chunk = todo[start : start + self.import_chunk_size]
            resp = self._call(
                f"import of tasks {start}..{start + len(chunk) - 1} into project {project_id}",
                partial(self.client.projects.import_tasks, int(project_id), request=chunk, return_task_ids=True),
            )
            got = getattr(resp, "task_count", None)
            if got is not None and int(got) != len(chunk):
                raise LabelStudioError(
                    f"Label Studio at {self.url}: project {project_id} took {got} of {len(chunk)} tasks"
                )
        self.store.write_json(
            self._key(round_id, POINTER),
            {
                "url": self.url,
                "project_id": int(project_id),
                "round_id": round_id,
                "round": int(round_number),
                "tasks": len(tasks),
                "created_at": (pointer or {}).get("created_at") or datetime.now(UTC).isoformat(),
            },
        )
        log.info(
            "%s: %d tasks in Label Studio project %s (%d imported now)", round_id, len(tasks), project_id, len(todo)
        )

    def _grant_local_files(self, project_id: int, folder: str) -> None:
        storages = self._call(
            f"list local storages of project {project_id}",
            lambda: self.client.import_storage.local.list(project=project_id),
        )
        for s in storages or ():
            path = getattr(s, "path", None)
            if path and (folder == path or folder.startswith(path.rstrip("/") + "/")):
                return
        self._call(
            f"grant project {project_id} the local folder {folder}",
            lambda: self.client.import_storage.local.create(
                project=project_id,
                path=folder,
                title="cosmicman images (never synced)",
                description="lets this project's users see the round's images; do not sync",
                use_blob_urls=True,
            ),
        )

    def _connect_s3(self, project_id: int, bucket: str, prefix: str) -> None:
        """Give the project an S3 source storage on ``bucket`` (once), so Label Studio resolves the tasks'
        ``s3://`` links at view time (``label_studio_images``)."""
        storages = self._call(
            f"list S3 storages of project {project_id}", lambda: self.client.import_storage.s3.list(project=project_id)
        )
        if any(getattr(s, "bucket", None) == bucket for s in storages or ()):
            return
        if self.s3_access.access_key_id is None:
            log.info("Label Studio reads s3://%s with its own credentials (no label_studio_s3_access_key_id)", bucket)
        try:
            self._call(
                f"connect project {project_id} to s3://{bucket}/{prefix}",
                lambda: self.client.import_storage.s3.create(
                    project=project_id,
                    bucket=bucket,
                    prefix=prefix,
                    use_blob_urls=True,
                    title=f"cosmicman images s3://{bucket} (never synced)",
                    description="lets Label Studio show this round's s3:// images; do not sync",
                    **self.s3_access.storage_fields(),
                ),
            )
        except LabelStudioError as e:
            raise LabelStudioError(
                f"{e} (Label Studio must reach s3://{bucket}: check label_studio_s3_endpoint and the "
                "label_studio_s3_* credentials, or the server's own S3_ENDPOINT and credentials)"
            ) from None

    def collect(self, round_id: str, round_number: int) -> tuple[list[LabelRecord], int]:
        pointer = self._pointer(round_id)
        if pointer is None:
            raise LabelStudioError(
                f"{round_id} was never submitted to Label Studio (no {self._key(round_id, POINTER)})"
            )
        tasks = self.tasks(round_id)
        labels, answered = labels_from_export(
            self._export(pointer.get("project_id")), round_number, tasks, self.protocol
        )
        return labels, len(tasks) - len(answered)

    # -- watching the open round ----------------------------------------------------------------------
    def _open_round(self) -> tuple[str, dict[str, Any]] | None:
        """The open round with the highest number and its pointer (the store's record, no server call)."""
        pointers = [
            k for k in self.store.list(LABELLING_PREFIX) if posixpath.basename(k) == POINTER and k.count("/") == 2
        ]
        open_rounds = []
        for key in pointers:
            rid = key.split("/")[1]
            if not self.store.exists(self._key(rid, COLLECTED)):
                p = self.store.read_json(key)
                open_rounds.append((int(p.get("round", 0)), rid, p))
        if not open_rounds:
            return None
        _, rid, pointer = max(open_rounds, key=lambda r: (r[0], r[1]))
        return rid, pointer

    def _task_page(self, project_id: int, query: str, page_size: int) -> list[ChangedTask]:
        """One page of the project's tasks for ``query``, with only the change feed's fields."""
        pager = self._call(
            f"changed tasks of project {project_id}",
            lambda: self.client.tasks.list(
                project=project_id, query=query, include=CHANGE_FIELDS, page_size=page_size, resolve_uri=False
            ),
        )
        return [changed_task(row) for row in pager.items or ()]

    def _counts(self, project_id: int) -> tuple[int, int]:
        """(tasks, tasks with an answer that is not a skip) of the project, counted by Label Studio."""
        page = self._call(
            f"counts of project {project_id}",
            lambda: self.client.projects.list_counts(ids=str(project_id), include=COUNT_FIELDS),
        )
        row = next((r for r in page.results if r.id == project_id), None)
        if row is None:
            raise LabelStudioError(f"Label Studio at {self.url} has no project {project_id} (its counts are missing)")
        return int(row.task_number or 0), int(row.num_tasks_with_annotations or 0)

    def watch_round(self, cursor: ChangeCursor | None) -> RoundWatch | None:
        """The open round's status from what changed since ``cursor`` (module docstring); None when no
        round is open. ``cursor`` None, or one of another round, starts from the project's newest task."""
        found = self._open_round()
        if found is None:
            return None
        rid, pointer = found
        asked = int(pointer.get("tasks", 0))
        project_id = pointer.get("project_id")
        if project_id is None:  # a round with nothing to ask
            fresh = ChangeCursor(rid, None, "")
            return RoundWatch(RoundStatus(rid, asked, 0, fingerprint(fresh, 0, 0)), fresh, ())
        project_id = int(project_id)
        changed: list[ChangedTask] = []
        if cursor is None or (cursor.round_id, cursor.project_id) != (rid, project_id):
            newest = self._task_page(project_id, newest_query(), 1)
            cursor = ChangeCursor(rid, project_id, newest[0].updated_at if newest else "")
        else:
            page = self._task_page(project_id, changes_query(cursor), self.change_page_size)
            try:
                cursor, changed = advance(cursor, page, self.change_page_size)
            except ValueError as e:
                raise LabelStudioError(f"Label Studio project {project_id}: {e}") from None
        task_number, answered = self._counts(project_id)
        if task_number > asked:  # fewer is an import under way (or stopped): those tasks count as pending
            raise LabelStudioError(
                f"{rid}: Label Studio project {project_id} holds {task_number} tasks, the round asked {asked}: "
                "remove the tasks added by hand"
            )
        status = RoundStatus(rid, asked, asked - answered, fingerprint(cursor, task_number, answered))
        return RoundWatch(status, cursor, tuple(changed))

    def open_round_status(self) -> RoundStatus | None:
        """The open round's status: Label Studio's counters and its newest task (two requests)."""
        watch = self.watch_round(None)
        return watch.status if watch else None

    def close_round(self, round_id: str) -> None:
        pointer = self._pointer(round_id) or {}
        self.store.write_json(
            self._key(round_id, COLLECTED),
            {"round": round_id, "project_id": pointer.get("project_id"), "collected_at": datetime.now(UTC).isoformat()},
        )
        project_id = pointer.get("project_id")
        if project_id is None:
            return
        title = f"{round_id} · round {pointer.get('round')} · collected"[:TITLE_MAX]
        try:  # only a hint for people in Label Studio: the store already says the round is closed
            self._call(
                f"rename project {project_id}", lambda: self.client.projects.update(int(project_id), title=title)
            )
        except LabelStudioError as e:
            log.warning("%s is collected, but its project title was not updated: %s", round_id, e)
