"""Measuring an annotator on I_e and the hierarchy's free labels (cosmicman.annotation.accuracy), on a
ten-category protocol whose every ``requires`` shape the rules read (tests/support/tiny_protocol.py)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import pytest
from PIL import Image

from cosmicman.annotation.accuracy import (
    categories_below,
    full_manual_label_count,
    implied_labels,
    mean_accuracy,
    merge_human_answers,
    per_category_accuracy,
)
from cosmicman.annotation.items import AnnotationItem, LabelRecord
from cosmicman.core.protocol import load_protocol
from tests.support.tiny_protocol import TINY


class Scripted:
    """An annotator that answers from a script and records what it was asked."""

    version = "scripted"

    def __init__(self, answers: Sequence[Mapping[str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list, list[str] | None]] = []

    def predict(self, images, categories=None):
        self.calls.append((list(images), None if categories is None else list(categories)))
        return [dict(a) for a in self.answers]


TRUTH = [
    {"mood": "calm", "cap_on": "yes", "cap_tint": "red", "cap_kind": "flat", "scene": "busy", "glasses": "no"},
    {
        "mood": "angry",
        "cap_on": "no",
        "bare_reason": "heat",
        "scene": "plain",
        "scene_tint": "white",
        "glasses": "no",
    },
    # scene_tint applies (plain scene) but the truth does not answer it: left out, not a miss
    {"mood": "calm", "cap_on": "no", "bare_reason": "style", "fringe": "yes", "scene": "plain", "glasses": "unsure"},
    # cap_tint answered although there is no cap: it does not apply by the truth, so it is not measured
    {
        "mood": "calm",
        "cap_on": "no",
        "cap_tint": "blue",
        "bare_reason": "heat",
        "fringe": "no",
        "scene": "busy",
        "glasses": "no",
    },
]
PREDICTED = [
    {"mood": "calm", "cap_on": "yes", "cap_tint": "blue", "scene": "busy", "glasses": "no"},  # no cap_kind: wrong
    {"mood": "calm", "cap_on": "no", "bare_reason": "heat", "scene": "plain", "scene_tint": "white", "glasses": "no"},
    {"mood": "calm", "cap_on": "no", "fringe": "yes", "scene": "busy", "glasses": "unsure"},
    {
        "mood": "calm",
        "cap_on": "no",
        "cap_tint": "blue",
        "bare_reason": "style",
        "fringe": "no",
        "scene": "busy",
        "glasses": "no",
    },
]
# per category: the items it applies to by the truth, and the hits among them
EXPECTED = {
    "mood": 3 / 4,
    "cap_on": 1.0,
    "cap_tint": 0.0,  # item 0 only (item 3 has no cap)
    "cap_kind": 0.0,  # item 0, not predicted
    "bare_reason": 1 / 3,
    "scene": 3 / 4,
    "scene_tint": 1.0,  # item 1 only (item 2's truth leaves it out)
    "glasses": 1.0,
    "fringe": 1.0,  # items 2 and 3 (calm, no cap)
}  # lens_tint applies to no item: left out


def _items() -> list[AnnotationItem]:
    return [AnnotationItem(f"sha{i}", Image.new("RGB", (2, 2)), t) for i, t in enumerate(TRUTH)]


def test_accuracy_counts_only_items_the_category_applies_to_by_truth():
    items = _items()
    annotator = Scripted(PREDICTED)
    acc = per_category_accuracy(annotator, items, protocol=TINY)
    assert acc == pytest.approx(EXPECTED) and list(acc) == list(EXPECTED)  # protocol order
    ((images, asked),) = annotator.calls
    assert images == [it.image for it in items]
    assert asked == [c.name for c in TINY.categories]


def test_accuracy_of_named_categories_in_their_order_or_from_given_predictions():
    annotator = Scripted(PREDICTED)
    acc = per_category_accuracy(annotator, _items(), ["bare_reason", "mood", "lens_tint"], TINY)
    assert acc == pytest.approx({"bare_reason": 1 / 3, "mood": 3 / 4}) and list(acc) == ["bare_reason", "mood"]
    assert annotator.calls[0][1] == ["bare_reason", "mood", "lens_tint"]
    unused = Scripted([])
    given = per_category_accuracy(unused, _items(), ["mood"], TINY, predictions=PREDICTED)
    assert given == {"mood": 0.75} and unused.calls == []


def test_accuracy_refuses_an_item_without_truth():
    items = [*_items(), AnnotationItem("nosha", Image.new("RGB", (2, 2)), None)]
    with pytest.raises(ValueError, match="^eval item nosha has no ground truth$"):
        per_category_accuracy(Scripted([*PREDICTED, {}]), items, ["mood"], TINY)


def test_mean_is_the_macro_average_and_nan_when_nothing_was_measured():
    assert mean_accuracy({"a": 0.5, "b": 1.0, "c": 0.0}) == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly: no "mean of empty slice" in the logs
        assert math.isnan(mean_accuracy({}))


def test_categories_below_worst_first_ties_by_name_the_threshold_passes():
    acc = {"b": 0.5, "e": 0.85, "a": 0.5, "d": 0.2, "c": 0.85 - 1e-9, "f": 0.9}
    assert categories_below(acc, 0.85) == ["d", "a", "b", "c"]
    assert categories_below(acc, 0.2) == []


def test_detail_answers_imply_their_one_yes_no_parent():
    asked = {
        "answered-first": ["cap_tint", "cap_kind"],  # a tint given: there is a cap, whatever follows
        "unanswered-first": ["cap_kind", "cap_tint"],  # ... whatever came before
        "none-answered": ["cap_tint", "mood"],  # no tint: no cap; mood requires nothing
        "needs-no-cap": ["bare_reason"],  # its parent must be "no": an unanswered one implies nothing
        "three-answers": ["lens_tint"],  # its parent is not yes/no
        "not-yes-no": ["scene_tint"],
        "two-parents": ["fringe"],  # unanswered with two parents: nothing is implied
        "both-given": ["fringe", "scene_tint", "mood"],  # answers imply all their parents, not mood (answered)
        "parent-answered": ["cap_tint"],  # the human said "no" to the cap too: left to them
    }
    human = [
        LabelRecord("answered-first", "cap_tint", "red", "human", 4),
        LabelRecord("unanswered-first", "cap_tint", "red", "human", 4),
        LabelRecord("both-given", "fringe", "yes", "human", 4),
        LabelRecord("both-given", "scene_tint", "white", "human", 4),
        LabelRecord("both-given", "mood", "angry", "human", 4),
        LabelRecord("parent-answered", "cap_on", "no", "human", 4),
        LabelRecord("never-asked", "cap_tint", "blue", "human", 4),
    ]
    got = implied_labels(asked, human, 4, TINY)
    assert got == [
        LabelRecord("answered-first", "cap_on", "yes", "implied", 4),
        LabelRecord("unanswered-first", "cap_on", "yes", "implied", 4),
        LabelRecord("none-answered", "cap_on", "no", "implied", 4),
        LabelRecord("both-given", "cap_on", "no", "implied", 4),
        LabelRecord("both-given", "scene", "plain", "implied", 4),
    ]
    assert implied_labels({}, human, 4, TINY) == []


def test_merge_uses_the_protocol_it_is_given():
    predicted = {"mood": "angry", "cap_on": "no", "bare_reason": "heat", "scene": "busy"}
    merged = merge_human_answers(predicted, {"cap_tint": "red", "scene": "plain"}, TINY)
    assert merged == {"mood": "angry", "cap_on": "yes", "cap_tint": "red", "scene": "plain"}
    assert list(merged) == ["mood", "cap_on", "cap_tint", "scene"]  # parents before children


def test_full_manual_count_is_the_applicable_categories_and_all_without_truth():
    calm_cap = {"mood": "calm", "cap_on": "yes", "cap_tint": "red", "cap_kind": "flat", "scene": "busy"}
    calm_bare = {"mood": "calm", "cap_on": "no", "bare_reason": "heat", "fringe": "no", "scene": "plain"}
    # calm_cap: mood cap_on cap_tint cap_kind scene glasses = 6; calm_bare: mood cap_on bare_reason scene
    # scene_tint glasses fringe = 7; no truth: all 10
    assert full_manual_label_count([calm_cap], TINY) == 6
    assert full_manual_label_count([calm_bare], TINY) == 7
    assert full_manual_label_count([None], TINY) == 10
    other_cap = {**calm_cap, "cap_tint": "blue", "cap_kind": "round"}  # same parents, same count
    assert full_manual_label_count(iter([calm_cap, None, calm_bare, other_cap, calm_bare]), TINY) == 6 + 10 + 7 + 6 + 7
    assert full_manual_label_count([], TINY) == 0
    assert full_manual_label_count([None]) == len(load_protocol().categories)
