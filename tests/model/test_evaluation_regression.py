"""A variant's evaluation against the previous dataset version's (cosmicman.model.evaluation_regression)."""

import pytest

from cosmicman.model.evaluation_regression import (
    EvaluationFigures,
    RegressionTolerance,
    RegressionVerdict,
    previous_version_evaluation,
)

PREVIOUS = EvaluationFigures("v0001", 0.6, 10.0)
TOL = RegressionTolerance()


def verdict(acc_all: float, fd: float) -> RegressionVerdict:
    return RegressionVerdict(EvaluationFigures("v0002", acc_all, fd), PREVIOUS, TOL)


def test_default_tolerances():
    assert (TOL.acc_all_drop, TOL.fd_rise) == (0.03, 0.20)
    with pytest.raises(ValueError):
        RegressionTolerance(acc_all_drop=-0.01)


def test_accuracy_equal_or_within_tolerance_passes_just_worse_fails():
    assert verdict(0.6, 10.0).passed
    assert verdict(0.6 - 0.03, 10.0).passed
    just_worse = verdict(0.6 - 0.03 - 1e-9, 10.0)
    assert not just_worse.passed and just_worse.acc_all_worse and not just_worse.fd_worse
    assert "v0002 against v0001: acc_all 0.5700 vs 0.6000 (worse" in just_worse.reason


def test_frechet_distance_rise_within_tolerance_passes_just_over_fails():
    assert verdict(0.6, 10.0 * 1.2).passed
    just_worse = verdict(0.6, 10.0 * 1.2 + 1e-9)
    assert not just_worse.passed and just_worse.fd_worse and not just_worse.acc_all_worse
    assert verdict(0.7, 5.0).passed  # better on both


def test_no_previous_version_passes_saying_so():
    alone = RegressionVerdict(EvaluationFigures("v0001", 0.1, 99.0), None, TOL)
    assert alone.passed and alone.reason == "no evaluation on a dataset version before v0001: nothing to compare"


def test_previous_is_the_latest_evaluation_on_another_dataset_version():
    current = EvaluationFigures("v0003", 0.5, 1.0)
    earlier = [
        EvaluationFigures("v0003", 0.4, 1.0),  # the same version evaluated before: not a previous version
        EvaluationFigures("v0002", 0.3, 1.0),
        EvaluationFigures("v0001", 0.2, 1.0),
    ]
    assert previous_version_evaluation(current, earlier) == earlier[1]
    assert previous_version_evaluation(current, earlier[:1]) is None
