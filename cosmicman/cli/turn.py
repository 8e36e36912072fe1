"""One turn of the whole flywheel (``python -m cosmicman.cli run``), driven by Dagster's daemon.

The instance lives under ``$COSMICMAN_HOME/dagster``; ``dagster-daemon`` loads the code location from the
workspace file, and the sensors and the automation sensor are turned on: from there on every run is one a
sensor or automation asked for, in the code location, as under ``dagster dev``. This process only watches
the instance until the flywheel is quiet, then prints the summary and stops the daemon it started (also on
Ctrl-C or a failed run, cancelling the runs left in flight).
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
import yaml

from cosmicman.cli.daemon import Daemon, turn_on_sensors
from cosmicman.cli.errors import UserError
from cosmicman.cli.instance import dagster_home, prepare_instance
from cosmicman.cli.progress import (
    IN_FLIGHT,
    TurnFailed,
    TurnState,
    Watcher,
    expected_variants,
    launcher,
    observe,
    partitioned_assets,
)
from cosmicman.cli.summary import collect_summary
from cosmicman.environments.settings import VARIANTS_VAR, parse_variants

WORKSPACE = Path("workspace.yaml")
POLL_S = 2.0
# far above a local turn (minutes): only a flywheel that never goes quiet reaches it
TIMEOUT_S = 3600.0


def code_location(workspace: Path) -> dg.Definitions:
    """The definitions the workspace file loads: its one ``python_module`` entry (as ours), the module's
    ``attribute`` when it names one, else its ``defs``."""
    entries = (yaml.safe_load(workspace.read_text()) or {}).get("load_from") or []
    modules = [e["python_module"] for e in entries if isinstance(e, dict) and "python_module" in e]
    if len(entries) != 1 or len(modules) != 1:
        raise TurnFailed(f"{workspace} must load one code location from a python_module; it has {entries}")
    entry = modules[0] if isinstance(modules[0], dict) else {"module_name": modules[0]}
    defs = getattr(importlib.import_module(str(entry["module_name"])), str(entry.get("attribute", "defs")))
    if not isinstance(defs, dg.Definitions):
        raise TurnFailed(f"{workspace}: {entry} is a {type(defs).__name__}, not a dg.Definitions")
    return defs


def turn_environment(home: Path, variants: list[str] | None) -> dict[str, str]:
    """The process environment of the daemon, its code server and runs: the same home, instance and variants."""
    env = {**os.environ, "COSMICMAN_HOME": str(home), "DAGSTER_HOME": str(dagster_home(home))}
    if variants is not None:
        try:
            env[VARIANTS_VAR] = ",".join(parse_variants(",".join(variants)))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return env


def wait_until_quiet(
    instance: dg.DagsterInstance,
    assets: dict[dg.AssetKey, dg.PartitionsDefinition | None],
    sensors: set[str],
    daemon: Daemon,
    started: float,
    timeout_s: float,
    interrupted: threading.Event,
) -> TurnState:
    watcher = Watcher()
    while True:
        if interrupted.is_set():
            raise KeyboardInterrupt
        code = daemon.exit_code()
        if code is not None:
            raise TurnFailed(f"dagster-daemon exited with code {code}: see {daemon.log_path}")
        state = observe(instance, assets, sensors, started)
        watcher.report(state, time.time() - started)
        if state.quiet:
            return state
        if time.time() - started > timeout_s:
            k, name = state.stage
            raise TurnFailed(
                f"the flywheel is not quiet after {timeout_s:.0f}s (stage {k}, {name}): see {daemon.log_path}"
            )
        interrupted.wait(POLL_S)


@contextmanager
def ctrl_c_as_flag() -> Iterator[threading.Event]:
    """Ctrl-C while the daemon runs, as an event the watching loop checks. Raised as KeyboardInterrupt where
    it lands, it can land inside a library call that swallows it (the instance's queries under load did),
    and the turn would go on with its daemon running; the loop raises it itself instead."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def cancel_in_flight(instance: dg.DagsterInstance, started: float, reason: str) -> list[str]:
    """Mark the turn's runs that never finished as canceled (their processes ended with the daemon's)."""
    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT, created_after=datetime.fromtimestamp(started)))
    for record in records:
        instance.report_run_canceled(record.dagster_run, message=reason)
    return [r.dagster_run.run_id for r in records]


def run(
    home: Path, variants: list[str] | None = None, workspace: Path = WORKSPACE, timeout_s: float = TIMEOUT_S
) -> dict:
    """Turn the flywheel once through the daemon; the summary of what the instance holds afterwards.
    ``variants`` narrows the training partitions (``COSMICMAN_VARIANTS``; default: the environment's)."""
    home, workspace = home.resolve(), workspace.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = turn_environment(home, variants)
    os.environ.update(env)  # this process reads the instance and the code location the daemon uses
    folder = prepare_instance(home)
    from cosmicman.environments.local import seed_demo_folder

    seeded = seed_demo_folder(home)
    if seeded:
        print(f"seeded a demo folder dataset with {seeded} images", flush=True)
    defs = code_location(workspace)
    assets = partitioned_assets(defs)
    instance = dg.DagsterInstance.get()
    log_path = home / "logs" / "dagster-daemon.log"
    print(f"dagster-daemon over the instance {folder} (its log: {log_path})", flush=True)
    started = time.time()
    daemon = Daemon(workspace, env, log_path)
    daemon.start()
    try:
        with ctrl_c_as_flag() as interrupted:
            try:
                turn_on_sensors(workspace, env)
            except RuntimeError:
                if interrupted.is_set():  # a terminal's Ctrl-C reached `dagster sensor start` too
                    raise KeyboardInterrupt from None
                raise
            print("sensors and automation on; waiting for the flywheel to turn once and go quiet", flush=True)
            # the repository's sensors: Dagster's default automation sensor, which launches training_job, among them
            sensors = {s.name for s in defs.get_repository_def().sensor_defs}
            state = wait_until_quiet(instance, assets, sensors, daemon, started, timeout_s, interrupted)
    finally:
        daemon.stop()
        cancelled = cancel_in_flight(instance, started, "the turn stopped before this run finished")
        if cancelled:
            print(f"cancelled {len(cancelled)} unfinished run(s): {', '.join(cancelled)}", flush=True)
    if state.missing:
        notes = "; ".join(f"{name}: {note}" for name, note in sorted(state.sensor_notes.items()))
        raise TurnFailed(f"the flywheel went quiet with {', '.join(state.missing)} not materialized ({notes})")
    summary = collect_summary(defs, instance, expected_variants(assets))
    summary["new_batches"] = sorted(
        r.dagster_run.tags["dagster/partition"] for r in state.runs if r.dagster_run.job_name == "pool_job"
    )
    launchers = [launcher(r) for r in state.runs]
    summary["runs"] = {
        "launched": len(state.runs),
        "by": {name: launchers.count(name) for name in sorted(set(launchers))},
    }
    summary["seconds"] = round(time.time() - started, 1)
    summary["daemon_log"] = str(log_path)
    return summary
