"""The README's UI command over a turned instance: headless Chromium finds the asset graph, the training
runs of training_job, a native table and an image on an asset page, and the asset checks' results."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.support.daemon_turn import LOCATION
from tests.support.servers import free_port, wait_until_serving

pytestmark = [pytest.mark.ui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page(url: str, profile: Path, must_contain: str, tries: int = 3) -> str:
    """The rendered DOM of ``url``; tried again while the UI is still loading the code location."""
    dom = ""
    for _ in range(tries):
        dom = subprocess.run(
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
                f"--user-data-dir={profile}",
                # lists render only visible rows: a tall window shows them all
                "--window-size=1600,4000",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        if must_contain in dom:
            return dom
        time.sleep(5)
    return dom


@pytest.fixture(scope="module")
def ui(turned_flywheel, tmp_path_factory):
    """``dagster dev`` (the README's ``make ui``) over the turned instance; its base URL. Without Chromium the
    UI tests fail, never skip: a green run must mean the UI was tried."""
    if CHROMIUM is None:
        pytest.fail("the UI tests need Debian's chromium: apt-get install chromium (.ci/run installs it)")
    home = turned_flywheel["home"]
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "COSMICMAN_HOME": str(home)}
    # in its own process group, so stopping it stops its code server and daemon too
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(home / "workspace.yaml")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url + "/server_info", proc, 120.0, "dagster dev")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_the_assets_page_lists_the_graph(ui, tmp_path):
    dom = _page(f"{ui}/assets", tmp_path / "chromium", "cosmicman_hq")
    for name in ("raw_images", "filtered_images", "human_parsing", "captions", "cosmicman_hq", "daring_unet",
                 "evaluation", "ablation_table"):  # fmt: skip
        assert name in dom, f"{name} not on the assets page"


def test_the_jobs_page_shows_the_training_job_runs(ui, turned_flywheel, tmp_path):
    # training_job's own automation condition launched them, so they are the job's runs
    with dg.DagsterInstance.from_config(str(turned_flywheel["home"] / "dagster")) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="training_job"))
    assert runs, "the turn launched no training_job run"
    dom = _page(f"{ui}/locations/{LOCATION}/jobs/training_job/runs", tmp_path / "chromium", runs[0].run_id[:8])
    shown = sorted(r.run_id[:8] for r in runs if r.run_id[:8] in dom)
    assert shown == sorted(r.run_id[:8] for r in runs), "the training_job page does not list every training run"


def test_an_asset_page_shows_a_native_table_and_an_image(ui, tmp_path):
    dom = _page(f"{ui}/assets/ablation_table", tmp_path / "chromium", "acc_all")
    assert "<th>acc_all</th>" in dom.replace(' class=""', ""), "no native metadata table on ablation_table"
    assert '<img src="data:image/svg+xml' in dom, "no inline chart on ablation_table"


def test_the_check_results_appear(ui, tmp_path):
    dom = _page(f"{ui}/assets/cosmicman_hq?view=checks", tmp_path / "chromium", "shards_match_manifest")
    assert "shards_match_manifest" in dom
    assert "Passed" in dom or "Succeeded" in dom, "the check's result is not on its page"
