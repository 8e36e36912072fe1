"""The README's UI command serves the asset graph: headless Chromium finds the asset names on the page."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import free_port, wait_until_serving

pytestmark = pytest.mark.ui
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dagster_ui_shows_the_asset_graph(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "COSMICMAN_HOME": str(tmp_path / "home")}
    (tmp_path / "dagster").mkdir()
    # The README's command, in its own process group so stopping it stops its code server too.
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster")),
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url + "/server_info", proc, 120.0, "dagster dev")
        found = ""
        for _ in range(3):  # the code server may still be loading the location on the first try
            page = subprocess.run(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    # the catalog renders only visible rows: a tall window shows them all
                    f"--user-data-dir={tmp_path / 'chromium'}",
                    "--window-size=1600,4000",
                    "--virtual-time-budget=20000",
                    "--dump-dom",
                    f"{url}/assets",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            found = page.stdout
            if "cosmicman_hq" in found:
                break
            time.sleep(5)
        for name in (
            "raw_images",
            "filtered_images",
            "human_parsing",
            "captions",
            "cosmicman_hq",
            "daring_unet",
            "evaluation",
        ):
            assert name in found, f"{name} not on the assets page"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        # the webserver, daemon and code servers must not outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
