"""The human-in-the-loop rounds as typed records in the object store (Dagster-free).

Each round ``round-NNN`` writes two JSON records under ``hitl/<round>/``: its :class:`RoundPlan` when its
questions go to people and its :class:`RoundResult` when the fine-tuned annotator has been measured and
the round closed (:mod:`cosmicman.annotation.rounds` decides both). The ledger answers what the sensors
and the next round need: which annotator is in force, which round comes next, and the accuracy / cost
curve across rounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cosmicman.annotation.accuracy import mean_accuracy
from cosmicman.annotation.rounds import AnnotatorInForce, RoundPlan, RoundResult
from cosmicman.core.keys import BASE_ANNOTATOR_KEY, HITL_PREFIX, round_record_key
from cosmicman.core.store import Store

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
class NextStep:
    """What the loop does next: open ``round`` (a number), or nothing, with the reason."""

    round: int | None
    stopped: bool
    reason: str


class RoundLedger:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- records ---------------------------------------------------------------------------------
    def write_base(self, version: str, key: str) -> None:
        self.store.write_json(BASE_ANNOTATOR_KEY, {"version": version, "key": key})

    def write_plan(self, plan: RoundPlan) -> None:
        self.store.write_json(round_record_key(round_id(plan.round), "plan.json"), plan.to_json())

    def plan(self, number: int) -> RoundPlan:
        key = round_record_key(round_id(number), "plan.json")
        if not self.store.exists(key):
            raise LookupError(f"{round_id(number)} has no plan: materialize labelling_tasks for it first")
        return RoundPlan.from_json(self.store.read_json(key))

    def write_result(self, result: RoundResult) -> None:
        self.store.write_json(round_record_key(round_id(result.round), "result.json"), result.to_json())

    def result(self, number: int) -> RoundResult | None:
        key = round_record_key(round_id(number), "result.json")
        return RoundResult.from_json(self.store.read_json(key)) if self.store.exists(key) else None

    def rounds(self) -> list[int]:
        """Numbers of the rounds that have a plan, ascending."""
        found = set()
        for key in self.store.list(HITL_PREFIX):
            parts = key.split("/")
            if len(parts) >= 3 and parts[-1] == "plan.json" and _ROUND_ID.fullmatch(parts[-2]):
                found.add(round_number(parts[-2]))
        return sorted(found)

    def results(self) -> list[RoundResult]:
        return [r for n in self.rounds() if (r := self.result(n)) is not None]

    def asked_before(self, number: int) -> set[str]:
        """The images the rounds before ``number`` asked about."""
        return {s for n in self.rounds() if n < number for s in self.plan(n).sampled}

    # -- decisions -------------------------------------------------------------------------------
    def base(self) -> AnnotatorInForce:
        if not self.store.exists(BASE_ANNOTATOR_KEY):
            raise LookupError("there is no base annotator yet: materialize base_annotator first")
        ref = self.store.read_json(BASE_ANNOTATOR_KEY)
        return AnnotatorInForce(ref["version"], ref["key"])

    def in_force(self, before_round: int | None = None) -> AnnotatorInForce:
        """The annotator in force after the last closed round (before ``before_round`` if given)."""
        done = [r for r in self.results() if before_round is None or r.round < before_round]
        return done[-1].in_force if done else self.base()

    def next_step(self) -> NextStep:
        """Open the next round unless the last one is still open or closed with a stop (the rules in
        :func:`cosmicman.annotation.rounds.close_round` decide, max rounds included)."""
        rounds = self.rounds()
        if not rounds:
            return NextStep(1, False, "no round yet: round 1 starts")
        last = rounds[-1]
        result = self.result(last)
        if result is None:
            return NextStep(None, False, f"{round_id(last)} is waiting for its labels")
        if result.stop:
            return NextStep(None, True, f"the loop stopped after {round_id(last)}: {result.stop_reason}")
        return NextStep(
            last + 1, False, f"{round_id(last)} gained {100 * result.gain:.1f} points: {round_id(last + 1)} starts"
        )

    def curve(self) -> list[dict[str, float]]:
        """Mean accuracy and cumulative manual cost after each round (round 0: the base annotator)."""
        results = self.results()
        if not results:
            return []
        points = [
            {"round": 0, "mean_accuracy": results[0].mean_accuracy_before, "labels_asked": 0, "manual_share": 0.0}
        ]
        asked = 0
        for r in results:
            asked += r.labels_asked
            acc = r.accuracy_after if r.adopted else r.accuracy_before
            points.append(
                {
                    "round": r.round,
                    "mean_accuracy": mean_accuracy(acc),
                    "labels_asked": asked,
                    "manual_share": asked / r.full_manual_labels if r.full_manual_labels else 0.0,
                }
            )
        return points
