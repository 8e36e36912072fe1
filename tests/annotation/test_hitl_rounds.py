"""How a round is planned, recorded, closed and what it trains on (cosmicman.annotation.rounds), beyond the
threshold and stop edges of test_hitl_rules.py: the sample I_r, the records' JSON, the labels of a round."""

from __future__ import annotations

import hashlib
import math

import pytest

from cosmicman.annotation.items import LabelRecord
from cosmicman.annotation.rounds import (
    AnnotatorInForce,
    HitlRules,
    RoundPlan,
    RoundResult,
    categories_to_ask,
    close_round,
    labels_asked,
    plan_round,
    round_labels,
    select_round_sample,
    training_labels,
)
from tests.support.tiny_protocol import TINY

BASE = AnnotatorInForce("probe-r0", "models/annotator/probe-r0.zip")
R1 = AnnotatorInForce("probe-r1", "models/annotator/probe-r1.zip", 1, (1,))
AFTER = AnnotatorInForce("probe-r2", "models/annotator/probe-r2.zip")
POOL = [f"img{i:02d}" for i in range(8)]


def test_rules_and_annotator_defaults():
    rules = HitlRules()
    assert (rules.threshold, rules.sample_size, rules.seed, rules.max_rounds, rules.min_gain, rules.first_round) == (
        0.85,
        100,
        0,
        5,
        0.0,
        "all",
    )
    assert (BASE.round, BASE.label_rounds) == (0, ())


def test_rules_refuse_a_bad_first_round_and_fewer_than_one_round():
    assert HitlRules(max_rounds=1).max_rounds == 1
    with pytest.raises(ValueError, match=r"^max_rounds must be >= 1$"):
        HitlRules(max_rounds=0)
    with pytest.raises(ValueError, match=r"^first_round must be 'all' or 'below_threshold', got 'some'$"):
        HitlRules(first_round="some")
    assert HitlRules(first_round="below_threshold").first_round == "below_threshold"


def test_round_one_asks_every_category_worst_first_ties_by_name():
    acc = {"b": 0.9, "c": 0.5, "a": 0.9, "d": 0.2}
    assert categories_to_ask(acc, 1, HitlRules()) == ("d", "c", "a", "b")
    assert categories_to_ask(acc, 2, HitlRules()) == ("d", "c")
    assert categories_to_ask(acc, 1, HitlRules(first_round="below_threshold")) == ("d", "c")


def _rank(ids: list[str], seed: int) -> list[str]:
    return sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def test_sample_ranks_by_the_seeded_hash_whatever_the_pool_order():
    assert select_round_sample(POOL, 3, seed=5) == ["img01", "img04", "img03"]
    assert select_round_sample(POOL, 8, seed=5) == _rank(POOL, 5)
    assert select_round_sample(reversed(POOL + POOL), 8, seed=5) == _rank(POOL, 5)  # order and repeats ignored
    assert select_round_sample(POOL, 8, seed=6) == _rank(POOL, 6) != _rank(POOL, 5)
    assert select_round_sample(POOL, 3) == _rank(POOL, 0)[:3]
    assert select_round_sample(POOL, 20, seed=5) == _rank(POOL, 5)  # the whole pool when it is smaller
    assert select_round_sample(POOL, 1, seed=5) == ["img01"]
    assert select_round_sample(POOL, 0, seed=5) == select_round_sample(POOL, -2, seed=5) == []


def _plan(round: int, rules: HitlRules, asked_before=(), can_label=lambda _: True, acc=None) -> RoundPlan:
    acc = {"a": 0.5, "b": 0.9} if acc is None else acc
    return plan_round(round, R1, acc, POOL, asked_before, can_label, 250, rules)


def test_plan_samples_fresh_labellable_images_seeded_by_seed_plus_round():
    rules = HitlRules(sample_size=3, seed=3)
    plan = _plan(2, rules, asked_before=["img01", "img09"], can_label=lambda p: p != "img04")
    candidates = [p for p in POOL if p not in ("img01", "img04")]
    assert plan.sampled == tuple(_rank(candidates, 5)[:3]) == ("img03", "img05", "img00")
    assert plan == RoundPlan(2, R1, {"a": 0.5, "b": 0.9}, ("a",), plan.sampled, 250, 0.85)
    assert _plan(1, rules).sampled == tuple(_rank(POOL, 4)[:3]) and _plan(1, rules).categories_sent == ("a", "b")
    # a pool the backend cannot label at all, or one asked about already, gives no sample
    assert _plan(2, rules, can_label=lambda _: False).sampled == ()
    assert _plan(2, rules, asked_before=POOL).sampled == ()


def test_plan_numbers_rounds_from_one():
    with pytest.raises(ValueError, match=r"^rounds are numbered from 1, got 0$"):
        _plan(0, HitlRules())
    assert _plan(2, HitlRules(), acc={"a": 0.85}).sampled == ()  # nothing sent: nothing sampled


def test_plan_json_round_trips_with_its_field_names():
    plan = _plan(2, HitlRules(sample_size=2, threshold=0.75))
    d = plan.to_json()
    assert d == {
        "round": 2,
        "annotator_before": "probe-r1",
        "annotator_before_key": "models/annotator/probe-r1.zip",
        "annotator_before_round": 1,
        "label_rounds_before": [1],
        "accuracy_before": {"a": 0.5, "b": 0.9},
        "categories_sent": ["a"],
        "sampled": list(plan.sampled),
        "full_manual_labels": 250,
        "threshold": 0.75,
    }
    assert len(plan.sampled) == 2 and RoundPlan.from_json(d) == plan


def _closed(labels: int, after: dict[str, float], round: int = 2, rules: HitlRules | None = None) -> RoundResult:
    plan = RoundPlan(round, R1, {"a": 0.5, "b": 0.9}, ("a",), ("img00", "img01"), 250, 0.85)
    return close_round(plan, AFTER, after, labels, rules or HitlRules())


def test_an_adopted_round_records_its_annotator_and_label_rounds():
    res = _closed(50, {"a": 0.7, "b": 0.9})
    assert (res.adopted, res.stop, res.stop_reason) == (True, False, "continue")
    assert res.in_force == AnnotatorInForce("probe-r2", AFTER.key, 2, (1, 2))
    assert (res.round, res.annotator_before, res.annotator_after, res.annotator_in_force) == (
        2,
        "probe-r1",
        "probe-r2",
        "probe-r2",
    )
    assert res.accuracy_before == {"a": 0.5, "b": 0.9} and res.accuracy_after == {"a": 0.7, "b": 0.9}
    assert res.categories_sent == ("a",) and res.sampled_ids == ("img00", "img01") and res.full_manual_labels == 250
    assert res.mean_accuracy_before == pytest.approx(0.7) and res.mean_accuracy_after == pytest.approx(0.8)
    assert res.gain == pytest.approx(0.1) and res.cost_share == 0.2 and res.labels_asked == 50


def test_a_round_that_asked_nothing_keeps_the_annotator_before():
    res = _closed(0, {"a": 1.0, "b": 1.0})
    assert res.annotator_after == "probe-r1" and res.in_force == R1 and not res.adopted
    assert res.accuracy_after == {"a": 0.5, "b": 0.9} and res.gain == 0.0
    assert (res.stop, res.stop_reason) == (True, "no gain")
    # never adopted, whatever the stop rule says; one label is enough to adopt
    passing = _closed(0, {"a": 0.9, "b": 0.9}, rules=HitlRules(threshold=0.5))
    assert passing.stop_reason == "all pass" and not passing.adopted and passing.in_force == R1
    going_on = _closed(0, {"a": 0.9, "b": 0.9}, rules=HitlRules(min_gain=-0.1))
    assert going_on.stop_reason == "continue" and not going_on.adopted
    assert _closed(1, {"a": 0.6, "b": 0.9}).adopted


def test_the_gain_is_after_minus_before():
    rules = HitlRules(min_gain=0.05)
    assert _closed(5, {"a": 0.61, "b": 0.9}, rules=rules).stop_reason == "continue"  # +0.055
    fell = _closed(5, {"a": 0.4, "b": 0.9}, rules=HitlRules(min_gain=-0.5))  # -0.05, allowed
    assert fell.stop_reason == "continue" and fell.gain == pytest.approx(-0.05) and fell.adopted
    assert _closed(5, {"a": 0.6, "b": 0.9}, round=5).stop_reason == "max rounds (5)"
    assert _closed(5, {"a": 0.6, "b": 0.9}, round=4).stop_reason == "continue"


def test_cost_share_is_zero_without_a_manual_count():
    plan = RoundPlan(1, BASE, {"a": 0.5}, ("a",), ("img00",), 0, 0.85)
    assert close_round(plan, AFTER, {"a": 0.6}, 7, HitlRules()).cost_share == 0.0


def test_result_json_round_trips_with_its_figures():
    res = _closed(50, {"a": 0.7, "b": 0.9})
    d = res.to_json()
    assert d == {
        "round": 2,
        "annotator_before": "probe-r1",
        "annotator_before_key": "models/annotator/probe-r1.zip",
        "annotator_before_round": 1,
        "label_rounds_before": [1],
        "accuracy_before": {"a": 0.5, "b": 0.9},
        "categories_sent": ["a"],
        "sampled_ids": ["img00", "img01"],
        "full_manual_labels": 250,
        "threshold": 0.85,
        "annotator_after": "probe-r2",
        "accuracy_after": {"a": 0.7, "b": 0.9},
        "labels_asked": 50,
        "adopted": True,
        "annotator_in_force": "probe-r2",
        "annotator_key": "models/annotator/probe-r2.zip",
        "annotator_round": 2,
        "label_rounds": [1, 2],
        "stop": False,
        "stop_reason": "continue",
        "gain": pytest.approx(0.1),
        "cost_share": 0.2,
        "mean_accuracy_before": pytest.approx(0.7),
        "mean_accuracy_after": pytest.approx(0.8),
    }
    assert RoundResult.from_json(d) == res
    kept_before = _closed(0, {"a": 0.9, "b": 0.9})
    assert RoundResult.from_json(kept_before.to_json()) == kept_before


def test_round_labels_are_the_humans_then_the_implied_parents():
    plan = RoundPlan(3, R1, {"cap_tint": 0.5, "scene_tint": 0.6}, ("cap_tint", "scene_tint"), ("p0", "p1"), 9, 0.85)
    human = [LabelRecord("s0", "cap_tint", "red", "human", 3), LabelRecord("s0", "scene_tint", "gray", "human", 3)]
    got = round_labels(plan, ["s0", "s1"], human, TINY)
    assert got == [
        *human,
        LabelRecord("s0", "cap_on", "yes", "implied", 3),
        LabelRecord("s0", "scene", "plain", "implied", 3),
        LabelRecord("s1", "cap_on", "no", "implied", 3),  # no tint given for s1: no cap
    ]
    assert labels_asked(got) == 2 and labels_asked([]) == 0
    assert labels_asked([LabelRecord("s", "mood", "calm", "oracle")]) == 1


def test_training_labels_take_earlier_rounds_only_for_the_categories_trained_now():
    plan = RoundPlan(3, R1, {"cap_tint": 0.5}, ("cap_tint",), ("p0",), 9, 0.85)
    this_round = [LabelRecord("s0", "cap_tint", "red", "human", 3), LabelRecord("s0", "cap_on", "yes", "implied", 3)]
    earlier = [
        LabelRecord("e0", "mood", "calm", "human", 1),  # not trained now
        LabelRecord("e0", "cap_on", "no", "implied", 1),  # a parent implied now
        LabelRecord("e1", "cap_tint", "blue", "human", 2),  # a category sent now
    ]
    assert training_labels(plan, this_round, earlier) == [earlier[1], earlier[2], *this_round]
    assert training_labels(plan, [], earlier) == [earlier[2]]


def test_mean_of_nothing_is_nan():
    plan = RoundPlan(1, BASE, {}, (), (), 0, 0.85)
    assert math.isnan(close_round(plan, AFTER, {}, 0, HitlRules()).mean_accuracy_before)
