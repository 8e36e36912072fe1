"""The pool's jobs and the sensor that keeps the pool above its threshold."""

import dagster as dg

from cosmicman.assets.common import sourcing_batches
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.pool import decide_sourcing, read_pool_stats

pool_job = dg.define_asset_job(
    "pool_job",
    selection=dg.AssetSelection.assets("raw_images", "filtered_images", "human_parsing"),
    description="Source one batch, filter it and parse the kept people: what the pool sensor runs.",
)
sourcing_job = dg.define_asset_job("sourcing_job", selection=dg.AssetSelection.assets("raw_images"))
filtering_job = dg.define_asset_job(
    "filtering_job", selection=dg.AssetSelection.assets("filtered_images", "human_parsing")
)
fake_person_job = dg.define_asset_job("fake_person_job", selection=dg.AssetSelection.assets("fake_person_classifier"))


@dg.sensor(job=pool_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def pool_threshold_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStoreResource, sourcing: SourcingResource
) -> dg.SensorResult:
    """Under the pool threshold, add one sourcing batch and run it; otherwise say why not.
    Lists the pool's batch markers (their names carry the counts) and reads the partition list, never a batch."""
    partitions = list(sourcing_batches.get_partition_keys(dynamic_partitions_store=context.instance))
    decision = decide_sourcing(read_pool_stats(object_store.store()), sourcing.pool_threshold, partitions)
    if decision.new_batch is None:
        return dg.SensorResult(skip_reason=decision.reason)
    context.log.info(decision.reason)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=decision.new_batch, partition_key=decision.new_batch)],
        dynamic_partitions_requests=[sourcing_batches.build_add_request([decision.new_batch])],
    )
