"""Measuring an annotator on I_e and reasoning over the protocol's hierarchy of answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cosmicman.annotation.annotator import Annotator
from cosmicman.annotation.items import AnnotationItem, LabelRecord
from cosmicman.core.protocol import Protocol, load_protocol


def implied_labels(
    asked: Mapping[str, Sequence[str]], labels: Sequence[LabelRecord], round: int, protocol: Protocol | None = None
) -> list[LabelRecord]:
    """Labels of parent categories that the humans' answers to detail questions imply, at no cost.

    ``asked`` maps each image to the categories asked about it. A detail answered means its parents
    hold (the labelling UI shows a garment's colour only once the garment exists); a detail left
    unanswered means its one yes/no parent is "no" (unanswered details are those that do not apply).
    Parents the humans answered themselves are left to them. Implied labels have ``source="implied"``.
    """
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    answered: dict[str, dict[str, LabelRecord]] = {}
    for lab in labels:
        answered.setdefault(lab.image_sha256, {})[lab.category] = lab
    out: list[LabelRecord] = []
    for sha, cats in asked.items():
        got = answered.get(sha, {})
        implied: dict[str, str] = {}
        for name in cats:
            requires = by_name[name].requires
            if name in got:
                implied.update(requires)
            elif len(requires) == 1:
                ((parent, value),) = requires.items()
                if by_name[parent].answers == ("yes", "no") and value == "yes":
                    implied.setdefault(parent, "no")
        out += [LabelRecord(sha, k, v, "implied", round) for k, v in sorted(implied.items()) if k not in got]
    return out


def merge_human_answers(
    predicted: Mapping[str, str], human: Mapping[str, str], protocol: Protocol | None = None
) -> dict[str, str]:
    """An image's final answers: the humans' answers over the annotator's, kept consistent.

    A human who answered a detail (a hat's colour) saw its parent hold (the labelling UI shows the detail
    only then), so the parent answers it requires are implied; answers whose requirements then fail
    (the annotator's hat colour when a human said there is no hat) are dropped.
    """
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    merged = dict(predicted)
    stack = list(human.items())
    while stack:
        name, value = stack.pop()
        merged[name] = value
        stack.extend((k, v) for k, v in by_name[name].requires.items() if k not in human)
    out: dict[str, str] = {}
    for cat in protocol.categories:  # parents before children
        if cat.name in merged and cat.applies(out):
            out[cat.name] = merged[cat.name]
    return out


def per_category_accuracy(
    annotator: Annotator,
    eval_items: Sequence[AnnotationItem],
    categories: Sequence[str] | None = None,
    protocol: Protocol | None = None,
    predictions: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, float]:
    """Accuracy per category on I_e, over the items where the category applies *by ground truth*.

    A missing prediction (the annotator's own hierarchy skipped the question) counts as wrong.
    Categories that apply to no eval item are left out. ``predictions`` may be passed precomputed.
    """
    protocol = protocol or load_protocol()
    names = [c.name for c in protocol.categories] if categories is None else list(categories)
    if predictions is None:
        predictions = annotator.predict([it.image for it in eval_items], names)
    by_name = protocol.by_name
    acc = {}
    for name in names:
        cat = by_name[name]
        hits = total = 0
        for item, pred in zip(eval_items, predictions):
            truth = item.attributes
            if truth is None:
                raise ValueError(f"eval item {item.image_sha256} has no ground truth")
            if name not in truth or not cat.applies(truth):
                continue
            total += 1
            hits += int(pred.get(name) == truth[name])
        if total:
            acc[name] = hits / total
    return acc


def mean_accuracy(acc: Mapping[str, float]) -> float:
    """Macro average over categories."""
    return float(np.mean(list(acc.values()))) if acc else float("nan")


def categories_below(acc: Mapping[str, float], threshold: float) -> list[str]:
    """Categories whose accuracy is under ``threshold`` (these go to humans), worst first."""
    return [k for k, v in sorted(acc.items(), key=lambda kv: (kv[1], kv[0])) if v < threshold]


def full_manual_label_count(attributes: Iterable[Mapping[str, str] | None], protocol: Protocol | None = None) -> int:
    """Labels a full manual pass over images with these ``attributes`` needs: the applicable categories
    of each. Exact where the truth is known; an image without it (None) counts every category (an upper
    bound)."""
    protocol = protocol or load_protocol()
    # which categories apply depends only on the answers to the categories others require
    parents = sorted({name for cat in protocol.categories for name in cat.requires})
    applicable_by_parents: dict[tuple[str | None, ...], int] = {}
    total = 0
    for attrs in attributes:
        if attrs is None:
            total += len(protocol.categories)
            continue
        key = tuple(attrs.get(name) for name in parents)
        if key not in applicable_by_parents:
            applicable_by_parents[key] = len(protocol.applicable(attrs))
        total += applicable_by_parents[key]
    return total
