"""Checks on the labelling loop: the annotator in force is not worse on I_e than the one before it.

The check blocks the pool's annotation. It rides along with ``annotator`` in ``labels_job`` (a check runs with
its asset by default) and is selected again in ``annotations_job`` (``cosmicman.jobs.annotation``), whose every
run annotates one sourcing batch: a blocking check in the same run as ``annotations`` is a step ``annotations``
waits on, so when it fails Dagster does not execute ``annotations[batch]`` (nor ``captions[batch]``) and the run
shows why. It is not partitioned: it judges the ledger's latest closed round, the one whose annotator would
label every batch (a cheap read of the ledger, so each batch's run judges it again).
"""

import dagster as dg
import pydantic

from cosmicman.annotation.in_force_check import compare_in_force
from cosmicman.annotation.ledger import RoundLedger
from cosmicman.assets.metadata import table
from cosmicman.resources.storage import ObjectStoreResource


class InForceToleranceConfig(dg.Config):
    tolerance: float = pydantic.Field(
        default=0.0, ge=0.0, description="how far the mean per-category accuracy on I_e may fall (0: not at all)"
    )


@dg.asset_check(
    asset="annotator",
    blocking=True,
    description="The annotator in force after the latest closed round is not worse on I_e (mean per-category "
    "accuracy) than the one in force before it; blocks annotating the pool when it is.",
)
def annotator_in_force_not_worse(
    context: dg.AssetCheckExecutionContext, config: InForceToleranceConfig, object_store: ObjectStoreResource
) -> dg.AssetCheckResult:
    results = RoundLedger(object_store.store()).results()
    if not results:
        return dg.AssetCheckResult(
            passed=True, description="no round has closed yet: the base annotator is in force, nothing to compare"
        )
    comparison = compare_in_force(results[-1], config.tolerance)
    return dg.AssetCheckResult(
        passed=comparison.passed,
        description=comparison.reason,
        metadata={
            "round": comparison.round,
            "adopted": comparison.adopted,
            "previous": comparison.previous,
            "current": comparison.current,
            "mean_accuracy_previous": dg.MetadataValue.float(round(comparison.accuracy_previous, 4)),
            "mean_accuracy_current": dg.MetadataValue.float(round(comparison.accuracy_current, 4)),
            "change_points": dg.MetadataValue.float(round(100 * comparison.change, 2)),
            "tolerance_points": dg.MetadataValue.float(round(100 * comparison.tolerance, 2)),
            "categories_fallen": table(
                [{"category": c, "before": b, "after": a} for c, (b, a) in comparison.fallen.items()],
                columns=["category", "before", "after"],
            ),
        },
    )
