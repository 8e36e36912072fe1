"""The daemon-driven turn the slow tests share: ``python -m cosmicman.cli run`` on the small flywheel
(``tests/support/small_flywheel.py``) in its own home, twice; between the turns every sensor is turned off,
so the second turn turns each on again over a flywheel that has nothing new to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from cosmicman.core.store import Store

REPO = Path(__file__).resolve().parents[2]
LOCATION = "tests.support.small_flywheel"
# the e2e assertions need the noise-only baseline, HOLA and one other activation
VARIANTS = ["baseline", "hola", "hola-mp_silu"]


def census(store: Store) -> dict:
    """Blob count and row count of every table: what a second turn must not grow."""
    rows = {k: len(df) for k, df in store.iter_tables("tables")}
    return {
        "blobs": len(store.list("blobs")),
        "rows": rows,
        "datasets": sorted({k.split("/")[2] for k in store.list("datasets/cosmicman-hq") if k.count("/") > 2}),
        "models": sorted({k.split("/")[2] for k in store.list("models/daring_unet")}),
    }


def write_workspace(folder: Path, location: str = LOCATION) -> Path:
    path = folder / "workspace.yaml"
    path.write_text(f"load_from:\n  - python_module:\n      module_name: {location}\n      working_directory: {REPO}\n")
    return path


def turn(home: Path, workspace: Path, variants: list[str]) -> dict:
    """One turn through the CLI's own entry point; its JSON summary."""
    from cosmicman.cli.__main__ import main

    out = home / f"summary-{len(list(home.glob('summary-*.json')))}.json"
    argv = ["run", "--home", str(home), "--workspace", str(workspace), "--json", str(out), "--variants", *variants]
    assert main(argv) == 0
    return json.loads(out.read_text())


def stop_every_sensor(instance: dg.DagsterInstance) -> int:
    """Turn every running sensor off, as a user would in the UI; how many were on."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import InstigatorStatus

    states = instance.all_instigator_state(
        instigator_type=InstigatorType.SENSOR, instigator_statuses={InstigatorStatus.RUNNING}
    )
    for state in states:
        instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    return len(states)


def turn_twice(home: Path, store: Store, location: str = LOCATION) -> dict:
    """The code location ``location`` turned twice over the instance under ``home`` (its ``dagster/dagster.yaml``
    when one is there, else the local one), the second turn after every sensor was turned off; what the
    end-to-end assertions read. ``store``: where that code location's object store is."""
    workspace = write_workspace(home, location)
    first = turn(home, workspace, VARIANTS)
    census_first = census(store)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs_first = {r.run_id for r in instance.get_runs()}
        sensors_on = stop_every_sensor(instance)
    second = turn(home, workspace, VARIANTS)
    return {
        "home": home,
        "store": store,
        "first": first,
        "second": second,
        "census_first": census_first,
        "census_second": census(store),
        "runs_first": runs_first,
        "sensors_turned_off": sensors_on,
    }


@pytest.fixture(scope="session")
def turned_flywheel(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    os.environ["COSMICMAN_HOME"] = str(home)
    return turn_twice(home, Store(str(home / "store")))
