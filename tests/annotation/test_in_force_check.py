"""The annotator in force after a round against the one before it (cosmicman.annotation.in_force_check)."""

import pytest

from cosmicman.annotation.in_force_check import compare_in_force, fallen_categories
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, RoundResult, close_round

BASE = AnnotatorInForce("probe-r0", "models/annotator/probe-r0.zip")
AFTER = AnnotatorInForce("probe-r1", "models/annotator/probe-r1.zip")
# threshold 0.5 so that the accuracies below are exact binary fractions
RULES = HitlRules(threshold=0.5)


def closed_round(before: dict[str, float], after: dict[str, float], rules: HitlRules = RULES) -> RoundResult:
    plan = RoundPlan(1, BASE, before, tuple(before), ("img00",), 100, rules.threshold)
    return close_round(plan, AFTER, after, 10, rules)


def test_equal_mean_passes_just_worse_fails():
    before = {"a": 0.25, "b": 1.0}  # mean 0.625
    equal = closed_round(before, {"a": 0.5, "b": 0.75})  # every category passes: adopted
    assert equal.adopted and equal.stop_reason == "all pass"
    assert compare_in_force(equal).passed
    worse = closed_round(before, {"a": 0.5, "b": 0.74})  # every category passes, the mean fell
    assert worse.adopted
    comparison = compare_in_force(worse)
    assert not comparison.passed and comparison.current == "probe-r1" and comparison.previous == "probe-r0"
    assert comparison.change == pytest.approx(-0.005)
    assert comparison.fallen == {"b": (1.0, 0.74)}
    assert "is worse than probe-r0" in comparison.reason and "-0.50 points" in comparison.reason


def test_tolerance_bounds_the_fall():
    worse = closed_round({"a": 0.25, "b": 1.0}, {"a": 0.5, "b": 0.5})  # mean 0.625 -> 0.5
    assert not compare_in_force(worse, tolerance=0.125 - 2**-20).passed
    assert compare_in_force(worse, tolerance=0.125).passed
    with pytest.raises(ValueError):
        compare_in_force(worse, tolerance=-0.1)


def test_a_round_not_adopted_changes_nothing():
    no_gain = closed_round({"a": 0.25, "b": 0.25}, {"a": 0.125, "b": 0.25})
    assert not no_gain.adopted
    comparison = compare_in_force(no_gain)
    assert comparison.passed and comparison.current == comparison.previous == "probe-r0"
    assert comparison.change == 0 and "not adopted" in comparison.reason


def test_fallen_categories_only_those_measured_both_times():
    assert fallen_categories({"a": 0.5, "b": 0.5, "c": 0.5}, {"a": 0.25, "b": 0.75}) == {"a": (0.5, 0.25)}
