"""Is the annotator in force after a round not worse on I_e than the one in force before it? (Dagster-free)

The round rules (:func:`cosmicman.annotation.rounds.close_round`) decide adoption; this is the guard over
their outcome before the pool is annotated. Both accuracies are the ones the round measured on I_e: the
annotator before it (when the round was planned) and the fine-tuned one (when it closed). A round that was
not adopted leaves the annotator before it in force, so nothing changed. The rules can adopt a worse one:
a round where every category passes stops the loop and is adopted even when the mean fell (one category
crossing 85 % while others drop), and ``min_gain`` may be set below 0.

The yardstick is the mean per-category accuracy, the one the rules' gain uses; categories that fell are
listed with the verdict but do not decide it. ``tolerance`` (default 0: not worse at all) is how far the
mean may fall.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cosmicman.annotation.accuracy import mean_accuracy
from cosmicman.annotation.rounds import RoundResult


@dataclass(frozen=True)
class InForceComparison:
    """The annotator in force after ``round`` against the one in force before it, on I_e."""

    round: int
    previous: str
    current: str
    adopted: bool
    accuracy_previous: float
    accuracy_current: float
    tolerance: float
    fallen: dict[str, tuple[float, float]]

    @property
    def change(self) -> float:
        return self.accuracy_current - self.accuracy_previous

    @property
    def passed(self) -> bool:
        return self.change >= -self.tolerance

    @property
    def reason(self) -> str:
        if not self.adopted:
            return f"round {self.round} was not adopted: {self.previous} stays in force, nothing changed"
        verdict = "not worse than" if self.passed else "worse than"
        return (
            f"{self.current} (in force after round {self.round}) is {verdict} {self.previous} on I_e: "
            f"mean accuracy {self.accuracy_current:.4f} vs {self.accuracy_previous:.4f} "
            f"(change {100 * self.change:+.2f} points, tolerance {100 * self.tolerance:.2f})"
        )


def fallen_categories(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """The categories measured both times whose accuracy fell: ``{category: (before, after)}``."""
    return {c: (before[c], after[c]) for c in sorted(before) if c in after and after[c] < before[c]}


def compare_in_force(result: RoundResult, tolerance: float = 0.0) -> InForceComparison:
    """The annotator in force after the round ``result`` closed against the one in force before it."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    before = dict(result.accuracy_before)
    current = dict(result.accuracy_after) if result.adopted else before
    return InForceComparison(
        round=result.round,
        previous=result.annotator_before,
        current=result.annotator_in_force,
        adopted=result.adopted,
        accuracy_previous=mean_accuracy(before),
        accuracy_current=mean_accuracy(current),
        tolerance=tolerance,
        fallen=fallen_categories(before, current),
    )
