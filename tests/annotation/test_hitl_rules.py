"""The edges of the human-in-the-loop rules (cosmicman.annotation.rounds), one per rule."""

import pytest

from cosmicman.annotation.rounds import (
    DEFAULT_THRESHOLD,
    AnnotatorInForce,
    HitlRules,
    RoundPlan,
    categories_to_ask,
    close_round,
    plan_round,
)

BASE = AnnotatorInForce("probe-r0", "models/annotator/probe-r0.zip")
AFTER = AnnotatorInForce("probe-r1", "models/annotator/probe-r1.zip")
POOL = [f"img{i:02d}" for i in range(20)]


def _plan(round, accuracy, rules, asked_before=(), can_label=lambda _: True):
    return plan_round(round, BASE, accuracy, POOL, asked_before, can_label, 100, rules)


def test_threshold_exactly_passes_just_under_goes_to_humans():
    assert DEFAULT_THRESHOLD == 0.85 and HitlRules().threshold == DEFAULT_THRESHOLD
    acc = {"at": 0.85, "under": 0.85 - 1e-9, "over": 0.9}
    assert categories_to_ask(acc, 2, HitlRules()) == ("under",)
    assert _plan(2, acc, HitlRules()).categories_sent == ("under",)


def test_the_assets_take_the_papers_threshold_from_the_annotator_resource():
    """What the assets run with is the resource's rules, not the library's default: its edge is pinned too."""
    from cosmicman.resources.annotation import AnnotatorResource

    rules = AnnotatorResource().rules()
    acc = {"at": 0.85, "under": 0.85 - 1e-9, "over": 0.9}
    assert rules.threshold == 0.85 and categories_to_ask(acc, 2, rules) == ("under",)
    assert rules.first_round == "all" and categories_to_ask(acc, 1, rules) == ("under", "at", "over")


def test_round_one_sends_every_applicable_category_under_the_papers_rule():
    acc = {"a": 0.99, "b": 0.5, "c": 0.85}
    assert HitlRules().first_round == "all"
    assert _plan(1, acc, HitlRules()).categories_sent == ("b", "c", "a")  # all of them, worst first
    assert _plan(1, acc, HitlRules(first_round="below_threshold")).categories_sent == ("b",)
    assert _plan(2, acc, HitlRules()).categories_sent == ("b",)
    with pytest.raises(ValueError):
        HitlRules(first_round="some")  # type: ignore[arg-type]


def test_sample_is_deterministic_fresh_and_labellable():
    rules = HitlRules(sample_size=5, seed=3)
    acc = {"a": 0.5}
    plan = _plan(2, acc, rules, asked_before=POOL[:10], can_label=lambda p: p != "img15")
    assert len(plan.sampled) == 5 and plan.sampled == _plan(2, acc, rules, POOL[:10], lambda p: p != "img15").sampled
    assert not set(plan.sampled) & set(POOL[:10]) and "img15" not in plan.sampled
    assert _plan(2, {"a": 0.9}, rules).sampled == ()  # nothing sent, nothing sampled


def _closed(round, before, after, rules, asked=10):
    plan = RoundPlan(round, BASE, before, tuple(before), ("img00",), 100, rules.threshold)
    return close_round(plan, AFTER, after, asked, rules)


def test_max_rounds_stop_exactly_at_the_limit():
    rules = HitlRules(max_rounds=3)
    before, after = {"a": 0.5}, {"a": 0.6}
    assert (_closed(2, before, after, rules).stop, _closed(2, before, after, rules).stop_reason) == (False, "continue")
    last = _closed(3, before, after, rules)
    assert last.stop and last.stop_reason == "max rounds (3)" and last.adopted
    assert last.in_force == AnnotatorInForce("probe-r1", AFTER.key, 3, (3,))


def test_no_gain_is_not_adopted_and_stops():
    rules = HitlRules(min_gain=0.25)
    for after in ({"a": 0.5}, {"a": 0.75}, {"a": 0.4}):  # gain <= min_gain (0.25 exactly: not enough)
        res = _closed(1, {"a": 0.5}, after, rules)
        assert res.stop and res.stop_reason == "no gain" and not res.adopted and res.in_force == BASE
    gained = _closed(1, {"a": 0.5}, {"a": 0.8}, rules)
    assert gained.adopted and not gained.stop
    passing = _closed(1, {"a": 0.5}, {"a": 0.875}, rules)
    assert passing.stop and passing.stop_reason == "all pass" and passing.adopted
    nothing_asked = _closed(1, {"a": 0.5}, {"a": 0.9}, rules, asked=0)
    assert not nothing_asked.adopted and nothing_asked.accuracy_after == {"a": 0.5}
