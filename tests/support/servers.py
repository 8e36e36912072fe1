"""Helpers for tests that start a real server process (dagster dev, Label Studio)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(
    url: str, proc: subprocess.Popen, timeout: float, what: str, log_tail: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``proc`` exits, with the server's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} not ready at {url} after {timeout:.0f}s:\n{log_tail()}")
