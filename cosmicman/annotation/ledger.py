"""The human-in-the-loop rounds as records in the object store (Dagster-free).

Each round ``round-NNN`` writes two JSON records under ``hitl/<round>/``: ``plan.json`` when its
questions go to humans (the annotator measured on I_e, the categories under the threshold, the sample
I_r) and ``result.json`` when the fine-tuned annotator has been measured (accuracy after, labels asked,
the annotator in force after the round, the label rounds behind it, the stop decision). The ledger
answers what the sensors and the next round need: which annotator is in force, which round comes next,
and the accuracy / cost curve across rounds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from cosmicman.annotation.annotation import AnnotationItem, map_in_workers, mean_accuracy
from cosmicman.core.store import Store
from cosmicman.simulation.world import SyntheticWorld

HITL_PREFIX = "hitl"
BASE_ANNOTATOR_KEY = "models/annotator/base.json"
_ROUND_ID = re.compile(r"round-(\d{3,})")


def round_id(number: int) -> str:
    if number < 1:
        raise ValueError(f"rounds are numbered from 1, got {number}")
    return f"round-{number:03d}"


def round_number(rid: str) -> int:
    m = _ROUND_ID.fullmatch(rid)
    if not m:
        raise ValueError(f"{rid!r} is not a round id like 'round-001'")
    return int(m.group(1))


@dataclass(frozen=True)
class AnnotatorInForce:
    version: str
    key: str
    round: int                     # 0 for the base annotator
    label_rounds: tuple[int, ...]  # rounds whose human labels trained it


@dataclass(frozen=True)
class NextStep:
    """What the loop does next: open ``round`` (a number), or nothing, with the reason."""

    round: int | None
    stopped: bool
    reason: str


class RoundLedger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _key(self, number: int, name: str) -> str:
        return f"{HITL_PREFIX}/{round_id(number)}/{name}"

    # -- records ---------------------------------------------------------------------------------
    def write_plan(self, number: int, plan: dict[str, Any]) -> None:
        self.store.write_json(self._key(number, "plan.json"), {**plan, "round": number})

    def plan(self, number: int) -> dict[str, Any]:
        key = self._key(number, "plan.json")
        if not self.store.exists(key):
            raise LookupError(f"{round_id(number)} has no plan: materialize labelling_tasks for it first")
        return self.store.read_json(key)

    def write_result(self, number: int, result: dict[str, Any]) -> None:
        self.store.write_json(self._key(number, "result.json"), {**result, "round": number})

    def result(self, number: int) -> dict[str, Any] | None:
        key = self._key(number, "result.json")
        return self.store.read_json(key) if self.store.exists(key) else None

    def rounds(self) -> list[int]:
        """Numbers of the rounds that have a plan, ascending."""
        found = set()
        for key in self.store.list(HITL_PREFIX):
            parts = key.split("/")
            if len(parts) >= 3 and parts[-1] == "plan.json" and _ROUND_ID.fullmatch(parts[-2]):
                found.add(round_number(parts[-2]))
        return sorted(found)

    def results(self) -> list[dict[str, Any]]:
        return [r for n in self.rounds() if (r := self.result(n)) is not None]

    # -- decisions -------------------------------------------------------------------------------
    def base(self) -> AnnotatorInForce:
        if not self.store.exists(BASE_ANNOTATOR_KEY):
            raise LookupError("there is no base annotator yet: materialize base_annotator first")
        ref = self.store.read_json(BASE_ANNOTATOR_KEY)
        return AnnotatorInForce(ref["version"], ref["key"], 0, ())

    def in_force(self, before_round: int | None = None) -> AnnotatorInForce:
        """The annotator in force after the last finished round (before ``before_round`` if given)."""
        done = [r for r in self.results() if before_round is None or r["round"] < before_round]
        if not done:
            return self.base()
        last = done[-1]
        return AnnotatorInForce(last["annotator_in_force"], last["annotator_key"], last["annotator_round"],
                                tuple(last["label_rounds"]))

    def next_step(self, max_rounds: int) -> NextStep:
        rounds = self.rounds()
        if not rounds:
            return NextStep(1, False, "no round yet: round 1 starts")
        last = rounds[-1]
        result = self.result(last)
        if result is None:
            return NextStep(None, False, f"{round_id(last)} is waiting for its labels")
        if result["stop"]:
            return NextStep(None, True, f"the loop stopped after {round_id(last)}: {result['stop_reason']}")
        if last >= max_rounds:
            return NextStep(None, True, f"the loop reached its limit of {max_rounds} rounds")
        return NextStep(last + 1, False, f"{round_id(last)} gained {100 * result['gain']:.1f} points: "
                                         f"{round_id(last + 1)} starts")

    def curve(self) -> list[dict[str, float]]:
        """Mean accuracy and cumulative manual cost after each round (round 0: the base annotator)."""
        results = self.results()
        if not results:
            return []
        points = [{"round": 0, "mean_accuracy": mean_accuracy(results[0]["accuracy_before"]),
                   "labels_asked": 0, "manual_share": 0.0}]
        asked = 0
        for r in results:
            asked += r["labels_asked"]
            acc = r["accuracy_after"] if r["adopted"] else r["accuracy_before"]
            points.append({"round": r["round"], "mean_accuracy": mean_accuracy(acc), "labels_asked": asked,
                           "manual_share": asked / r["full_manual_labels"] if r["full_manual_labels"] else 0.0})
        return points


def synthetic_people(seed: int, count: int) -> list[AnnotationItem]:
    """Rendered synthetic people with their ground truth (I_e, or a round-0 pretraining set), rendered
    in parallel (:func:`map_in_workers`)."""
    world = SyntheticWorld(seed=seed)
    rendered = map_in_workers(partial(_rendered_with_truth, world), count, min_per_worker=4)
    return [AnnotationItem.from_bytes(data, attributes) for data, attributes in rendered]


def synthetic_pool(seed: int, count: int) -> list[AnnotationItem]:
    """A pool of ``count`` synthetic people whose truth is known at once (drawn in parallel) and whose
    images are rendered only when a round samples them: a round over a pool of 20 000 renders a few
    hundred."""
    world = SyntheticWorld(seed=seed)
    truths = map_in_workers(world.attributes, count, min_per_worker=1000)
    return [AnnotationItem.lazy(f"synth-{seed}-{i}", partial(_rendered, world, i), truth)
            for i, truth in enumerate(truths)]


def _rendered(world: SyntheticWorld, index: int) -> bytes:
    return world.sample(index, case="kept").image_bytes


def _rendered_with_truth(world: SyntheticWorld, index: int) -> tuple[bytes, dict[str, str]]:
    sample = world.sample(index, case="kept")
    return sample.image_bytes, sample.attributes
