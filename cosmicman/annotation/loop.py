"""The labelling loop in memory (benchmarks, tests): a thin driver over :mod:`cosmicman.annotation.rounds`.

It holds the items and the annotators the Dagster assets keep in the object store, and asks a
:class:`PoolLabeller` (the simulated oracle) where the assets submit tasks to a labelling backend;
every decision (categories sent, sample, training labels, adoption, stop) is the rounds module's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Protocol

from PIL import Image

from cosmicman.annotation.accuracy import per_category_accuracy
from cosmicman.annotation.annotator import Annotator
from cosmicman.annotation.items import AnnotationItem, LabelRecord, materialize
from cosmicman.annotation.rounds import (
    AnnotatorInForce,
    HitlRules,
    RoundResult,
    close_round,
    labels_asked,
    plan_round,
    round_labels,
    training_labels,
)
from cosmicman.core.protocol import Protocol as LabelProtocol


class PoolLabeller(Protocol):
    """Who answers a round's questions about pool items in memory."""

    def can_label(self, item: AnnotationItem) -> bool: ...

    def applicable_category_count(self, items: Sequence[AnnotationItem]) -> int: ...

    def label(
        self, items: Sequence[AnnotationItem], categories: Sequence[str], round: int = 0
    ) -> list[LabelRecord]: ...


@dataclass
class LoopState:
    """The annotator in force and what trained it: the labels and images of its adopted rounds."""

    annotator: Annotator
    accuracy: Mapping[str, float] | None = None
    labels: list[LabelRecord] = field(default_factory=list)
    images: dict[str, Image.Image] = field(default_factory=dict)
    in_force: AnnotatorInForce | None = None

    def __post_init__(self) -> None:
        if self.in_force is None:
            self.in_force = AnnotatorInForce(self.annotator.version, self.annotator.version)


def run_hitl_round(
    state: LoopState,
    round: int,
    eval_items: Sequence[AnnotationItem],
    pool_items: Sequence[AnnotationItem],
    labeller: PoolLabeller,
    rules: HitlRules,
    asked_before: Iterable[str] = (),
    full_manual_labels: int | None = None,
    protocol: LabelProtocol | None = None,
) -> tuple[Annotator, RoundResult, list[LabelRecord]]:
    """One round from ``state``: ``(fine-tuned annotator, closed round, the round's labels)``. Only the
    sampled pool items are decoded (or rendered, for lazy items)."""
    assert state.in_force is not None
    by_id = {it.pool_id: it for it in pool_items}
    accuracy = (
        state.accuracy
        if state.accuracy is not None
        else per_category_accuracy(state.annotator, eval_items, protocol=protocol)
    )
    full = labeller.applicable_category_count(pool_items) if full_manual_labels is None else full_manual_labels
    plan = plan_round(
        round, state.in_force, accuracy, by_id, asked_before, lambda p: labeller.can_label(by_id[p]), full, rules
    )
    sampled = [by_id[p] for p in plan.sampled]
    materialize(sampled)
    human = labeller.label(sampled, plan.categories_sent, round=round) if plan.categories_sent else []
    labels = round_labels(plan, [it.image_sha256 for it in sampled], human, protocol)
    model, accuracy_after = state.annotator, accuracy
    if human:
        images = {**state.images, **{it.image_sha256: it.image for it in sampled}}
        model = state.annotator.finetune(training_labels(plan, labels, state.labels), images, round=round)
        accuracy_after = per_category_accuracy(model, eval_items, protocol=protocol)
    result = close_round(
        plan, AnnotatorInForce(model.version, model.version), accuracy_after, labels_asked(human), rules
    )
    return model, result, labels


def run_hitl_loop(
    annotator: Annotator,
    eval_items: Sequence[AnnotationItem],
    pool_items: Sequence[AnnotationItem],
    labeller: PoolLabeller,
    rules: HitlRules,
    protocol: LabelProtocol | None = None,
) -> tuple[Annotator, list[RoundResult], str]:
    """Rounds until one closes with a stop; returns ``(annotator in force, rounds, stop reason)``."""
    state = LoopState(annotator)
    by_id = {it.pool_id: it for it in pool_items}
    full = labeller.applicable_category_count(pool_items)
    history: list[RoundResult] = []
    for number in count(1):
        asked = [p for r in history for p in r.sampled_ids]
        model, result, labels = run_hitl_round(
            state, number, eval_items, pool_items, labeller, rules, asked, full, protocol
        )
        history.append(result)
        if result.adopted:
            state = LoopState(
                model,
                result.accuracy_after,
                state.labels + labels,
                {**state.images, **{by_id[p].image_sha256: by_id[p].image for p in result.sampled_ids}},
                result.in_force,
            )
        if result.stop:
            break
    return state.annotator, history, history[-1].stop_reason
