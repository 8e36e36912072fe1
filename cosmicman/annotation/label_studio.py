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

Image URLs (never base64, which makes Label Studio slow): ``http(s)://`` passes unchanged; ``s3://`` (and
any fsspec filesystem that can ``sign``) becomes a presigned HTTPS URL (Signature Version 4, signed with
the store's credentials and endpoint; ``presign_expiry_s``, 7 days by default, the SigV4 maximum: a round
must be labelled before its URLs expire); a local file becomes Label
Studio's own ``/data/local-files/?d=<path>`` URL, relative to ``local_files_root`` -- the directory the
server runs with as ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``) -- and the project gets a local-files storage on the
images' folder (never synced: it only grants the project's users the right to see those files).

``collect`` reads the project's JSON export and keeps, per task, the latest annotation that was not
skipped (``was_cancelled``); of its ``choices`` results only those for the categories the task asked,
with an answer in the category's vocabulary, and not contradicted by the answer to a category it
requires (a hat colour given with ``hat_exists = no`` is dropped). Training stays in the orchestrator:
Label Studio only collects answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import fsspec

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.label_studio_config import label_studio_config
from cosmicman.annotation.labelling import LabelTask, RoundStatus
from cosmicman.core.keys import LABELLING_PREFIX, labelling_key
from cosmicman.core.protocol import Category, Protocol, load_protocol
from cosmicman.core.store import Store

log = logging.getLogger(__name__)

POINTER = "label_studio.json"
TASKS = "tasks.jsonl"
COLLECTED = "collected.json"
IMAGE_FIELD = "image"  # the ``$image`` of the labelling config
MAX_PRESIGN_S = 7 * 24 * 3600
TITLE_MAX = 50  # Label Studio rejects longer project titles


class LabelStudioError(RuntimeError):
    """The Label Studio server could not be reached, refused the API key, or refused a request."""


# --------------------------------------------------------------------------------------------------
# Export -> canonical labels (pure: no server)
# --------------------------------------------------------------------------------------------------
def _when(annotation: Mapping[str, Any]) -> tuple[datetime, int]:
    raw = annotation.get("updated_at") or annotation.get("created_at")
    try:
        ts = datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    except ValueError:
        ts = None
    if ts is not None and ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts or datetime.min.replace(tzinfo=UTC), int(annotation.get("id") or 0)


def latest_answer(annotations: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The latest annotation that is not a skip (``was_cancelled``); None if there is none."""
    done = [a for a in annotations or () if not a.get("was_cancelled")]
    return max(done, key=_when) if done else None


def choices_of(result: Iterable[Mapping[str, Any]], protocol: Protocol) -> dict[str, str]:
    """``{category: answer}`` from an annotation's result: single ``choices`` answers of protocol
    categories, in the category's vocabulary (anything else is ignored)."""
    by_name = protocol.by_name
    out: dict[str, str] = {}
    for item in result or ():
        if item.get("type") != "choices":
            continue
        cat = by_name.get(str(item.get("from_name")))
        picked = (item.get("value") or {}).get("choices") or []
        if cat is None or len(picked) != 1 or str(picked[0]) not in cat.answers:
            continue
        out[cat.name] = str(picked[0])
    return out


def _consistent(cat: Category, answers: Mapping[str, str], by_name: Mapping[str, Category], depth: int = 0) -> bool:
    """False when an answer to a category ``cat`` requires (directly or through its own requirements)
    says ``cat`` does not apply. A requirement left unanswered does not drop the answer."""
    if depth > len(by_name):
        return False
    for parent, value in cat.requires.items():
        got = answers.get(parent)
        if got is not None and got != value:
            return False
        if parent in by_name and not _consistent(by_name[parent], answers, by_name, depth + 1):
            return False
    return True


def labels_from_export(
    export: Sequence[Mapping[str, Any]],
    round_number: int,
    tasks: Sequence[LabelTask] | None = None,
    protocol: Protocol | None = None,
) -> tuple[list[LabelRecord], dict[str, Mapping[str, Any]]]:
    """Canonical human labels from a Label Studio JSON export.

    ``tasks``: what we asked (``task_id`` -> image and categories); exported tasks that are not among
    them are ignored. Without ``tasks`` the task's own ``data`` (``task_id``, ``image_sha256``,
    ``categories``) says what was asked. Returns the labels (in task order, then the task's category
    order) and ``{task_id: the annotation used}`` for every answered task.
    """
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    if tasks is None:
        tasks = [
            LabelTask(
                str(d.get("task_id")),
                str(d.get("image_sha256", "")),
                str(d.get(IMAGE_FIELD, "")),
                tuple(d.get("categories") or ()),
            )
            for d in (t.get("data") or {} for t in export)
            if d.get("task_id") is not None
        ]
    exported: dict[str, Mapping[str, Any]] = {}
    for row in export:
        tid = (row.get("data") or {}).get("task_id")
        if tid is None:
            continue
        ann = latest_answer(row.get("annotations") or ())
        if ann is None:
            continue
        prev = exported.get(str(tid))  # the same task imported twice: the latest answer still wins
        if prev is None or _when(ann) > _when(prev):
            exported[str(tid)] = ann
    labels: list[LabelRecord] = []
    answered: dict[str, Mapping[str, Any]] = {}
    for task in tasks:
        ann = exported.get(task.task_id)
        if ann is None:
            continue
        answered[task.task_id] = ann
        answers = choices_of(ann.get("result") or (), protocol)
        for name in task.categories:
            cat = by_name.get(name)
            if cat is None or name not in answers or not _consistent(cat, answers, by_name):
                continue
            labels.append(LabelRecord(task.image_sha256, name, answers[name], "human", int(round_number)))
    return labels, answered


def _fingerprint(answered: Mapping[str, Mapping[str, Any]]) -> str:
    done = sorted(f"{tid}:{ann.get('id', '')}" for tid, ann in answered.items())
    return hashlib.sha256("\n".join(done).encode()).hexdigest()[:12]


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
        presign_expiry_s: int = MAX_PRESIGN_S,
        timeout_s: float = 60.0,
        protocol: Protocol | None = None,
    ) -> None:
        if not url:
            raise ValueError("the Label Studio backend needs the server URL (label_studio_url)")
        if import_chunk_size < 1:
            raise ValueError(f"import_chunk_size must be positive, not {import_chunk_size}")
        if not 1 <= presign_expiry_s <= MAX_PRESIGN_S:
            raise ValueError(f"presign_expiry_s must be in 1..{MAX_PRESIGN_S} (S3's limit), not {presign_expiry_s}")
        self.store = store
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.import_chunk_size = int(import_chunk_size)
        self.local_files_root = os.path.abspath(local_files_root) if local_files_root else None
        self.presign_expiry_s = int(presign_expiry_s)
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

    # -- image URLs -------------------------------------------------------------------------------
    def _local_path(self, uri: str) -> str | None:
        parts = urlsplit(uri)
        if parts.scheme in ("file", "local"):
            return os.path.abspath(fsspec.core.strip_protocol(uri))
        if parts.scheme == "":
            return os.path.abspath(uri)
        return None

    def image_url(self, uri: str) -> str:
        """A URL the Label Studio server (and the annotator's browser) can load ``uri`` from."""
        scheme = urlsplit(uri).scheme
        if scheme in ("http", "https"):
            return uri
        local = self._local_path(uri)
        if local is not None:
            if self.local_files_root is None:
                raise ValueError(
                    f"image {uri} is a local file: set the Label Studio backend's local_files_root "
                    "to the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, or use an s3:// store"
                )
            rel = os.path.relpath(local, self.local_files_root)
            if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
                raise ValueError(f"image {local} is outside the Label Studio local files root {self.local_files_root}")
            return "/data/local-files/?d=" + quote(rel.replace(os.sep, "/"))
        fs = self._signing_fs(scheme)
        try:
            url = fs.sign(fs._strip_protocol(uri), expiration=self.presign_expiry_s)
        except NotImplementedError:
            raise ValueError(
                f"image {uri}: a {scheme}:// file cannot be shown by Label Studio (no presigned "
                "URLs); use an s3:// or local store"
            ) from None
        return str(url)

    def _signing_fs(self, scheme: str) -> fsspec.AbstractFileSystem:
        """The filesystem that signs ``scheme://`` URLs: the store's own options (credentials, endpoint)
        when the store is on that filesystem; for S3 always Signature Version 4 (botocore may default
        to version 2 for presigned URLs, which newer regions and some S3 servers refuse)."""
        protos = self.store.fs.protocol if isinstance(self.store.fs.protocol, tuple) else (self.store.fs.protocol,)
        options = dict(self.store.storage_options) if scheme in protos else {}
        if scheme in ("s3", "s3a"):
            options["config_kwargs"] = {**(options.get("config_kwargs") or {}), "signature_version": "s3v4"}
            return fsspec.filesystem("s3", **options)
        return self.store.fs if scheme in protos else fsspec.filesystem(scheme, **options)

    def _local_storage_dir(self, tasks: Sequence[LabelTask]) -> str | None:
        dirs = {os.path.dirname(p) for t in tasks if (p := self._local_path(t.image_url)) is not None}
        if not dirs:
            return None
        common = os.path.commonpath(sorted(dirs))
        if self.local_files_root is not None and os.path.abspath(common) == self.local_files_root:
            raise ValueError(
                f"the images lie directly in the Label Studio local files root {common}; Label Studio "
                "only serves subfolders of it: put the store in a subfolder"
            )
        return common

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
        storage_dir = self._local_storage_dir(tasks)
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

    def open_round_status(self) -> RoundStatus | None:
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
        tasks = self.tasks(rid)
        _, answered = labels_from_export(
            self._export(pointer.get("project_id")), int(pointer.get("round", 0)), tasks, self.protocol
        )
        return RoundStatus(rid, len(tasks), len(tasks) - len(answered), _fingerprint(answered))

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
