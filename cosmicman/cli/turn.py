"""One turn of the whole flywheel on the local environment (``python -m cosmicman.cli run``).

The pool-threshold sensor decides each sourcing batch (exactly as it would under ``dagster dev``); every
stage then runs as its Dagster job against the persistent instance under ``.cosmicman/dagster``, so the
UI shows the same runs and materializations afterwards.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from cosmicman.cli.summary import object_store_of


def _instance(home: Path) -> dg.DagsterInstance:
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home.resolve())
    return dg.DagsterInstance.get()


def _run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job: str,
    partition_key: str | None = None,
    run_key: str | None = None,
) -> None:
    started = time.monotonic()
    label = f"{job}[{partition_key}]" if partition_key else job
    print(f"==> {label}", flush=True)
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=partition_key,
        raise_on_error=True,
        tags={"dagster/run_key": run_key} if run_key else None,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    print(f"<== {label}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - started:.1f}s", flush=True)


def _evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, sensor: dg.SensorDefinition) -> dg.SensorResult:
    """One evaluation of a sensor, as the daemon would run it (the flywheel's sensors return a SensorResult)."""
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        result = sensor(ctx)
    if not isinstance(result, dg.SensorResult):
        raise TypeError(f"sensor {sensor.name} returned {type(result).__name__}, not a SensorResult")
    return result


def source_until_threshold(defs: dg.Definitions, instance: dg.DagsterInstance, max_batches: int = 20) -> list[str]:
    """Evaluate the pool sensor and run what it asks for, until it skips."""
    from cosmicman.jobs import pool_threshold_sensor

    ran: list[str] = []
    for _ in range(max_batches):
        result = _evaluate(defs, instance, pool_threshold_sensor)
        if not result.run_requests:
            print(f"pool sensor: skip — {result.skip_reason.skip_message if result.skip_reason else ''}", flush=True)
            return ran
        for req in result.dynamic_partitions_requests or []:
            if isinstance(req, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        for rr in result.run_requests:
            if rr.partition_key is None:
                raise RuntimeError(f"the pool sensor asked for a run without a sourcing batch: {rr}")
            _run(defs, instance, "pool_job", rr.partition_key)
            ran.append(rr.partition_key)
    raise RuntimeError(f"the pool is still under its threshold after {max_batches} batches: check the filters")


def _ran(instance: dg.DagsterInstance, run_key: str) -> bool:
    return bool(instance.get_run_records(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1))


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, sensor) -> list[dg.RunRequest]:
    """Evaluate a sensor as the daemon would: add its partitions, drop run keys that already ran."""
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        result = sensor(ctx)
    if not result.run_requests:
        msg = result.skip_reason.skip_message if result.skip_reason else ""
        print(f"{sensor.name}: skip — {msg}", flush=True)
        return []
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return [r for r in result.run_requests if not (r.run_key and _ran(instance, r.run_key))]


def annotate_until_stop(defs: dg.Definitions, instance: dg.DagsterInstance, max_ticks: int = 50) -> None:
    """The labelling loop, driven by its two sensors: open a round, wait for its labels, fine-tune, again,
    until the loop stops and the pool is annotated by the final annotator."""
    from cosmicman.jobs import hitl_round_sensor, labels_arrived_sensor

    for _ in range(max_ticks):
        requests = _tick(defs, instance, labels_arrived_sensor) or _tick(defs, instance, hitl_round_sensor)
        if not requests:
            return
        for rr in requests:
            job = rr.job_name or "labels_job"
            _run(defs, instance, job, rr.partition_key, rr.run_key)
            if job == "annotations_job":
                return
    raise RuntimeError(f"the labelling loop did not stop after {max_ticks} sensor ticks")


def run(home: Path, defs: dg.Definitions | None = None, variants: list[str] | None = None) -> dict:
    """Turn the flywheel once. ``defs`` defaults to the code location's (environment from COSMICMAN_ENV);
    ``variants`` are the training variants to train and evaluate (default: all)."""
    from cosmicman.model.train.variants import VARIANTS

    variants = list(VARIANTS) if variants is None else variants
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown training variants {unknown}; choose from {list(VARIANTS)}")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("COSMICMAN_HOME", str(home))
    from cosmicman.environments.local import seed_demo_folder

    seeded = seed_demo_folder(home)
    if seeded:
        print(f"seeded a demo folder dataset with {seeded} images", flush=True)
    if defs is None:
        from cosmicman.definitions import defs as code_location

        defs = code_location
    instance = _instance(home)
    started = time.monotonic()
    _run(defs, instance, "fake_person_job")
    batches = source_until_threshold(defs, instance)
    from cosmicman.annotation.ledger import RoundLedger

    try:
        RoundLedger(object_store_of(defs)).base()
    except LookupError:  # round 0 is built once; later turns go on from the rounds already run
        _run(defs, instance, "hitl_setup_job")
    annotate_until_stop(defs, instance)
    _run(defs, instance, "dataset_job")
    for variant in variants:
        _run(defs, instance, "training_job", variant)
        _run(defs, instance, "evaluation_job", variant)
    _run(defs, instance, "ablation_job")
    from cosmicman.cli.summary import collect_summary

    summary = collect_summary(defs, instance, variants)
    summary["new_batches"] = batches
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
