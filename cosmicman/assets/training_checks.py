"""Checks on trained models: a variant's model loads and has finite weights, before it is evaluated.

Partitioned like ``daring_unet`` (one verdict per variant), it rides along with ``daring_unet`` in every run
that materializes it (``training_job`` and automation's runs alike: a check runs with its asset by default).
Blocking: a failure stops anything downstream in that run; ``evaluation``'s automation condition waits while a
blocking check of its dependencies failed (``cosmicman.assets.automation``), and ``evaluation_job`` runs the check
again before it evaluates (``cosmicman.jobs.training``), so a broken model is never evaluated.
"""

from collections.abc import Mapping

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
        "activation re-applied) and every weight of every component is finite, for every training seed's model.",
    )
    def model_loads_with_finite_weights(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from cosmicman.model.weights_check import check_model_weights  # torch and diffusers: heavy to import

        variant = context.partition_key
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DARING_UNET, asset_partitions=[variant]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        urls = model_urls(materialization.metadata) if materialization else []
        if not urls:
            return dg.AssetCheckResult(
                passed=False, description=f"daring_unet[{variant}] has no materialization naming its output_url"
            )
        reports = [check_model_weights(url) for url in urls]
        failed = [(url, r) for url, r in zip(urls, reports) if not r.passed]
        first_error = next((r.load_error for r in reports if r.load_error), None)
        return dg.AssetCheckResult(
            passed=not failed,
            description=(
                "; ".join(f"{url}: {r.reason}" for url, r in failed)
                if failed
                else reports[0].reason
                if len(reports) == 1
                else f"all {len(reports)} seeds' models: {reports[0].reason}"
            ),
            metadata={
                "model_url": dg.MetadataValue.path(urls[0]),
                "models_checked": len(urls),
                "loads": all(r.load_error is None for r in reports),
                "weights_scanned": sum(sum(r.values.values()) for r in reports),
                "non_finite": sum(r.non_finite_total for r in reports),
                "non_finite_tensors": dg.MetadataValue.json(
                    {url: r.non_finite for url, r in zip(urls, reports) if r.non_finite}
                    if len(urls) > 1
                    else reports[0].non_finite
                ),
                **({"load_error": first_error} if first_error else {}),
            },
        )

    return [model_loads_with_finite_weights]


def model_urls(metadata: Mapping[str, dg.MetadataValue]) -> list[str]:
    """Every seed's model of a ``daring_unet`` materialization (its ``models`` table), or the one ``output_url``
    of a materialization from before replicates."""
    models = metadata.get("models")
    if isinstance(models, dg.TableMetadataValue):
        return [str(r.data["output_url"]) for r in models.records]
    url = metadata.get("output_url")
    return [] if url is None else [str(url.value)]
