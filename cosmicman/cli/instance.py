"""The project's Dagster instance under ``$COSMICMAN_HOME/dagster``: what ``make run``'s daemon and ``make ui``
share. Its ``dagster.yaml`` is written once, when absent, and is then yours to edit."""

from __future__ import annotations

from pathlib import Path

DAGSTER_YAML = """\
# Written by `make run` or `make ui` (cosmicman/cli/instance.py) because none was here; edit freely, it stays.
# Runs wait in a queue: two at a time fit two CPU cores (a training run is a run worker and a trainer).
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_concurrent_runs}
    dequeue_interval_seconds: 1
# the four sensors tick side by side instead of one after the other
sensors:
  use_threads: true
  num_workers: 4
telemetry:
  enabled: false
"""
MAX_CONCURRENT_RUNS = 2


def dagster_home(home: Path) -> Path:
    return home / "dagster"


def prepare_instance(home: Path) -> Path:
    """``<home>/dagster`` with a ``dagster.yaml`` (written only when absent); the folder."""
    folder = dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML.format(max_concurrent_runs=MAX_CONCURRENT_RUNS))
    return folder
