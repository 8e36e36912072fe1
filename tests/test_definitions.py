import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg

from tests.support.deployed_env import K8S_REQUIRED

REPO = Path(__file__).resolve().parents[1]
ASSETS = {
    "raw_images",
    "fake_person_classifier",
    "filtered_images",
    "human_parsing",
    "eval_set",
    "base_annotator",
    "labelling_tasks",
    "human_labels",
    "annotator",
    "annotations",
    "captions",
    "cosmicman_hq",
    "daring_unet",
    "test_prompts",
    "evaluation",
    "base_model_evaluation",
    "ablation_table",
}


def test_every_definition_loads_without_deprecation_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from cosmicman.definitions import defs

        dg.Definitions.validate_loadable(defs)
        graph = defs.resolve_asset_graph()
        for job in defs.resolve_all_job_defs():
            assert job.name
    deprecations = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
    assert not deprecations, deprecations
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS
    assert {s.name for s in defs.sensors} == {
        "pool_threshold_sensor",
        "labels_arrived_sensor",
        "hitl_round_sensor",
        "flywheel_automation",
    }
    # training_job's condition is hosted by Dagster's default automation sensor, evaluated in the daemon
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert sensors["default_automation_condition_sensor"].metadata["dagster/asset_job_keys"].value == ["training_job"]


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "COSMICMAN_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deprecat" not in (out.stdout + out.stderr).lower()


def test_the_environment_switch_rejects_unknown_names(tmp_path):
    env = {**os.environ, "COSMICMAN_ENV": "moon", "COSMICMAN_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", "import cosmicman.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "COSMICMAN_ENV='moon'" in out.stderr


def test_every_environment_loads(tmp_path):
    for env_name in ("local", "s3", "k8s"):
        env = {
            **os.environ,
            "COSMICMAN_ENV": env_name,
            "COSMICMAN_HOME": str(tmp_path / env_name),
            "DAGSTER_HOME": str(tmp_path),
            **K8S_REQUIRED,
        }
        validate = [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "cosmicman.definitions"]
        out = subprocess.run(validate, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (env_name, out.stdout + out.stderr)
