"""The flywheel on production infrastructure: the small flywheel turned twice through Dagster's daemon with its
object store on a real S3-speaking server (moto's, on a loopback port) and the Dagster instance on a real
PostgreSQL (``deploy/dagster.production.yaml``), then the local end-to-end assertions (tests/test_e2e.py) over
what it made; and a publishing step killed mid-way leaves nothing half-published, and its re-run publishes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from cosmicman.cli.instance import PRODUCTION_INSTANCE_YAML
from cosmicman.core.keys import TRAINING_RUN_FILE
from cosmicman.core.store import Store
from tests.support.daemon_turn import REPO, VARIANTS, turn_twice
from tests.support.postgres_server import PostgresUnavailable, postgres_server
from tests.support.s3_server import S3Endpoint

# The local end-to-end assertions, collected here a second time: they read this module's ``flywheel``.
from tests.test_e2e import (  # noqa: F401
    test_dataset_stats_match_the_manifest,
    test_evaluation_metrics_are_numbers_in_range,
    test_every_raw_image_is_kept_or_rejected_for_its_true_reason,
    test_hitl_rounds_improve_the_annotator_cheaply,
    test_lineage_of_a_trained_model_names_its_batches_and_rounds,
    test_second_run_adds_no_duplicate_blob_or_row,
    test_trained_unet_loads_in_diffusers,
)

# deploy: out of the default run (minutes on 2 cores: a full turn on PostgreSQL + S3); make test-deploy runs it
pytestmark = [pytest.mark.slow, pytest.mark.deploy]

BUCKET = "cosmicman-production"
STORE_URL = f"s3://{BUCKET}/flywheel"
LOCATION = "tests.support.small_flywheel_s3"
# the variant the crash test trains: one the turns did not, so its step publishes a new model
CRASH_VARIANT = "hola-gelu"
MODELS = "models/daring_unet"


@pytest.fixture(scope="module")
def postgres():
    try:
        server = postgres_server()
        pg = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.fail(f"no PostgreSQL to run the production instance on: {exc}; install Debian's postgresql")
    try:
        yield pg
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def s3():
    from tests.support.s3_server import moto_s3  # moto[server]: a dev dependency

    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def endpoint_env(endpoint: S3Endpoint) -> dict[str, str]:
    """The store's variables, and ``AWS_ENDPOINT_URL`` for what opens ``s3://`` URLs with the process's own
    settings (the trainer and evaluation processes, ``local_model_dir``), as a deployment on a non-AWS S3 sets it."""
    return {**endpoint.env(STORE_URL), "AWS_ENDPOINT_URL": endpoint.url}


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory, postgres, s3):
    home = tmp_path_factory.mktemp("production-home")
    instance_home = home / "dagster"
    instance_home.mkdir()
    shutil.copyfile(PRODUCTION_INSTANCE_YAML, instance_home / "dagster.yaml")
    env = {
        **postgres.env(),
        **endpoint_env(s3),
        "COSMICMAN_HOME": str(home),
        "DAGSTER_HOME": str(instance_home),
        "COSMICMAN_VARIANTS": ",".join(VARIANTS),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # undone after the module: the turn exports them to this process
        store = Store(STORE_URL, **s3.storage_options())
        yield {**turn_twice(home, store, LOCATION), "env": env}


def test_the_instance_is_postgres_and_holds_both_turns(flywheel):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.from_config(str(flywheel["home"] / "dagster")) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        runs = {r.run_id: r for r in instance.get_runs()}
        assert flywheel["runs_first"] and flywheel["runs_first"] <= set(runs)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs.values())
        # the sensors' state lives there too: the second turn turned them on again
        assert flywheel["sensors_turned_off"] >= 4
    # nothing of the instance was written beside its dagster.yaml but Dagster's local artifacts (no SQLite storage)
    assert not list((flywheel["home"] / "dagster").rglob("*.db"))


def models_in(store: Store) -> dict[str, set[str]]:
    """Every folder under the models prefix and the files it holds (paths relative to the folder)."""
    out: dict[str, set[str]] = {}
    for key in store.list(MODELS):
        folder, _, rel = key[len(MODELS) + 1 :].partition("/")
        out.setdefault(folder, set()).add(rel)
    return out


def materialize(variant: str, env: dict[str, str], **popen) -> subprocess.Popen:
    """``dagster asset materialize`` of one ``daring_unet`` partition, in a process group of its own."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    argv = [dagster, "asset", "materialize", "-m", LOCATION, "--select", "daring_unet", "--partition", variant]
    return subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, **popen)


def free_the_killed_runs_slot_as_the_daemon_does(instance_home: Path) -> None:
    """The killed step's run still holds the GPU pool's one slot (a re-run would wait for it forever). In a
    deployment, run monitoring marks a run whose worker is gone failed, and the daemon frees its slots
    ``free_slots_after_run_end_seconds`` later: done here with Dagster's own daemon iteration."""
    from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration

    from cosmicman.assets.gpu_pools import TRAINING_POOL

    with dg.DagsterInstance.from_config(str(instance_home)) as instance:
        (killed,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        slots = instance.event_log_storage.get_concurrency_info
        assert [s.run_id for s in slots(TRAINING_POOL).claimed_slots] == [killed.run_id]
        instance.report_run_failed(killed)
        deadline = time.monotonic() + instance.run_monitoring_settings["free_slots_after_run_end_seconds"] + 60
        while slots(TRAINING_POOL).claimed_slots:
            assert time.monotonic() < deadline, "the daemon's iteration never freed the slot"
            time.sleep(2)
            list(execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), logging.getLogger(__name__)))


def test_a_publishing_step_killed_mid_way_leaves_no_half_published_model(flywheel, tmp_path):
    from diffusers import UNet2DConditionModel

    from cosmicman.datasets.layout import list_versions
    from cosmicman.datasets.lineage import published_models
    from cosmicman.datasets.verification import verify_version
    from cosmicman.model.pipelines import local_model_dir
    from tests.support.s3_tripwire import moto_s3_tripwire

    store: Store = flywheel["store"]
    before = published_models(store.url, store.storage_options)
    env = {**os.environ, **flywheel["env"], "COSMICMAN_VARIANTS": ",".join([*VARIANTS, CRASH_VARIANT])}
    step: dict[str, subprocess.Popen] = {}
    killed_at: list[str] = []
    tripped = threading.Event()

    copies_into_place: list[str] = []

    def kill_at_second_copy_into_place(environ: dict) -> bool:
        """The trainer uploads the model beside its final folder, then copies it into place, the marker last:
        the step dies at the second copy (the final folder holds one file, its marker not there)."""
        path = environ.get("PATH_INFO", "")
        if (
            not tripped.is_set()
            and environ["REQUEST_METHOD"] == "PUT"
            and "HTTP_X_AMZ_COPY_SOURCE" in environ
            and f"/{MODELS}/" in path
            and ".tmp-" not in path
        ):
            copies_into_place.append(path)
        if len(copies_into_place) == 2 and not tripped.is_set():
            os.killpg(step["proc"].pid, signal.SIGKILL)
            killed_at.append(path)
            tripped.set()
            return True
        return False

    log = tmp_path / "killed-step.log"
    with moto_s3_tripwire(kill_at_second_copy_into_place) as door, log.open("wb") as out:
        step["proc"] = materialize(CRASH_VARIANT, {**env, **endpoint_env(door)}, stdout=out, stderr=subprocess.STDOUT)
        code = step["proc"].wait(timeout=400)
    assert tripped.is_set() and code == -signal.SIGKILL, log.read_text()[-3000:]
    name = killed_at[0].split(f"/{MODELS}/", 1)[1].split("/", 1)[0]
    half = models_in(store)
    # the kill did leave a partly filled model folder behind, and no reader takes it (or any leftover) for a model
    assert name in half and TRAINING_RUN_FILE not in half[name]
    assert published_models(store.url, store.storage_options) == before
    free_the_killed_runs_slot_as_the_daemon_does(flywheel["home"] / "dagster")

    rerun = materialize(CRASH_VARIANT, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = rerun.communicate(timeout=400)[0].decode()
    assert rerun.returncode == 0, output[-3000:]
    after = models_in(store)
    published = published_models(store.url, store.storage_options)
    # every folder under the models prefix is a whole published model: its marker there, no temporary copies left
    assert sorted(after) == published == sorted({*before, name})
    assert all(TRAINING_RUN_FILE in files for files in after.values())
    # the re-run's model is whole: its files are the ones a published model of the turns holds, and it loads
    hola_mp_silu = [
        m for m in before if store.read_json(f"{MODELS}/{m}/{TRAINING_RUN_FILE}")["config"]["act_fn"] == "mp_silu"
    ]
    assert len(hola_mp_silu) == 1 and after[name] == after[hola_mp_silu[0]]
    assert store.read_json(f"{MODELS}/{name}/{TRAINING_RUN_FILE}")["config"]["act_fn"] == "gelu"
    with local_model_dir(store.uri(f"{MODELS}/{name}")) as path:
        assert UNet2DConditionModel.from_pretrained(path, subfolder="unet").config.cross_attention_dim > 0
    # the dataset versions too: each folder is a published version whose shards match its manifest
    versions = list_versions(store.url, store.storage_options)
    assert versions and [k for k in store.list("datasets/cosmicman-hq") if "/.tmp" in k] == []
    assert all(verify_version(store.url, v, store.storage_options).intact for v in versions)
