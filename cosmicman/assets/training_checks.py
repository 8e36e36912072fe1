"""Checks on trained models: a variant's model loads and has finite weights, before it is evaluated.

Partitioned like ``daring_unet`` (one verdict per variant), it rides along with ``daring_unet`` in every run
that materializes it (``training_job`` and automation's runs alike: a check runs with its asset by default).
Blocking: a failure stops anything downstream in that run; ``evaluation``'s automation condition waits while a
blocking check of its dependencies failed (``cosmicman.assets.automation``), and ``evaluation_job`` runs the check
again before it evaluates (``cosmicman.jobs.training``), so a broken model is never evaluated.
"""

import dagster as dg

from cosmicman.assets.partitioned_checks import partitioned_asset_check

DARING_UNET = dg.AssetKey("daring_unet")


def build_training_checks(variants: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    """The checks of ``daring_unet`` partitioned by ``variants``, the training partitions of the code location
    (an environment may narrow them)."""

    @partitioned_asset_check(
        variants,
        asset=DARING_UNET,
        blocking=True,
        description="The variant's model folder loads as evaluation loads it (diffusers pipeline, Prime "
        "activation re-applied) and every weight of every component is finite.",
    )
    def model_loads_with_finite_weights(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from cosmicman.model.weights_check import check_model_weights  # torch and diffusers: heavy to import

        variant = context.partition_key
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DARING_UNET, asset_partitions=[variant]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        url = materialization.metadata.get("output_url") if materialization else None
        if url is None:
            return dg.AssetCheckResult(
                passed=False, description=f"daring_unet[{variant}] has no materialization naming its output_url"
            )
        report = check_model_weights(str(url.value))
        return dg.AssetCheckResult(
            passed=report.passed,
            description=report.reason,
            metadata={
                "model_url": dg.MetadataValue.path(str(url.value)),
                "loads": report.load_error is None,
                "weights_scanned": sum(report.values.values()),
                "non_finite": report.non_finite_total,
                "non_finite_tensors": dg.MetadataValue.json(report.non_finite),
                **({"load_error": report.load_error} if report.load_error else {}),
            },
        )

    return [model_loads_with_finite_weights]
