"""``python -m cosmicman.cli`` as a user meets it: ``lineage`` in every environment (local, s3 on a real S3
endpoint, k8s), and every mistake a user can make answered by one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cosmicman.cli.__main__ import main
from cosmicman.core.keys import training_run_key
from cosmicman.core.store import Store
from cosmicman.datasets.layout import shard_urls
from cosmicman.datasets.lineage import LineageTargetNotFoundError, lineage
from cosmicman.datasets.version import write_dataset_version
from tests.datasets.test_dataset_version import make_samples
from tests.support.deployed_env import K8S_REQUIRED
from tests.support.s3_server import S3Endpoint, moto_s3

REPO = Path(__file__).resolve().parents[1]
BUCKET = "cosmicman-cli"
STORE_URL = f"s3://{BUCKET}/flywheel"
# what the k8s environment needs besides the store to build its code location (lineage reads only the store)
K8S_ENV = {k: v for k, v in K8S_REQUIRED.items() if k not in S3Endpoint("http://127.0.0.1:1").env(STORE_URL)}
ENV_VARS = (
    "COSMICMAN_ENV",
    "COSMICMAN_STORE_URL",
    "COSMICMAN_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def populate(store: Store) -> None:
    """One dataset version (v0001, 4 samples) and one published model (``hola``) trained on it."""
    write_dataset_version(
        store.url, "v0001", make_samples(4), samples_per_shard=2, storage_options=store.storage_options
    )
    record = {
        "config": {"beta": 1.0, "act_fn": "silu"},
        "data": {"shards": shard_urls(store.url, "v0001", store.storage_options)},
        "code_version": "abc123",
        "finished_at": "2026-12-04T00:00:00Z",
    }
    store.write_json(training_run_key("hola"), record)


def cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """The CLI in its own process: the environment is read when the code location loads."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run(
        [sys.executable, "-m", "cosmicman.cli", *args],
        cwd=REPO,
        env={**base, "COSMICMAN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def user_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a user error prints (exit status 2, no traceback, nothing else on stderr)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        populate(Store(STORE_URL, **endpoint.storage_options()))
        yield endpoint


def test_lineage_local(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))  # the local environment's store under COSMICMAN_HOME
    populate(store)
    out = cli("lineage", "v0001", home=tmp_path)
    assert out.returncode == 0, out.stderr
    lin = json.loads(out.stdout)
    assert lin["dataset_version"] == "v0001" and lin["samples"] == 4

    # the rest in this process, on the same store named by --store
    assert main(["lineage", "hola", "--store", store.url]) == 0  # a model by its name
    model = json.loads(capsys.readouterr().out)
    assert model["dataset_version"] == "v0001" and model["code_versions"] == {"trainer": "abc123"}
    assert model["model"] == f"{store.url}/models/daring_unet/hola"
    assert main(["lineage", "models/daring_unet/hola", "--store", store.url]) == 0  # by its key
    assert json.loads(capsys.readouterr().out)["training"]["act_fn"] == "silu"

    assert main(["lineage", "v0009", "--store", store.url]) == 2
    assert capsys.readouterr().err == "error: no dataset version v0009; versions: v0001\n"
    assert main(["lineage", "hola-mish", "--store", store.url]) == 2
    assert capsys.readouterr().err == (
        f"error: no model at {store.url}/models/daring_unet/hola-mish (no training_run.json); "
        "models under models/daring_unet: hola\n"
    )
    assert main(["lineage", "v0001", "--store", str(tmp_path / "nothing")]) == 2
    assert (
        capsys.readouterr().err == f"error: no dataset version v0001; the store {tmp_path}/nothing holds no versions\n"
    )
    assert main(["lineage", "v0001", "--store", "moon://people"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot open the object store moon://people: ")


@pytest.mark.parametrize(("env_name", "target"), [("s3", "hola"), ("k8s", "v0001")])
def test_lineage_on_s3(env_name, target, s3: S3Endpoint, tmp_path):
    out = cli("lineage", target, home=tmp_path, COSMICMAN_ENV=env_name, **s3.env(STORE_URL), **K8S_ENV)
    assert out.returncode == 0, out.stderr
    lin = json.loads(out.stdout)
    assert lin["dataset_version"] == "v0001" and lin["sources"] == {"shhq": 2, "synthetic": 2}
    if target == "hola":
        assert lin["model"] == f"{STORE_URL}/models/daring_unet/hola" and lin["code_versions"]["trainer"] == "abc123"


def test_unknown_names_on_s3_list_what_exists(s3: S3Endpoint):
    """The listings behind the messages, on a real S3 endpoint (the CLI prints these messages as they are)."""
    options = s3.storage_options()
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(STORE_URL, "v0002", options)
    assert str(err.value) == "no dataset version v0002; versions: v0001"
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(STORE_URL, "baseline", options)
    assert str(err.value).endswith("(no training_run.json); models under models/daring_unet: hola")
    with pytest.raises(LineageTargetNotFoundError) as err:
        lineage(f"s3://{BUCKET}/empty", "v0001", options)
    assert str(err.value) == f"no dataset version v0001; the store s3://{BUCKET}/empty holds no versions"


@pytest.mark.parametrize(("env_name", "unset"), [("s3", "AWS_SECRET_ACCESS_KEY"), ("k8s", "COSMICMAN_STORE_URL")])
def test_a_missing_variable_is_named(env_name, unset, tmp_path):
    env = {"COSMICMAN_ENV": env_name, **S3Endpoint("http://127.0.0.1:1").env(STORE_URL), **K8S_ENV}
    del env[unset]
    line = user_error(cli("lineage", "v0001", home=tmp_path, **env))
    assert line == (
        f"error: COSMICMAN_ENV={env_name}: set {unset} "
        "(required by this environment, not set; see README, Environments)"
    )


def test_unset_variables_are_all_named(monkeypatch):
    from cosmicman.cli.environment import unset_env_vars
    from cosmicman.resources.storage import ObjectStoreResource

    resource = ObjectStoreResource(
        url=dg.EnvVar("COSMICMAN_STORE_URL"),
        access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
        secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
    )
    for name in ("COSMICMAN_STORE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert unset_env_vars(resource) == ["COSMICMAN_STORE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    assert unset_env_vars(resource) == ["COSMICMAN_STORE_URL", "AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("COSMICMAN_STORE_URL", "s3://b/p")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert unset_env_vars(resource) == []


def test_an_unreachable_store_is_a_user_error(tmp_path):
    env = {"COSMICMAN_ENV": "s3", **S3Endpoint("http://127.0.0.1:1").env(STORE_URL), **K8S_ENV}
    line = user_error(cli("lineage", "v0001", home=tmp_path, **env))
    assert line.startswith(f"error: cannot read the object store {STORE_URL}: Could not connect to the endpoint URL")


def test_an_unknown_environment_is_a_user_error(tmp_path):
    assert user_error(cli("lineage", "v0001", home=tmp_path, COSMICMAN_ENV="moon")) == (
        "error: COSMICMAN_ENV='moon' is not one of ['k8s', 'local', 's3']"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["lineage"], "the following arguments are required: target"),
        (["turn"], "argument command: invalid choice: 'turn'"),
        (["lineage", "v0001", "--stor", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["run", "--variants", "hola", "hola-swish"],
            "argument --variants: invalid choice: 'hola-swish' (choose from 'baseline', 'hola', 'hola-gelu', "
            "'hola-mish', 'hola-relu', 'hola-leaky_relu', 'hola-mp_silu')",
        ),
    ],
)
def test_bad_command_lines_print_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())  # refused before anything started or was written


def test_run_refuses_a_missing_workspace_or_a_home_that_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--home", str(tmp_path / "home"), "--workspace", "nowhere.yaml"]) == 2
    assert capsys.readouterr().err == (
        "error: no workspace file nowhere.yaml (run from the repository root, or pass --workspace)\n"
    )
    (tmp_path / "home.txt").write_text("")
    assert main(["run", "--home", "home.txt", "--workspace", str(REPO / "workspace.yaml")]) == 2
    assert capsys.readouterr().err == "error: --home home.txt is a file, not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home.txt"]


def test_settings_errors_are_user_errors_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    import cosmicman.cli.lineage as cli_lineage

    def refuse(target, store_url=None):
        raise ValueError("COSMICMAN_VARIANTS='hola-swish': unknown training variants ['hola-swish']")

    monkeypatch.setattr(cli_lineage, "lineage_of", refuse)
    assert main(["lineage", "v0001"]) == 2
    assert capsys.readouterr().err == (
        "error: COSMICMAN_VARIANTS='hola-swish': unknown training variants ['hola-swish']\n"
    )
    for bug in (ValueError("invalid literal for int() with base 10: 'x'"), KeyError("COSMICMAN_ENV=x")):

        def fail(target, store_url=None, bug=bug):
            raise bug

        monkeypatch.setattr(cli_lineage, "lineage_of", fail)
        with pytest.raises(type(bug)):
            main(["lineage", "v0001"])
