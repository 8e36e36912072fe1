"""The deployed environments (``s3``, ``k8s``): production backends at every stage, nothing from the synthetic
world, and one error naming every required variable that is missing."""

import os

import dagster as dg
import pytest

from cosmicman.environments.k8s import k8s_resources
from cosmicman.environments.s3 import s3_resources
from tests.support.deployed_env import REQUIRED

BUILD = {"s3": s3_resources, "k8s": k8s_resources}
# variables the environments read besides the required ones; cleared so the machine's own cannot leak in
OPTIONAL = (
    "COSMICMAN_SOURCES",
    "COSMICMAN_FOLDER_URL",
    "COSMICMAN_S3_ENDPOINT",
    "COSMICMAN_DEVICE",
    "COSMICMAN_PRETRAINED",
    "COSMICMAN_TRAIN_STEPS",
    "COSMICMAN_TRAIN_GPUS",
    "COSMICMAN_EXPECTED_PROMPTS",
    "COSMICMAN_PERSON_DETECTOR",
    "COSMICMAN_CLIP_MODEL",
)
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLICKR_API_KEY", "UNSPLASH_ACCESS_KEY", "PIXABAY_API_KEY"}


def set_environment(monkeypatch, env: dict[str, str]) -> None:
    for name in {*REQUIRED["k8s"], *OPTIONAL}:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def simulation_references(value, path: str = "") -> list[str]:
    """Where ``value`` (a resource, recursively its fields, dicts and lists) names ``cosmicman.simulation``:
    a class defined there or a factory string pointing there."""
    found = []
    if isinstance(value, dg.ConfigurableResource | dg.ConfigurableIOManager):
        if type(value).__module__.startswith(("cosmicman.simulation", "cosmicman.environments.simulated")):
            found.append(f"{path}: {type(value).__module__}.{type(value).__name__}")
        for field in type(value).model_fields:
            found += simulation_references(getattr(value, field), f"{path}.{field}")
    elif isinstance(value, dict):
        for k, v in value.items():
            found += simulation_references(v, f"{path}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found += simulation_references(v, f"{path}[{i}]")
    elif isinstance(value, str) and ("cosmicman.simulation" in value or "simulated" in value):
        found.append(f"{path}: {value!r}")
    return found


def test_the_reference_scan_finds_the_local_environment_synthetic(tmp_path):
    """The scan below is not vacuous: the local environment's synthetic resources and judge are found."""
    from cosmicman.environments.local import local_resources

    found = simulation_references(
        local_resources(store_url=str(tmp_path / "store"), folder_url=str(tmp_path / "none")), "local"
    )
    assert "local['sourcing']: cosmicman.environments.simulated_data.SimulatedSourcingResource" in found
    assert "local['evaluation_config'].judge['factory']: 'cosmicman.simulation.pixel_parser:local_judge'" in found


@pytest.mark.parametrize("env_name", ["s3", "k8s"])
def test_every_stage_runs_its_production_backend(monkeypatch, env_name):
    set_environment(monkeypatch, REQUIRED[env_name])
    resources = BUILD[env_name]()
    assert simulation_references(resources, env_name) == []
    assert resources["sourcing"].parquet_url == REQUIRED[env_name]["COSMICMAN_PARQUET_URL"]
    assert (resources["filters"].backend, resources["filters"].fake_head_train_url) == (
        "production",
        REQUIRED[env_name]["COSMICMAN_FAKE_HEAD_TRAIN_URL"],
    )
    assert resources["parser"].model_id == "/models/atr-segformer"
    annotator = resources["annotation"]
    assert (annotator.kind, annotator.vlm_model) == ("vlm", "/models/instructblip")
    assert resources["labelling"].backend_kind == "label_studio"
    evaluation = resources["evaluation_config"]
    assert evaluation.judge == {"kind": "vqa", "path": "/models/vqa-judge", "device": "cuda"}
    assert (evaluation.prompts_url, evaluation.n_prompts, evaluation.expected_prompts) == (
        "s3://cosmicman-test/evaluation/prompts.jsonl",
        None,
        2048,
    )
    assert None not in (evaluation.inception_path, evaluation.clip_path, evaluation.hpsv2_path)
    run = evaluation.run_config("m", "p", "s", "o")
    assert run.features == {"kind": "inception", "weights_path": "/models/inception.pt"}


@pytest.mark.parametrize("env_name", ["s3", "k8s"])
def test_secrets_reach_resources_only_as_environment_variables(monkeypatch, env_name):
    """A key, a credential or the Label Studio key is a dg.EnvVar: Dagster shows its name, never its value."""
    set_environment(monkeypatch, REQUIRED[env_name])
    resources = BUILD[env_name]()
    held = {
        "AWS_ACCESS_KEY_ID": resources["object_store"].access_key_id,
        "AWS_SECRET_ACCESS_KEY": resources["object_store"].secret_access_key,
        "FLICKR_API_KEY": resources["sourcing"].flickr_api_key,
        "UNSPLASH_ACCESS_KEY": resources["sourcing"].unsplash_access_key,
        "PIXABAY_API_KEY": resources["sourcing"].pixabay_api_key,
        "LABEL_STUDIO_API_KEY": resources["labelling"].label_studio_api_key,
    }
    for name, value in held.items():
        assert isinstance(value, dg.EnvVar) and value.env_var_name == name, (name, value)


@pytest.mark.parametrize("env_name", ["s3", "k8s"])
def test_an_empty_environment_names_every_required_variable_at_once(monkeypatch, env_name):
    set_environment(monkeypatch, {})
    with pytest.raises(ValueError) as err:
        BUILD[env_name]()
    assert str(err.value) == (
        f"COSMICMAN_ENV={env_name}: set {', '.join(REQUIRED[env_name])} "
        "(required by this environment, not set; see README, Environments)"
    )


@pytest.mark.parametrize("missing", list(REQUIRED["k8s"]))
def test_one_missing_variable_is_named_alone(monkeypatch, missing):
    set_environment(monkeypatch, {k: v for k, v in REQUIRED["k8s"].items() if k != missing})
    with pytest.raises(ValueError, match=r"^COSMICMAN_ENV=k8s: set (\S+) \(required") as err:
        k8s_resources()
    assert str(err.value).split(": set ")[1].split(" ")[0] == missing


def test_a_blank_variable_counts_as_missing(monkeypatch):
    set_environment(monkeypatch, {**REQUIRED["s3"], "LABEL_STUDIO_URL": "  "})
    with pytest.raises(ValueError, match=r"^COSMICMAN_ENV=s3: set LABEL_STUDIO_URL \(required"):
        s3_resources()


def test_the_named_sources_decide_which_keys_are_required(monkeypatch):
    """A named source without its key is an error naming the variable; a source not named needs nothing."""
    only_flickr = {k: v for k, v in REQUIRED["s3"].items() if k not in ("COSMICMAN_PARQUET_URL", "UNSPLASH_ACCESS_KEY")}
    set_environment(monkeypatch, {**only_flickr, "COSMICMAN_SOURCES": "flickr,pixabay"})
    sourcing = s3_resources()["sourcing"]
    assert (sourcing.parquet_url, sourcing.unsplash_access_key, sourcing.unsplash_batch_size) == (None, None, 0)
    assert sourcing.flickr_batch_size == 500 and sourcing.pixabay_batch_size == 1000
    monkeypatch.delenv("PIXABAY_API_KEY")
    monkeypatch.setenv("COSMICMAN_SOURCES", "flickr,pixabay,folder")
    with pytest.raises(ValueError, match=r"^COSMICMAN_ENV=s3: set COSMICMAN_FOLDER_URL, PIXABAY_API_KEY \(required"):
        s3_resources()
    monkeypatch.setenv("COSMICMAN_SOURCES", "flickr,laion")
    with pytest.raises(ValueError, match=r"^COSMICMAN_SOURCES='flickr,laion': unknown sources \['laion'\]"):
        s3_resources()


def test_k8s_pods_report_through_the_object_store(monkeypatch):
    set_environment(monkeypatch, {**REQUIRED["k8s"], "COSMICMAN_TRAIN_GPUS": "4"})
    resources = k8s_resources()
    for role in ("training_launcher", "evaluation_launcher"):
        launcher = resources[role]
        assert launcher.messages_url == "s3://cosmicman-test/flywheel/pipes/messages"
        assert launcher.image == "registry.example/cosmicman:1.0.0"
        assert launcher.timeout_s == 7 * 24 * 3600
    assert resources["training_launcher"].gpus == 4
    monkeypatch.setenv("COSMICMAN_TRAIN_GPUS", "0")
    with pytest.raises(ValueError, match=r"^COSMICMAN_TRAIN_GPUS='0' is not a positive whole number"):
        k8s_resources()


def test_the_k8s_code_location_loads_with_every_variable_set(monkeypatch, tmp_path):
    from cosmicman.definitions import definitions_for

    set_environment(monkeypatch, REQUIRED["k8s"])
    monkeypatch.setenv("COSMICMAN_HOME", str(tmp_path))
    defs = definitions_for("k8s")
    assert defs.resolve_job_def("pool_job").executor_def.name == "k8s"
    assert simulation_references(dict(defs.resources or {}), "k8s") == []


def test_local_web_apis_are_optional_and_say_so(monkeypatch, tmp_path):
    """Locally a web API is a source only when its key is set (as a dg.EnvVar); each run that sources says
    which are off and which variable turns each on."""
    from unittest import mock

    from cosmicman.environments.local import local_resources

    for name in SECRETS - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLICKR_API_KEY", "flickr-secret")
    monkeypatch.setenv("COSMICMAN_FLICKR_BASE_URL", "http://127.0.0.1:9/flickr")
    sourcing = local_resources(store_url=str(tmp_path / "store"), folder_url=str(tmp_path / "none"))["sourcing"]
    assert isinstance(sourcing.flickr_api_key, dg.EnvVar) and sourcing.flickr_api_key.env_var_name == "FLICKR_API_KEY"
    assert (sourcing.flickr_batch_size, sourcing.flickr_base_url) == (8, "http://127.0.0.1:9/flickr")
    assert (sourcing.unsplash_access_key, sourcing.unsplash_batch_size) == (None, 0)
    sensor_tick = mock.Mock(dagster_run=None)
    sourcing.setup_for_execution(sensor_tick)
    sensor_tick.log.info.assert_not_called()
    context = mock.Mock()
    sourcing.setup_for_execution(context)
    context.log.info.assert_called_once_with(
        "web API sources off in this environment: unsplash (UNSPLASH_ACCESS_KEY not set), "
        "pixabay (PIXABAY_API_KEY not set)"
    )
    assert os.environ["FLICKR_API_KEY"] not in repr(sourcing)
