"""``python -m cosmicman.cli run``: turn the whole flywheel once on the local environment.

The pool-threshold sensor decides each sourcing batch (exactly as it would under ``dagster dev``); every
stage then runs as its Dagster job against the persistent instance under ``.cosmicman/dagster``, so the
UI shows the same runs and materializations afterwards. ``lineage`` and ``summary`` read what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

from cosmicman.core.store import Store


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


def _object_store(defs: dg.Definitions) -> Store:
    return (defs.resources or {})["object_store"].store()


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
        RoundLedger(_object_store(defs)).base()
    except LookupError:  # round 0 is built once; later turns go on from the rounds already run
        _run(defs, instance, "hitl_setup_job")
    annotate_until_stop(defs, instance)
    _run(defs, instance, "dataset_job")
    for variant in variants:
        _run(defs, instance, "training_job", variant)
        _run(defs, instance, "evaluation_job", variant)
    _run(defs, instance, "ablation_job")
    summary = collect_summary(defs, instance, variants)
    summary["new_batches"] = batches
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def collect_summary(defs: dg.Definitions, instance: dg.DagsterInstance, variants: list[str]) -> dict:
    """The numbers a person wants after a turn of the flywheel, read from the latest materializations."""
    from cosmicman.assets.evaluation import latest_metadata

    def meta(asset: str, partition: str | None = None) -> dict:
        if partition is not None:
            return latest_metadata(instance, asset, partition)
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return {}
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    partitions = instance.get_dynamic_partitions("sourcing_batches")
    stages: dict[str, dict] = {}
    rejections: dict[str, int] = {}
    for p in partitions:
        raw, filt, parse = meta("raw_images", p), meta("filtered_images", p), meta("human_parsing", p)
        stages[p] = {"raw": raw.get("images"), "kept": filt.get("kept"), "parsed": parse.get("parsed")}
        for reason, n in (raw.get("failed_by_reason") or {}).items():
            rejections[f"sourcing:{reason}"] = rejections.get(f"sourcing:{reason}", 0) + n
        for reason, n in (filt.get("decisions") or {}).items():
            if reason != "kept":
                rejections[reason] = rejections.get(reason, 0) + n
    from cosmicman.annotation.ledger import RoundLedger

    hq = meta("cosmicman_hq")
    ledger = RoundLedger(_object_store(defs))
    results, curve = ledger.results(), ledger.curve()
    return {
        "batches": stages,
        "rejections": rejections,
        "hitl": {
            "rounds": len(results),
            "curve": curve,
            "mean_accuracy_round0": curve[0]["mean_accuracy"] if curve else None,
            "mean_accuracy_final": curve[-1]["mean_accuracy"] if curve else None,
            "labels_asked": curve[-1]["labels_asked"] if curve else 0,
            "manual_share": curve[-1]["manual_share"] if curve else 0.0,
            "stop_reason": results[-1].stop_reason if results else None,
        },
        "dataset": {
            "version": hq.get("version"),
            "samples": hq.get("samples"),
            "reused": hq.get("reused"),
            "stats": hq.get("stats"),
        },
        "variants": {
            v: {
                **{
                    k: meta("daring_unet", v).get(k)
                    for k in ("loss_first", "loss_last", "steps", "output_url", "reused", "attention_in_mask")
                },
                **{
                    k: meta("evaluation", v).get(k)
                    for k in ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance")
                },
            }
            for v in variants
        },
        "ablation_rows": meta("ablation_table").get("variants"),
    }


def print_summary(summary: dict) -> None:
    print("\n=== CosmicMan flywheel: summary ===")
    total_raw = total_kept = 0
    for batch, s in summary["batches"].items():
        print(f"  {batch}: raw {s['raw']}  kept {s['kept']}  parsed {s['parsed']}")
        total_raw += s["raw"] or 0
        total_kept += s["kept"] or 0
    print(f"  images: raw {total_raw} -> kept {total_kept}")
    print("  rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["rejections"].items())))
    h = summary["hitl"]
    print(
        f"  annotation: {h['rounds']} rounds, mean accuracy {h['mean_accuracy_round0']:.3f} -> "
        f"{h['mean_accuracy_final']:.3f}, {h['labels_asked']} human labels ({100 * h['manual_share']:.1f}% of a "
        f"full manual pass), stop: {h['stop_reason']}"
    )
    d = summary["dataset"]
    stats = d["stats"] or {}
    reused = " (unchanged, reused)" if d["reused"] else ""
    print(
        f"  dataset cosmicman-hq {d['version']}: {d['samples']} samples{reused}; "
        + ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, (int, float)))[:400]
    )
    print("  daring_unet variants (same data, seed and steps):")
    print(
        f"    {'variant':<16} {'loss first':>10} {'loss last':>10} {'acc_obj':>8} {'acc_tex':>8} {'acc_shape':>9} "
        f"{'acc_all':>8} {'FD':>7} {'attn in mask':>12}"
    )
    for name, v in summary["variants"].items():
        print(
            f"    {name:<16} {v['loss_first']:>10.4f} {v['loss_last']:>10.4f} {v['acc_obj']:>8.3f} "
            f"{v['acc_tex']:>8.3f} {v['acc_shape']:>9.3f} {v['acc_all']:>8.3f} {v['frechet_distance']:>7.3f} "
            f"{v['attention_in_mask'] if v['attention_in_mask'] is None else format(v['attention_in_mask'], '12.3f')}"
            f"{'  (reused)' if v['reused'] else ''}"
        )
    print(f"    models under {next(iter(summary['variants'].values()))['output_url'].rsplit('/', 1)[0]}")
    print(f"  took {summary['seconds']}s\n")
    print("Open the UI:  make ui   (then http://127.0.0.1:3000)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmicman.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="materialize the whole flywheel on the local environment")
    run_p.add_argument("--home", default=os.environ.get("COSMICMAN_HOME", ".cosmicman"))
    run_p.add_argument("--json", help="also write the summary as JSON to this file")
    run_p.add_argument("--variants", nargs="+", help="training variants to train and evaluate (default: all)")
    lin_p = sub.add_parser("lineage", help="what a dataset version or a trained model was built from (JSON)")
    lin_p.add_argument("target", help="a dataset version (v0001), or a model folder: URL, path, or key in the store")
    lin_p.add_argument("--store", default=None, help="object store URL (default: the environment's)")
    args = parser.parse_args(argv)
    if args.command == "lineage":
        from cosmicman.datasets.lineage import lineage

        store = args.store
        options: dict = {}
        if store is None:
            from cosmicman.definitions import defs

            object_store = _object_store(defs)
            store, options = object_store.url, object_store.storage_options
        print(json.dumps(lineage(store, args.target, options), indent=2, default=str))
        return 0
    if args.command == "run":
        summary = run(Path(args.home), variants=args.variants)
        print_summary(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
