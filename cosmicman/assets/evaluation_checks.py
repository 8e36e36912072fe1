"""Checks on evaluations: a variant is not worse than it was on the previous dataset version (a warning).

Partitioned like ``evaluation`` (one verdict per variant). It reads the instance's evaluation history of the
variant: each materialization records the dataset version its model trained on (``dataset_version``), and its
``acc_all`` and ``frechet_distance`` are means over the variant's training seeds, so two versions are compared
on their seeds' averages, not on one draw each.
"""

from collections.abc import Iterator

import dagster as dg
import pydantic

from cosmicman.assets.partitioned_checks import partitioned_asset_check
from cosmicman.model.evaluation_regression import (
    EvaluationFigures,
    RegressionTolerance,
    RegressionVerdict,
    previous_version_evaluation,
)

EVALUATION = dg.AssetKey("evaluation")
PAGE = 50


class RegressionToleranceConfig(dg.Config):
    """How much worse than the previous dataset version's evaluation still passes
    (``cosmicman.model.evaluation_regression`` says why the defaults)."""

    acc_all_drop: float = pydantic.Field(
        default=RegressionTolerance.acc_all_drop, ge=0.0, description="how far acc_all may fall (absolute)"
    )
    fd_rise: float = pydantic.Field(
        default=RegressionTolerance.fd_rise, ge=0.0, description="how far the Fréchet distance may rise (a share)"
    )


def _figures(materialization: dg.AssetMaterialization | None) -> EvaluationFigures | None:
    """The compared figures of one evaluation; None for one recorded before evaluations named their dataset."""
    metadata = materialization.metadata if materialization else {}
    if not {"dataset_version", "acc_all", "frechet_distance"} <= set(metadata):
        return None
    return EvaluationFigures(
        str(metadata["dataset_version"].value),
        float(metadata["acc_all"].value),  # type: ignore[arg-type]
        float(metadata["frechet_distance"].value),  # type: ignore[arg-type]
    )


def _history(instance: dg.DagsterInstance, variant: str) -> Iterator[EvaluationFigures | None]:
    """The variant's evaluations, newest first, a page at a time."""
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=EVALUATION, asset_partitions=[variant]), limit=PAGE, cursor=cursor
        )
        for record in page.records:
            yield _figures(record.asset_materialization)
        if not page.has_more:
            return
        cursor = page.cursor


def build_evaluation_checks(variants: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    """The checks of ``evaluation`` partitioned by ``variants``, the training partitions of the code location."""

    @partitioned_asset_check(
        variants,
        asset=EVALUATION,
        description="The variant's latest evaluation is not worse than its latest evaluation on the previous "
        "dataset version: acc_all does not fall and the Fréchet distance does not rise beyond a tolerance. "
        "Passes, saying so, when there is no previous version.",
    )
    def evaluation_not_worse_than_previous_version(
        context: dg.AssetCheckExecutionContext, config: RegressionToleranceConfig
    ) -> dg.AssetCheckResult:
        variant = context.partition_key
        history = _history(context.instance, variant)
        current = next(history, None)
        if current is None:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"evaluation[{variant}]'s latest materialization records no dataset_version, acc_all "
                "and frechet_distance",
            )
        previous = previous_version_evaluation(current, (e for e in history if e is not None))
        verdict = RegressionVerdict(current, previous, RegressionTolerance(config.acc_all_drop, config.fd_rise))
        figures = {"dataset_version": current.dataset_version}
        if previous is not None:
            figures.update(previous_dataset_version=previous.dataset_version)
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=verdict.reason,
            metadata={
                **figures,
                "acc_all": dg.MetadataValue.float(round(current.acc_all, 4)),
                "frechet_distance": dg.MetadataValue.float(round(current.frechet_distance, 4)),
                **(
                    {
                        "previous_acc_all": dg.MetadataValue.float(round(previous.acc_all, 4)),
                        "previous_frechet_distance": dg.MetadataValue.float(round(previous.frechet_distance, 4)),
                    }
                    if previous is not None
                    else {}
                ),
                "acc_all_drop_allowed": config.acc_all_drop,
                "fd_rise_allowed": config.fd_rise,
            },
        )

    return [evaluation_not_worse_than_previous_version]
