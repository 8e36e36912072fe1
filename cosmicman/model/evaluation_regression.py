"""Is a variant's evaluation not worse than its evaluation on the previous dataset version? (Dagster-free)

A new CosmicMan-HQ version should not make a variant worse: semantic accuracy ``acc_all`` should not fall
and the Fréchet distance should not rise, beyond a tolerance. The previous version's evaluation is the latest
one of the same variant recorded on another dataset version (dataset versions only move forward: every model
trains on the latest one).

Default tolerances. Prompts, generation seeds and the feature extractor are the same across versions, so the
figures move only with the model, but a model retrained on other data moves them by chance too:

- ``acc_all`` may fall by 0.03 (3 points): one binomial standard error of an accuracy near 0.5 over the
  local default of 16 prompts of about 20 questions each (sqrt(0.25 / 320) = 0.028).
- the Fréchet distance may rise by 20 %: over 16 generated images its estimate is dominated by sampling
  error, and equally good models differ by tens of percent; more than a fifth is a visible change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationFigures:
    """One evaluation of a variant: the dataset version its model trained on and the figures compared."""

    dataset_version: str
    acc_all: float
    frechet_distance: float


@dataclass(frozen=True)
class RegressionTolerance:
    """``acc_all_drop``: how far acc_all may fall (absolute); ``fd_rise``: how far the Fréchet distance may rise
    (a share of the previous one)."""

    acc_all_drop: float = 0.03
    fd_rise: float = 0.20

    def __post_init__(self) -> None:
        if self.acc_all_drop < 0 or self.fd_rise < 0:
            raise ValueError(f"tolerances must be >= 0, got {self}")


def previous_version_evaluation(
    current: EvaluationFigures, newest_first: Iterable[EvaluationFigures]
) -> EvaluationFigures | None:
    """The latest evaluation on another dataset version than ``current``'s (``newest_first``: earlier ones)."""
    return next((e for e in newest_first if e.dataset_version != current.dataset_version), None)


@dataclass(frozen=True)
class RegressionVerdict:
    current: EvaluationFigures
    previous: EvaluationFigures | None
    tolerance: RegressionTolerance

    @property
    def acc_all_worse(self) -> bool:
        return self.previous is not None and self.current.acc_all < self.previous.acc_all - self.tolerance.acc_all_drop

    @property
    def fd_worse(self) -> bool:
        return self.previous is not None and self.current.frechet_distance > self.previous.frechet_distance * (
            1 + self.tolerance.fd_rise
        )

    @property
    def passed(self) -> bool:
        return not (self.acc_all_worse or self.fd_worse)

    @property
    def reason(self) -> str:
        cur, prev, tol = self.current, self.previous, self.tolerance
        if prev is None:
            return f"no evaluation on a dataset version before {cur.dataset_version}: nothing to compare"
        acc = (
            f"acc_all {cur.acc_all:.4f} vs {prev.acc_all:.4f} "
            f"({'worse' if self.acc_all_worse else 'not worse'}, may fall by {tol.acc_all_drop})"
        )
        fd = (
            f"FD {cur.frechet_distance:.4g} vs {prev.frechet_distance:.4g} "
            f"({'worse' if self.fd_worse else 'not worse'}, may rise by {100 * tol.fd_rise:.0f} %)"
        )
        return f"{cur.dataset_version} against {prev.dataset_version}: {acc}; {fd}"
