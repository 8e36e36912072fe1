"""The labelling loop's jobs and the sensors that drive its rounds."""

import dagster as dg

from cosmicman.annotation.label_studio import LabelStudioBackend
from cosmicman.annotation.label_studio_changes import ChangeCursor
from cosmicman.annotation.labelling import RoundStatus
from cosmicman.annotation.ledger import RoundLedger, round_id
from cosmicman.assets.annotation import annotation_rounds
from cosmicman.assets.common import content_digest, sourcing_batches
from cosmicman.environments.settings import sensor_interval_s
from cosmicman.resources.annotation import LabellingResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.pool import read_pool_stats

hitl_setup_job = dg.define_asset_job(
    "hitl_setup_job",
    selection=dg.AssetSelection.assets("eval_set", "base_annotator"),
    description="Render the evaluation set I_e and build the round-0 annotator.",
)
annotation_round_job = dg.define_asset_job(
    "annotation_round_job",
    selection=dg.AssetSelection.assets("labelling_tasks"),
    description="Open a labelling round: measure the annotator on I_e, send the failing categories to humans.",
)
labels_job = dg.define_asset_job(
    "labels_job",
    selection=dg.AssetSelection.assets("human_labels", "annotator"),
    description="Collect a round's human labels, fine-tune the annotator, measure it, decide whether to go on.",
)
annotations_job = dg.define_asset_job(
    "annotations_job",
    # one sourcing batch per run (a partition); the annotator's blocking check runs first in the same run: when it
    # fails, the batch is not annotated
    selection=dg.AssetSelection.assets("annotations", "captions") | dg.AssetSelection.checks_for_assets("annotator"),
    description="Annotate and caption one sourcing batch with the final annotator (and the humans' answers about "
    "its images), once the annotator in force passed its check (not worse on I_e than the one before).",
)


@dg.sensor(
    job=labels_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Collects a labelling round's answers once every task has its human answer.",
)
def labels_arrived_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStoreResource, labelling: LabellingResource
) -> dg.SensorResult:
    """When every task of the open labelling round has its human answer, collect them and go on.

    With Label Studio the sensor reads only what changed since its last tick: its cursor is a
    ``ChangeCursor`` (``cosmicman.annotation.label_studio_changes``), one request for the tasks changed
    since then and one for the project's counters. The other backends' status is a listing of the store."""
    backend = labelling.backend(object_store.store())
    if not isinstance(backend, LabelStudioBackend):
        status = backend.open_round_status()
        if status is None:
            return dg.SensorResult(skip_reason="no labelling round is waiting for labels")
        return _labels_request(status, "")
    watch = backend.watch_round(ChangeCursor.from_json(context.cursor))
    if watch is None:
        return dg.SensorResult(skip_reason="no labelling round is waiting for labels", cursor=context.cursor)
    cursor = watch.cursor.to_json()
    read = f" ({len(watch.changed)} changed task(s) read since the last tick)"
    if not watch.cursor.caught_up:
        return dg.SensorResult(
            skip_reason=f"{watch.status.round_id}: reading Label Studio's changes, more on the next tick{read}",
            cursor=cursor,
        )
    return _labels_request(watch.status, read, cursor)


def _labels_request(status: RoundStatus, read: str, cursor: str | None = None) -> dg.SensorResult:
    if status.pending:
        return dg.SensorResult(
            skip_reason=f"{status.round_id}: {status.pending} of {status.tasks} tasks still unlabelled{read}",
            cursor=cursor,
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"labels-{status.round_id}-{status.fingerprint}", partition_key=status.round_id)
        ],
        cursor=cursor,
    )


@dg.sensor(
    jobs=[annotation_round_job, annotations_job],
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Opens the next labelling round while rounds still gain; once the loop stops, annotates each batch "
    "of the pool with the final annotator (a run per batch).",
)
def hitl_round_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStoreResource, sourcing: SourcingResource
) -> dg.SensorResult:
    """Once the pool is at its threshold with no batch in flight: after a round's annotator, open the next
    round unless the round closed with a stop (the rules of ``cosmicman.annotation.rounds``); once the loop
    stops, annotate the pool with the final annotator, one run per batch and annotator version (the run key):
    a new batch is one new run, a new annotator one run per batch. The cursor remembers the annotator and the
    pool's batches it last asked for, so a tick with nothing new asks for nothing."""
    store = object_store.store()
    pool = read_pool_stats(store)
    in_flight = set(sourcing_batches.get_partition_keys(dynamic_partitions_store=context.instance)) - pool.batches
    if pool.kept < sourcing.pool_threshold or in_flight:
        return dg.SensorResult(
            skip_reason=f"waiting for the pool: {pool.kept} of {sourcing.pool_threshold} kept images, "
            f"{len(in_flight)} batch(es) not filtered yet"
        )
    ledger = RoundLedger(store)
    try:
        in_force = ledger.in_force()
    except LookupError as e:
        return dg.SensorResult(skip_reason=str(e))
    step = ledger.next_step()
    if step.round is not None:
        rid = round_id(step.round)
        context.log.info(step.reason)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=rid, partition_key=rid, job_name=annotation_round_job.name)],
            dynamic_partitions_requests=[annotation_rounds.build_add_request([rid])],
        )
    if not step.stopped:
        return dg.SensorResult(skip_reason=step.reason)
    asked = f"{in_force.version}-{content_digest(pool.batches)}"
    if context.cursor == asked:
        return dg.SensorResult(
            skip_reason=f"{step.reason}; each of the {len(pool.batches)} batch(es) was asked to be annotated by "
            f"{in_force.version}",
            cursor=asked,
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=annotation_run_key(in_force.version, batch), partition_key=batch, job_name=annotations_job.name
            )
            for batch in sorted(pool.batches)
        ],
        cursor=asked,
    )


def annotation_run_key(annotator_version: str, batch: str) -> str:
    """One run per batch and annotator version: Dagster launches a run key once, so a tick asking again for the
    batches already annotated by this annotator launches only the new ones."""
    return f"annotate-{annotator_version}-{batch}"
