"""What a turn has done so far, read from the instance: runs, materialized partitions, sensor ticks.

A turn is over when the flywheel is quiet: no run queued or running, and every running sensor (the automation
sensor among them) has ticked since the last run of the turn ended without asking for anything. It turned
once when, quiet, every asset of the graph is materialized in every partition it has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
from dagster._core.definitions.run_request import InstigatorType  # the instance's tick records: no public API
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorTick, TickStatus
from dagster._utils.error import SerializableErrorInfo

from cosmicman.model.train.variants import VARIANTS

# the order the flywheel turns in: what the console calls stage k of N
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("setup", ("fake_person_classifier", "eval_set", "base_annotator", "test_prompts")),
    ("pool", ("raw_images", "filtered_images", "human_parsing")),
    ("labelling rounds", ("labelling_tasks", "human_labels", "annotator")),
    ("annotation", ("annotations", "captions")),
    ("dataset", ("cosmicman_hq",)),
    ("training", ("daring_unet",)),
    ("evaluation", ("evaluation",)),
    ("ablation", ("ablation_table",)),
)
IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# in flight, not yet running: what the progress line calls waiting
WAITING = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING)
SENSOR_TAG = "dagster/sensor_name"
PARTITION_TAG = "dagster/partition"


class TurnFailed(RuntimeError):
    """The turn cannot finish: a run failed, a sensor errored, or the flywheel went quiet short of its goal."""


@dataclass(frozen=True)
class Coverage:
    """Partitions of one asset that hold a materialization, out of those it has (1 / 1 when unpartitioned)."""

    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.done >= self.total


@dataclass
class TurnState:
    """One look at the instance during a turn."""

    runs: list[dg.RunRecord]
    in_flight: int
    coverage: dict[str, Coverage]
    quiet: bool
    sensor_notes: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [asset for asset, c in self.coverage.items() if not c.complete]

    @property
    def stage(self) -> tuple[int, str]:
        """(k, name) of the first stage with an asset still missing (the last when all are there)."""
        for k, (name, assets) in enumerate(STAGES, start=1):
            if any(not self.coverage[a].complete for a in assets if a in self.coverage):
                return k, name
        return len(STAGES), STAGES[-1][0]


def run_label(record: dg.RunRecord) -> str:
    """``pool_job[batch-00001]`` for a job, ``daring_unet[hola]`` for automation's asset runs."""
    run = record.dagster_run
    name = run.job_name
    if name.startswith("__ASSET_JOB"):
        name = "+".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
    partition = run.tags.get(PARTITION_TAG)
    return f"{name}[{partition}]" if partition else name


def launcher(record: dg.RunRecord) -> str:
    """The sensor that launched the run (the automation sensor's name for automation), or ``manual``."""
    return record.dagster_run.tags.get(SENSOR_TAG, "manual")


def root_error_line(error: SerializableErrorInfo) -> str:
    """``RuntimeError: <first line>`` of the error that started it all (Dagster wraps the step's own)."""
    while error.cause is not None:
        error = error.cause
    first = (error.message.strip().splitlines() or ["no message"])[0]
    text = first.split(": ", 1)[1] if ": " in first else first
    return f"{error.cls_name}: {text}" if error.cls_name else text


def failure_line(instance: dg.DagsterInstance, record: dg.RunRecord) -> str:
    """``run <id> (<label>) failed in step <step>: <error class>: <first line of its error>``."""
    run = record.dagster_run
    for event in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        dagster_event = event.dagster_event
        error = dagster_event.step_failure_data.error if dagster_event and dagster_event.step_failure_data else None
        if error is not None and dagster_event is not None:
            message = root_error_line(error)
            return f"run {run.run_id} ({run_label(record)}) failed in step {dagster_event.step_key}: {message}"
    for event in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return f"run {run.run_id} ({run_label(record)}) {run.status.value.lower()}: {event.message}"
    return f"run {run.run_id} ({run_label(record)}) {run.status.value.lower()}"


def partitioned_assets(defs: dg.Definitions) -> dict[dg.AssetKey, dg.PartitionsDefinition | None]:
    """Every materializable asset of the code location and its partitions (None: unpartitioned)."""
    graph = defs.resolve_asset_graph()
    return {key: graph.get(key).partitions_def for key in sorted(graph.materializable_asset_keys)}


def coverage(
    instance: dg.DagsterInstance, assets: dict[dg.AssetKey, dg.PartitionsDefinition | None]
) -> dict[str, Coverage]:
    out: dict[str, Coverage] = {}
    for key, partitions_def in assets.items():
        if partitions_def is None:
            done = instance.get_latest_materialization_event(key) is not None
            out[key.to_user_string()] = Coverage(int(done), 1)
        else:
            keys = set(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
            materialized = instance.get_materialized_partitions(key) & keys
            out[key.to_user_string()] = Coverage(len(materialized), len(keys))
    return out


def _sensor_ticks(instance: dg.DagsterInstance, sensors: set[str]) -> dict[str, InstigatorTick | None]:
    """The latest tick of each of ``sensors`` that is running (a stopped one is absent)."""
    states = instance.all_instigator_state(
        instigator_type=InstigatorType.SENSOR, instigator_statuses={InstigatorStatus.RUNNING}
    )
    out: dict[str, InstigatorTick | None] = {}
    for state in states:
        if state.instigator_name in sensors:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            out[state.instigator_name] = ticks[0] if ticks else None
    return out


def _asked_for_nothing(tick: InstigatorTick) -> bool:
    return tick.status == TickStatus.SKIPPED or (tick.status == TickStatus.SUCCESS and not tick.run_ids)


def observe(
    instance: dg.DagsterInstance,
    assets: dict[dg.AssetKey, dg.PartitionsDefinition | None],
    sensors: set[str],
    started: float,
) -> TurnState:
    """The turn as the instance sees it now (``sensors``: the code location's, the automation sensor among
    them); raises TurnFailed on a failed run or an erroring sensor."""
    # The reads go in this order, each a moment after the last, so that quiet is never judged on a stale look:
    # runs in flight first; then the turn's runs, where a run that ended meanwhile has its end time; then the
    # sensors' ticks, where a run requested meanwhile shows as a tick that asked for something.
    in_flight = len(instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)))
    runs = list(instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(started))))
    for record in runs:
        if record.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            raise TurnFailed(failure_line(instance, record))
    ends = [r.end_time for r in runs if r.end_time is not None]
    since = max([started, *ends])
    notes: dict[str, str] = {}
    ticks = _sensor_ticks(instance, sensors)
    quiet = in_flight == 0 and set(ticks) == sensors
    for name, tick in ticks.items():
        if tick is not None and tick.status == TickStatus.FAILURE and tick.timestamp > started:
            message = root_error_line(tick.error) if tick.error else "no message"
            raise TurnFailed(f"sensor {name} failed: {message}")
        if tick is not None and tick.skip_reason:
            notes[name] = tick.skip_reason
        if tick is None or tick.timestamp <= since or not _asked_for_nothing(tick):
            quiet = False
    return TurnState(runs, in_flight, coverage(instance, assets), quiet, notes)


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def progress_line(state: TurnState, elapsed: float) -> str:
    """``[stage 6/8 training] 1m42s · 3 batches sourced · 2 rounds · variants trained 1/3, evaluated 0/3 · ...``"""
    k, name = state.stage
    c = state.coverage
    trained, evaluated = c.get("daring_unet", Coverage(0, 0)), c.get("evaluation", Coverage(0, 0))
    running = sum(r.dagster_run.status == dg.DagsterRunStatus.STARTED for r in state.runs)
    waiting = sum(r.dagster_run.status in WAITING for r in state.runs)
    return (
        f"[stage {k}/{len(STAGES)} {name}] {_minutes(elapsed)} · "
        f"{c.get('human_parsing', Coverage(0, 0)).done} batches sourced · "
        f"{c.get('annotator', Coverage(0, 0)).done} rounds · "
        f"variants trained {trained.done}/{trained.total}, evaluated {evaluated.done}/{evaluated.total} · "
        f"runs: {len(state.runs)} launched, {running} running, {waiting} waiting"
    )


class Watcher:
    """Prints a line per finished run and the overall progress on every change (at least every ``every_s``)."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._reported: set[str] = set()
        self._last_key = ""
        self._last_print = 0.0

    def report(self, state: TurnState, elapsed: float) -> None:
        for record in sorted(state.runs, key=lambda r: r.end_time or 0.0):
            run = record.dagster_run
            if run.status == dg.DagsterRunStatus.SUCCESS and run.run_id not in self._reported:
                self._reported.add(run.run_id)
                took = (record.end_time or 0.0) - (record.start_time or record.end_time or 0.0)
                print(f"  done {run_label(record)} (by {launcher(record)}) in {took:.1f}s", flush=True)
        key = progress_line(state, 0.0)  # what changed, leaving the clock out
        if key != self._last_key or time.monotonic() - self._last_print >= self.every_s:
            print(progress_line(state, elapsed), flush=True)
            self._last_key, self._last_print = key, time.monotonic()


def expected_variants(assets: dict[dg.AssetKey, dg.PartitionsDefinition | None]) -> list[str]:
    """The training partitions of the code location (``COSMICMAN_VARIANTS``), in ``VARIANTS`` order."""
    partitions_def = assets.get(dg.AssetKey("daring_unet"))
    keys = set(partitions_def.get_partition_keys()) if partitions_def else set()
    return [v for v in VARIANTS if v in keys]
