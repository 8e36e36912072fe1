"""The turn's failure paths through the CLI, on one-asset code locations (``tests/support/tiny_locations.py``):
a failed run ends the turn with one line and exit status 1; Ctrl-C stops the daemon and cancels the run in
flight. Either way no process of the turn is left."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _workspace(tmp_path: Path, attribute: str) -> Path:
    path = tmp_path / "workspace.yaml"
    path.write_text(
        "load_from:\n  - python_module:\n      module_name: tests.support.tiny_locations\n"
        f"      attribute: {attribute}\n      working_directory: {REPO}\n"
    )
    return path


def _command(home: Path, workspace: Path) -> list[str]:
    return [sys.executable, "-m", "cosmicman.cli", "run", "--home", str(home), "--workspace", str(workspace)]


def _processes_of(dagster_home: Path) -> list[int]:
    """Processes (of this user) whose environment names this turn's instance."""
    marker = f"DAGSTER_HOME={dagster_home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue  # gone, or not ours
    return found


def test_a_failed_run_ends_the_turn_with_its_id_and_error_in_one_line(tmp_path):
    home = tmp_path / "home"
    done = subprocess.run(
        _command(home, _workspace(tmp_path, "failing")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    expected = r"error: run [0-9a-f-]{36} \(boom\) failed in step boom: RuntimeError: boom always fails"
    assert re.fullmatch(expected, line), line
    run_id = line.split()[2]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE and run.tags["dagster/sensor_name"] == "automation"
    assert _processes_of(home / "dagster") == []


def test_ctrl_c_stops_the_daemon_and_cancels_the_run_in_flight(tmp_path):
    home = tmp_path / "home"
    turn = subprocess.Popen(
        _command(home, _workspace(tmp_path, "sleeping")),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        started = []
        while not started and time.monotonic() < deadline:
            time.sleep(1)
            if (home / "dagster" / "dagster.yaml").exists():
                with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                    started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert started, "the sleeper's run never started"
        turn.send_signal(signal.SIGINT)
        _, err = turn.communicate(timeout=120)
    finally:
        if turn.poll() is None:
            turn.kill()
    assert turn.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.CANCELED
    assert _processes_of(home / "dagster") == []
