"""A Label Studio JSON export as canonical human labels (pure: no server).

Per task, the latest annotation that was not skipped (``was_cancelled``); of its ``choices`` results only
those for the categories the task asked, with an answer in the category's vocabulary, and not contradicted
by the answer to a category it requires (a hat colour given with ``hat_exists = no`` is dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.labelling import LabelTask
from cosmicman.core.protocol import Category, Protocol, load_protocol

IMAGE_FIELD = "image"  # the ``$image`` of the labelling config


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
