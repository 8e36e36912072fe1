"""Jobs (one per stage) and the sensors that keep the flywheel turning."""

import dagster as dg

from cosmicman.assets.common import sourcing_batches
from cosmicman.data.pool import decide_sourcing, read_pool_stats
from cosmicman.resources.annotation import LabellingResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource

pool_job = dg.define_asset_job(
    "pool_job", selection=dg.AssetSelection.assets("raw_images", "filtered_images", "human_parsing"),
    description="Source one batch, filter it and parse the kept people: what the pool sensor runs.")
sourcing_job = dg.define_asset_job("sourcing_job", selection=dg.AssetSelection.assets("raw_images"))
filtering_job = dg.define_asset_job(
    "filtering_job", selection=dg.AssetSelection.assets("filtered_images", "human_parsing"))
fake_person_job = dg.define_asset_job("fake_person_job", selection=dg.AssetSelection.assets("fake_person_classifier"))
annotation_round_job = dg.define_asset_job(
    "annotation_round_job", selection=dg.AssetSelection.assets("eval_set", "base_annotator", "labelling_tasks"),
    description="Measure the annotator on I_e and send the failing categories to the labelling backend.")
labels_job = dg.define_asset_job(
    "labels_job", selection=dg.AssetSelection.assets("human_labels", "annotator", "annotations", "captions"),
    description="Collect the round's human labels, fine-tune the annotator, re-annotate and caption the pool.")
dataset_job = dg.define_asset_job("dataset_job", selection=dg.AssetSelection.assets("cosmicman_hq"))
training_job = dg.define_asset_job("training_job", selection=dg.AssetSelection.assets("daring_unet"))
evaluation_job = dg.define_asset_job("evaluation_job", selection=dg.AssetSelection.assets("evaluation"))
ablation_job = dg.define_asset_job("ablation_job", selection=dg.AssetSelection.assets("ablation_table"))

ALL_JOBS = [pool_job, sourcing_job, filtering_job, fake_person_job, annotation_round_job, labels_job,
            dataset_job, training_job, evaluation_job, ablation_job]


@dg.sensor(job=pool_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def pool_threshold_sensor(context: dg.SensorEvaluationContext, object_store: ObjectStoreResource,
                          sourcing: SourcingResource) -> dg.SensorResult:
    """Under the pool threshold, add one sourcing batch and run it; otherwise say why not.
    Reads one small stats table and the partition list, never the batches themselves."""
    partitions = list(context.instance.get_dynamic_partitions(sourcing_batches.name))
    decision = decide_sourcing(read_pool_stats(object_store.store()), sourcing.pool_threshold, partitions)
    if decision.new_batch is None:
        return dg.SensorResult(skip_reason=decision.reason)
    context.log.info(decision.reason)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=decision.new_batch, partition_key=decision.new_batch)],
        dynamic_partitions_requests=[sourcing_batches.build_add_request([decision.new_batch])])


@dg.sensor(job=labels_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def labels_arrived_sensor(context: dg.SensorEvaluationContext, object_store: ObjectStoreResource,
                          labelling: LabellingResource) -> dg.SensorResult:
    """When every task of the open labelling round has its human answer, collect them and go on."""
    status = labelling.backend(object_store.store()).open_round_status()
    if status is None:
        return dg.SensorResult(skip_reason="no labelling round is waiting for labels")
    if status.pending:
        return dg.SensorResult(skip_reason=f"{status.round_id}: {status.pending} of {status.tasks} tasks still unlabelled")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"labels-{status.round_id}-{status.fingerprint}")])


ALL_SENSORS = [pool_threshold_sensor, labels_arrived_sensor]
