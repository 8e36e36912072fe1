"""Labelling backends: where a round's questions go to humans and where their answers come back.

A round is a set of tasks (one image, the categories humans must answer for it). The file inbox
writes ``labelling/<round>/tasks.jsonl``; a human (or a tool) drops answer files into
``labelling/<round>/answers/`` with one JSON line per finished task:
``{"task_id": ..., "image_sha256": ..., "answers": {"hat_color": "red", ...}}`` (categories that do
not apply to the image are left out, as the hierarchy says). Every backend honours
:class:`LabellingBackend` exactly (the simulated labeller of the local environment too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from cosmicman.annotation.items import LabelRecord, LabelSource
from cosmicman.core.keys import LABELLING_PREFIX, labelling_key
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store


@dataclass(frozen=True)
class LabelTask:
    """One image and the categories humans must answer for it. ``predicted`` optionally carries the
    annotator's answers (category -> answer), shown to the human as pre-filled choices by backends
    that can (Label Studio), with ``model_version`` naming the annotator that made them."""

    task_id: str
    image_sha256: str
    image_url: str
    categories: tuple[str, ...]
    predicted: Mapping[str, str] = field(default_factory=dict, hash=False)
    model_version: str = ""


@dataclass(frozen=True)
class RoundStatus:
    round_id: str
    tasks: int
    pending: int
    fingerprint: str


class LabellingBackend(Protocol):
    def can_label(self, sha256: str) -> bool:
        """Whether this backend can get an image labelled (a round samples only those)."""
        ...

    def applicable_category_count(self, shas: Sequence[str]) -> int:
        """The questions a full manual pass over these images would ask (the cost a round is compared to)."""
        ...

    def submit(self, round_id: str, round_number: int, tasks: Sequence[LabelTask]) -> None: ...

    def collect(self, round_id: str, round_number: int) -> tuple[list[LabelRecord], int]: ...

    def open_round_status(self) -> RoundStatus | None: ...

    def close_round(self, round_id: str) -> None: ...


def jsonl_bytes(rows: Sequence[Mapping]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


class FileInbox:
    """Tasks and answers as JSON-lines files under the object store (any fsspec filesystem)."""

    source: LabelSource = "human"

    def __init__(self, store: Store) -> None:
        self.store = store

    def _key(self, round_id: str, name: str) -> str:
        return labelling_key(round_id, name)

    def can_label(self, sha256: str) -> bool:
        return True

    def applicable_category_count(self, shas: Sequence[str]) -> int:
        """Every category per image: an upper bound (which ones apply is what people would find out)."""
        return len(shas) * len(load_protocol().categories)

    def submit(self, round_id: str, round_number: int, tasks: Sequence[LabelTask]) -> None:
        self.store.write_bytes(self._key(round_id, "tasks.jsonl"), jsonl_bytes([asdict(t) for t in tasks]))

    def tasks(self, round_id: str) -> list[LabelTask]:
        raw = self.store.read_bytes(self._key(round_id, "tasks.jsonl")).decode()
        return [LabelTask(**{**r, "categories": tuple(r["categories"])}) for r in map(json.loads, raw.splitlines())]

    def _answers(self, round_id: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for key in self.store.list(self._key(round_id, "answers")):
            for line in self.store.read_bytes(key).decode().splitlines():
                if line.strip():
                    row = json.loads(line)
                    out[row["task_id"]] = row
        return out

    def collect(self, round_id: str, round_number: int) -> tuple[list[LabelRecord], int]:
        """Labels for the answered tasks, restricted to the categories each task asked; and the
        number of tasks still unanswered."""
        tasks = self.tasks(round_id)
        answers = self._answers(round_id)
        labels: list[LabelRecord] = []
        for task in tasks:
            row = answers.get(task.task_id)
            if row is None:
                continue
            for cat in task.categories:
                if cat in row["answers"]:
                    labels.append(
                        LabelRecord(task.image_sha256, cat, str(row["answers"][cat]), self.source, round_number)
                    )
        return labels, sum(t.task_id not in answers for t in tasks)

    def open_round_status(self) -> RoundStatus | None:
        rounds = sorted({k.split("/")[1] for k in self.store.list(LABELLING_PREFIX) if k.endswith("tasks.jsonl")})
        open_rounds = [r for r in rounds if not self.store.exists(self._key(r, "collected.json"))]
        if not open_rounds:
            return None
        rid = open_rounds[-1]
        tasks, answers = self.tasks(rid), self._answers(rid)
        done = sorted(t.task_id for t in tasks if t.task_id in answers)
        fingerprint = hashlib.sha256("\n".join(done).encode()).hexdigest()[:12]
        return RoundStatus(rid, len(tasks), len(tasks) - len(done), fingerprint)

    def close_round(self, round_id: str) -> None:
        self.store.write_json(self._key(round_id, "collected.json"), {"round": round_id})
