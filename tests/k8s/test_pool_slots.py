"""A run that dies holding a GPU pool slot never blocks the pool: the production instance (deploy/dagster.production
.yaml) and the Helm values (k8s/values.yaml) both have the daemon free a dead run's slots, and Dagster's own
daemon iteration does free them under those settings (without them, the slot stays claimed for good: the
production test's killed training step blocked its re-run that way)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import yaml
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration

from cosmicman.assets.gpu_pools import TRAINING_POOL
from cosmicman.cli.instance import PRODUCTION_INSTANCE_YAML

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = yaml.safe_load(Path(PRODUCTION_INSTANCE_YAML).read_text())


def test_both_deployments_free_a_dead_runs_pool_slots_soon():
    values = yaml.safe_load((REPO / "k8s" / "values.yaml").read_text())
    seconds = PRODUCTION["run_monitoring"]["free_slots_after_run_end_seconds"]
    assert PRODUCTION["run_monitoring"]["enabled"] and 0 < seconds <= 60
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] and monitoring["freeSlotsAfterRunEndSeconds"] == seconds
    assert PRODUCTION["concurrency"]["pools"]["default_limit"] == values["concurrency"]["pools"]["defaultLimit"] == 1


def claimed_after_the_daemon_looked(home: Path, run_monitoring: dict) -> list:
    """A training step's run claims the GPU pool's one slot and dies (marked failed, as run monitoring marks a
    run whose worker is gone); the slots still claimed once the daemon's slot iteration has looked."""
    config = {
        "concurrency": PRODUCTION["concurrency"],
        "run_monitoring": run_monitoring,
        "telemetry": {"enabled": False},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        run = create_run_for_test(instance, job_name="training_job", status=dg.DagsterRunStatus.STARTED)
        assert storage.initialize_concurrency_limit_to_default(TRAINING_POOL)
        assert storage.claim_concurrency_slot(TRAINING_POOL, run.run_id, "daring_unet").is_claimed
        instance.report_run_failed(run)
        time.sleep(run_monitoring.get("free_slots_after_run_end_seconds", 0) + 0.5)
        list(execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), logging.getLogger(__name__)))
        return storage.get_concurrency_info(TRAINING_POOL).claimed_slots


def test_the_daemon_frees_the_slot_of_a_run_that_died_holding_it(tmp_path):
    # the production settings, with the wait cut to one second so the test does not sleep thirty
    settings = {**PRODUCTION["run_monitoring"], "free_slots_after_run_end_seconds": 1}
    (tmp_path / "with").mkdir()
    assert claimed_after_the_daemon_looked(tmp_path / "with", settings) == []
    without = {k: v for k, v in settings.items() if k != "free_slots_after_run_end_seconds"}
    (tmp_path / "without").mkdir()
    assert [s.step_key for s in claimed_after_the_daemon_looked(tmp_path / "without", without)] == ["daring_unet"]
