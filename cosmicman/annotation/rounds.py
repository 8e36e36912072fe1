"""The human-in-the-loop rules, in one place: how a round is decided, how it is closed, what it trains on.

Annotate Anyone (paper, Sec. 3.2.2): the current AI annotator is measured per category on an evaluation
set I_e with ground truth; people answer the categories under the threshold (85 %) on a sample I_r of
the pool; the annotator is fine-tuned on their labels and measured again. Every caller (the Dagster
assets and sensors, the CLI's summary, the in-memory loop of ``bench/hitl.py``) goes through these
functions; none restates a rule.

Deciding a round (:func:`plan_round`):

* **Categories sent.** Round 1 follows the paper: people answer *all* categories in the first
  iteration (``HitlRules.first_round = "all"``: every category measured on I_e). From round 2 on, only
  those under ``threshold`` on I_e, worst first; exactly ``threshold`` passes. ``first_round =
  "below_threshold"`` applies the threshold from round 1 too (the behaviour before this rule was pinned).
* **Sample I_r.** ``sample_size`` images, deterministic in ``seed + round`` and independent of the pool's
  order (ranked by ``sha256(seed:id)``), never an image an earlier round asked about, only images the
  labelling backend can label. Nothing is sampled when no category is sent.

Closing a round (:func:`close_round`), first match wins:

* ``"all pass"``: every category reaches the threshold after the round (the paper's stop rule).
* ``"no gain"``: mean accuracy rose by no more than ``min_gain``. OURS (the paper is silent): the round
  is recorded but not adopted (the annotator before it stays in force), and the loop stops.
* ``"max rounds (N)"``: the round is the ``max_rounds``-th. OURS (the paper is silent): the loop stops,
  the round adopted.
* otherwise ``"continue"``: adopted, and the next round opens.

A round that asked no label is never adopted. Training labels (:func:`training_labels`): the humans'
labels of this round plus the parent labels their answers imply (:func:`implied_labels`), and the
labels of the earlier rounds behind the annotator in force for the categories trained now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cosmicman.annotation.accuracy import categories_below, implied_labels, mean_accuracy
from cosmicman.annotation.items import LabelRecord
from cosmicman.core.protocol import Protocol

DEFAULT_THRESHOLD = 0.85  # the paper's per-category accuracy a category must reach to stay with the AI
FirstRound = Literal["all", "below_threshold"]


@dataclass(frozen=True)
class HitlRules:
    """The settings of the loop's rules (see the module docstring)."""

    threshold: float = DEFAULT_THRESHOLD
    sample_size: int = 100
    seed: int = 0
    max_rounds: int = 5
    min_gain: float = 0.0
    first_round: FirstRound = "all"

    def __post_init__(self) -> None:
        if self.first_round not in ("all", "below_threshold"):
            raise ValueError(f"first_round must be 'all' or 'below_threshold', got {self.first_round!r}")
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")


@dataclass(frozen=True)
class AnnotatorInForce:
    """The annotator a round starts from: its version, where it is stored, the round that made it (0
    for the base annotator) and the rounds whose human labels trained it."""

    version: str
    key: str
    round: int = 0
    label_rounds: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoundPlan:
    """A decided round: the annotator measured on I_e, the categories and images sent to people."""

    round: int
    before: AnnotatorInForce
    accuracy_before: Mapping[str, float] = field(hash=False)
    categories_sent: tuple[str, ...]
    sampled: tuple[str, ...]
    full_manual_labels: int
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "annotator_before": self.before.version,
            "annotator_before_key": self.before.key,
            "annotator_before_round": self.before.round,
            "label_rounds_before": list(self.before.label_rounds),
            "accuracy_before": dict(self.accuracy_before),
            "categories_sent": list(self.categories_sent),
            "sampled": list(self.sampled),
            "full_manual_labels": self.full_manual_labels,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RoundPlan:
        before = AnnotatorInForce(
            d["annotator_before"],
            d["annotator_before_key"],
            int(d["annotator_before_round"]),
            tuple(d["label_rounds_before"]),
        )
        return cls(
            int(d["round"]),
            before,
            dict(d["accuracy_before"]),
            tuple(d["categories_sent"]),
            tuple(d["sampled"]),
            int(d["full_manual_labels"]),
            float(d["threshold"]),
        )


@dataclass(frozen=True)
class RoundResult:
    """A closed round: the plan, the fine-tuned annotator measured again, and the decision."""

    plan: RoundPlan
    annotator_after: str
    accuracy_after: Mapping[str, float] = field(hash=False)
    labels_asked: int
    adopted: bool
    in_force: AnnotatorInForce
    stop: bool
    stop_reason: str

    @property
    def round(self) -> int:
        return self.plan.round

    @property
    def annotator_before(self) -> str:
        return self.plan.before.version

    @property
    def accuracy_before(self) -> Mapping[str, float]:
        return self.plan.accuracy_before

    @property
    def categories_sent(self) -> tuple[str, ...]:
        return self.plan.categories_sent

    @property
    def sampled_ids(self) -> tuple[str, ...]:
        return self.plan.sampled

    @property
    def full_manual_labels(self) -> int:
        return self.plan.full_manual_labels

    @property
    def annotator_in_force(self) -> str:
        return self.in_force.version

    @property
    def mean_accuracy_before(self) -> float:
        return mean_accuracy(self.plan.accuracy_before)

    @property
    def mean_accuracy_after(self) -> float:
        return mean_accuracy(self.accuracy_after)

    @property
    def gain(self) -> float:
        return self.mean_accuracy_after - self.mean_accuracy_before

    @property
    def cost_share(self) -> float:
        """Labels asked of people / labels a full manual pass over the pool would need."""
        return self.labels_asked / self.full_manual_labels if self.full_manual_labels else 0.0

    def to_json(self) -> dict[str, Any]:
        plan = self.plan.to_json()
        sampled = plan.pop("sampled")  # a result records the sample once, as sampled_ids
        return {
            **plan,
            "sampled_ids": sampled,
            "annotator_after": self.annotator_after,
            "accuracy_after": dict(self.accuracy_after),
            "labels_asked": self.labels_asked,
            "adopted": self.adopted,
            "annotator_in_force": self.in_force.version,
            "annotator_key": self.in_force.key,
            "annotator_round": self.in_force.round,
            "label_rounds": list(self.in_force.label_rounds),
            "stop": self.stop,
            "stop_reason": self.stop_reason,
            "gain": self.gain,
            "cost_share": self.cost_share,
            "mean_accuracy_before": self.mean_accuracy_before,
            "mean_accuracy_after": self.mean_accuracy_after,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RoundResult:
        plan = RoundPlan.from_json({**d, "sampled": d["sampled_ids"]})
        in_force = AnnotatorInForce(
            d["annotator_in_force"], d["annotator_key"], int(d["annotator_round"]), tuple(d["label_rounds"])
        )
        return cls(
            plan,
            d["annotator_after"],
            dict(d["accuracy_after"]),
            int(d["labels_asked"]),
            bool(d["adopted"]),
            in_force,
            bool(d["stop"]),
            d["stop_reason"],
        )


def categories_to_ask(accuracy: Mapping[str, float], round: int, rules: HitlRules) -> tuple[str, ...]:
    """The categories people answer in ``round``: all in round 1 under the paper's rule, else those
    under the threshold; worst first."""
    if round == 1 and rules.first_round == "all":
        return tuple(k for k, _ in sorted(accuracy.items(), key=lambda kv: (kv[1], kv[0])))
    return tuple(categories_below(accuracy, rules.threshold))


def select_round_sample(pool_ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """A deterministic random sample of ``n`` ids, independent of the pool's order: the ids ranked by
    ``sha256(seed:id)``, the first ``n`` (all of them if the pool is smaller)."""
    ids = sorted(set(pool_ids))
    ranked = sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return ranked[: max(int(n), 0)]


def plan_round(
    round: int,
    before: AnnotatorInForce,
    accuracy_before: Mapping[str, float],
    pool_ids: Iterable[str],
    asked_before: Iterable[str],
    can_label: Callable[[str], bool],
    full_manual_labels: int,
    rules: HitlRules,
) -> RoundPlan:
    """Decide ``round``: the categories sent and the sample I_r (see the module docstring)."""
    if round < 1:
        raise ValueError(f"rounds are numbered from 1, got {round}")
    sent = categories_to_ask(accuracy_before, round, rules)
    sampled: tuple[str, ...] = ()
    if sent:
        asked = set(asked_before)
        candidates = [p for p in pool_ids if p not in asked and can_label(p)]
        sampled = tuple(select_round_sample(candidates, rules.sample_size, seed=rules.seed + round))
    return RoundPlan(round, before, dict(accuracy_before), sent, sampled, int(full_manual_labels), rules.threshold)


def close_round(
    plan: RoundPlan, after: AnnotatorInForce, accuracy_after: Mapping[str, float], labels_asked: int, rules: HitlRules
) -> RoundResult:
    """Close a round measured after fine-tuning: adopt it or not, stop or go on (module docstring).
    ``after`` is the fine-tuned annotator (its ``round`` and ``label_rounds`` are set here); with no
    label asked, the annotator before stands and ``accuracy_after`` is ignored."""
    acc_after = dict(accuracy_after) if labels_asked else dict(plan.accuracy_before)
    gain = mean_accuracy(acc_after) - mean_accuracy(plan.accuracy_before)
    if not categories_below(acc_after, rules.threshold):
        stop, reason = True, "all pass"
    elif gain <= rules.min_gain:
        stop, reason = True, "no gain"
    elif plan.round >= rules.max_rounds:
        stop, reason = True, f"max rounds ({rules.max_rounds})"
    else:
        stop, reason = False, "continue"
    adopted = labels_asked > 0 and reason != "no gain"
    in_force = (
        AnnotatorInForce(after.version, after.key, plan.round, (*plan.before.label_rounds, plan.round))
        if adopted
        else plan.before
    )
    return RoundResult(
        plan,
        after.version if labels_asked else plan.before.version,
        acc_after,
        int(labels_asked),
        adopted,
        in_force,
        stop,
        reason,
    )


def round_labels(
    plan: RoundPlan, sampled_shas: Sequence[str], human: Sequence[LabelRecord], protocol: Protocol | None = None
) -> list[LabelRecord]:
    """A round's labels: the humans', then the parent labels their answers imply on the sampled images
    (``sampled_shas``: their sha256s)."""
    asked = {sha: plan.categories_sent for sha in sampled_shas}
    return [*human, *implied_labels(asked, human, plan.round, protocol)]


def training_labels(
    plan: RoundPlan, this_round: Sequence[LabelRecord], earlier: Sequence[LabelRecord]
) -> list[LabelRecord]:
    """What the round fine-tunes on: the earlier rounds' labels (behind the annotator in force) of the
    categories trained now, then this round's (:func:`round_labels`). Trained now: the categories sent
    and the parents implied this round."""
    trained = set(plan.categories_sent) | {lab.category for lab in this_round}
    return [lab for lab in earlier if lab.category in trained] + list(this_round)


def labels_asked(labels: Sequence[LabelRecord]) -> int:
    """The labels people gave (implied ones are free)."""
    return sum(lab.source != "implied" for lab in labels)
