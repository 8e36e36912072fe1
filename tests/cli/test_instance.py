"""The instance configurations in deploy/: the local one ``make run`` and ``make ui`` copy into place (no banner, two
runs at a time), the production one on PostgreSQL with every connection setting from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cosmicman.cli.errors import UserError
from cosmicman.cli.instance import LOCAL_INSTANCE_YAML, PRODUCTION_INSTANCE_YAML, prepare_instance
from tests.support.postgres_server import PostgresServer


def test_prepare_instance_copies_the_local_configuration_once_and_keeps_an_edited_one(tmp_path):
    folder = prepare_instance(tmp_path)
    config = folder / "dagster.yaml"
    assert folder == tmp_path / "dagster" and config.read_bytes() == LOCAL_INSTANCE_YAML.read_bytes()
    config.write_text("telemetry:\n  enabled: true\n")
    assert prepare_instance(tmp_path) == folder and config.read_text() == "telemetry:\n  enabled: true\n"


def test_prepare_instance_without_the_deploy_folder_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("cosmicman.cli.instance.LOCAL_INSTANCE_YAML", tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="missing.yaml: run from a checkout"):
        prepare_instance(tmp_path / "home")


def test_the_local_instance_queues_two_runs_on_sqlite_and_prints_no_banner(tmp_path):
    folder = prepare_instance(tmp_path)
    with dg.DagsterInstance.from_config(str(folder)) as instance:
        from dagster._core.storage.runs import SqliteRunStorage

        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_coordinator.inst_data.config_dict == {"dequeue_interval_seconds": 1}
        assert instance.telemetry_enabled is False
    # what `make run` and `make ui` print when Dagster opens the instance: no banner, no warning
    dagster = str(Path(sys.executable).with_name("dagster"))
    env = {**os.environ, "DAGSTER_HOME": str(folder)}
    done = subprocess.run([dagster, "instance", "info"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr.upper(), done.stderr
    assert "No dagster instance configuration file" not in done.stdout + done.stderr


def test_the_production_instance_reads_postgres_from_the_environment_only():
    from dagster._core.instance.config import dagster_instance_config

    raw = yaml.safe_load(PRODUCTION_INSTANCE_YAML.read_text())
    db = raw["storage"]["postgres"]["postgres_db"]
    # every connection setting is an environment variable, the ones the test database hands out
    settings = {k: v for k, v in db.items() if k != "scheme"}
    assert all(set(v) == {"env"} for v in settings.values())
    assert {v["env"] for v in settings.values()} == set(PostgresServer("h", 1).env())
    assert db["scheme"] == "postgresql+psycopg2"  # the driver installed with dagster-postgres
    # Dagster's own schema accepts it (runs, event logs and schedules all on postgres), telemetry off
    config, _ = dagster_instance_config(str(PRODUCTION_INSTANCE_YAML.parent), PRODUCTION_INSTANCE_YAML.name)
    assert set(config["storage"]) == {"postgres"}
    assert config["telemetry"] == {"enabled": False}
    # an unsized pool (a GPU pool nobody configured) runs one step at a time
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["run_monitoring"]["enabled"] is True
