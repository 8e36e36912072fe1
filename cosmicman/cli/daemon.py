"""Dagster's daemon over the project's instance, started and stopped by ``python -m cosmicman.cli run``.

The daemon loads the code location from the workspace file in its own code server, ticks the sensors and the
automation sensor, and launches the runs they request (each run a process of that code server). It runs in
a process group of its own, so stopping it stops its code server, its runs and their trainers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

# how long the daemon may take to shut its threads and code server down before it is killed
STOP_GRACE_S = 20.0


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (``dagster``, ``dagster-daemon``)."""
    return str(Path(sys.executable).with_name(name))


def turn_on_sensors(workspace: Path, env: dict[str, str]) -> None:
    """Every sensor of the code location RUNNING in the instance (idempotent: a running one stays as it is)."""
    done = subprocess.run(
        [_tool("dagster"), "sensor", "start", "--start-all", "-w", workspace.name],
        cwd=workspace.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"could not turn the sensors on (dagster sensor start exited {done.returncode}): {last}")


class Daemon:
    """``dagster-daemon run -w <workspace>`` as a child process, its output in ``log_path``."""

    def __init__(self, workspace: Path, env: dict[str, str], log_path: Path) -> None:
        self.workspace, self.env, self.log_path = workspace, env, log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [_tool("dagster-daemon"), "run", "-w", self.workspace.name],
            cwd=self.workspace.parent,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this process only; stop() ends the group
        )

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        """Ask the daemon to shut down (SIGTERM), then end whatever is left of its process group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_S)
        # the code server, runs and trainers it started share its process group (its id is the daemon's pid);
        # a group with nothing left in it is gone already
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
