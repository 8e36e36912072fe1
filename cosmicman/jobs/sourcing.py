"""The pool's jobs and the sensor that keeps the pool above its threshold."""

import dagster as dg

from cosmicman.assets.common import sourcing_batches
from cosmicman.environments.settings import sensor_interval_s, sourcing_concurrency
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.pool import decide_sourcing, read_pool_stats

pool_job = dg.define_asset_job(
    "pool_job",
    selection=dg.AssetSelection.assets("raw_images", "filtered_images", "human_parsing"),
    description="Source one batch, filter it and parse the kept people: what the pool sensor runs.",
)
sourcing_job = dg.define_asset_job(
    "sourcing_job",
    selection=dg.AssetSelection.assets("raw_images"),
    description="Source one batch: fetch, decode-check, de-duplicate and store every source's items.",
)
filtering_job = dg.define_asset_job(
    "filtering_job",
    selection=dg.AssetSelection.assets("filtered_images", "human_parsing"),
    description="Filter one sourced batch and parse its kept people (a batch sourced before, filtered again).",
)
FAKE_PERSON_CLASSIFIER = dg.AssetKey("fake_person_classifier")
fake_person_job = dg.define_asset_job(
    "fake_person_job",
    selection=dg.AssetSelection.assets(FAKE_PERSON_CLASSIFIER),
    description="Train the fake-person head the filter chain uses.",
)


@dg.sensor(
    job=pool_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Adds and runs sourcing batches while the pool of kept images is under its threshold.",
)
def pool_threshold_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStoreResource, sourcing: SourcingResource
) -> dg.SensorResult:
    """Under the pool threshold, add sourcing batches and run them, up to ``COSMICMAN_SOURCING_CONCURRENCY`` in
    flight; otherwise say why not.
    Lists the pool's batch markers (their names carry the counts) and reads the partition list, never a batch.
    Waits for ``fake_person_classifier``: the filter chain needs its head (automation materializes it)."""
    if context.instance.get_latest_materialization_event(FAKE_PERSON_CLASSIFIER) is None:
        return dg.SensorResult(skip_reason="fake_person_classifier is not materialized yet: the filters need its head")
    partitions = list(sourcing_batches.get_partition_keys(dynamic_partitions_store=context.instance))
    decision = decide_sourcing(
        read_pool_stats(object_store.store()), sourcing.pool_threshold, partitions, sourcing_concurrency()
    )
    if not decision.new_batches:
        return dg.SensorResult(skip_reason=decision.reason)
    context.log.info(decision.reason)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=batch, partition_key=batch) for batch in decision.new_batches],
        dynamic_partitions_requests=[sourcing_batches.build_add_request(list(decision.new_batches))],
    )
