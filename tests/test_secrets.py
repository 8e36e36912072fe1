"""No secret leaks: the flywheel's first runs (the fake-person head, a sourcing batch and its filtering) with fake
but unique secrets in every place a deployment holds one -- the web APIs' keys (sourcing calls the fake APIs with
them), the S3 credentials of the store (a real S3-speaking server), the Label Studio key (held by labelling), and
the password of the PostgreSQL instance -- and none of them appears in the files the runs wrote (compute logs, the
instance's local artifacts), the event records and materialization metadata, the runs and their configuration,
the object store, or the UI's GraphQL answers. (The daemon-driven turn takes over ten minutes on two cores; these
runs are the same code location's runs, executed in this process.)"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest

from cosmicman.cli.instance import PRODUCTION_INSTANCE_YAML
from tests.support.daemon_turn import write_workspace
from tests.support.fake_apis import FakeApiServer
from tests.support.postgres_server import PostgresUnavailable, postgres_server
from tests.support.s3_server import moto_s3

# deploy: with the production turn, out of the default run until the suite's time allows (make test-deploy)
pytestmark = [pytest.mark.slow, pytest.mark.deploy]

BUCKET = "cosmicman-secrets"
STORE_URL = f"s3://{BUCKET}/flywheel"
LOCATION = "tests.support.secrets_flywheel"
BATCH = "batch-00000"
RUN_ID = uuid.uuid4().hex[:12]
SECRETS = {
    name: f"SECRET-{tag}-{RUN_ID}"
    for name, tag in (
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "S3KEY"),
        ("FLICKR_API_KEY", "FLICKR"),
        ("UNSPLASH_ACCESS_KEY", "UNSPLASH"),
        ("PIXABAY_API_KEY", "PIXABAY"),
        ("LABEL_STUDIO_API_KEY", "LABELSTUDIO"),
        ("DAGSTER_PG_PASSWORD", "PGPASS"),
    )
}


def leaks(text: str) -> list[str]:
    """The secrets (by variable name) whose value ``text`` holds."""
    return [name for name, value in SECRETS.items() if value in text]


def turn(home: Path) -> dict:
    """The code location's first steps, run as the daemon's runs would run them, on the PostgreSQL instance:
    the fake-person head, then a sourcing batch (synthetic world, demo folder, the three web APIs) and its
    filtering."""
    import importlib

    from cosmicman.environments.local import seed_demo_folder
    from tests.support.daemon_turn import census

    seed_demo_folder(home)  # as `python -m cosmicman.cli run` does before the daemon starts
    location = importlib.import_module(LOCATION)
    job = location.defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("sourcing_batches", [BATCH])
        head = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("fake_person_classifier")])
        batch = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("raw_images"), dg.AssetKey("filtered_images")],
            partition_key=BATCH,
        )
    assert head.success and batch.success
    return {
        "runs": [head.run_id, batch.run_id],
        "census": census(location.resources["object_store"].process_config_and_initialize().store()),
    }


@pytest.fixture(scope="module")
def turned(tmp_path_factory):
    home = tmp_path_factory.mktemp("secrets-home")
    instance_home = home / "dagster"
    instance_home.mkdir()
    shutil.copyfile(PRODUCTION_INSTANCE_YAML, instance_home / "dagster.yaml")
    with mock.patch("tests.support.postgres_server.PASSWORD", SECRETS["DAGSTER_PG_PASSWORD"]):
        try:
            server = postgres_server()
            postgres = server.__enter__()
        except PostgresUnavailable as exc:
            pytest.fail(f"no PostgreSQL to hold the instance (and its password): {exc}; install Debian's postgresql")
        try:
            with (
                moto_s3(BUCKET) as s3,
                FakeApiServer(
                    time.time,
                    flickr_key=SECRETS["FLICKR_API_KEY"],
                    unsplash_key=SECRETS["UNSPLASH_ACCESS_KEY"],
                    pixabay_key=SECRETS["PIXABAY_API_KEY"],
                    photos_per_term=4,
                    max_lifetime_s=600,
                ) as apis,
                pytest.MonkeyPatch.context() as patch,
            ):
                env = {
                    **postgres.env(),
                    **s3.env(STORE_URL),
                    **{name: value for name, value in SECRETS.items() if name != "DAGSTER_PG_PASSWORD"},
                    "AWS_ENDPOINT_URL": s3.url,
                    "COSMICMAN_HOME": str(home),
                    "DAGSTER_HOME": str(instance_home),
                    "COSMICMAN_FLICKR_BASE_URL": apis.flickr.base_url,
                    "COSMICMAN_UNSPLASH_BASE_URL": apis.unsplash.base_url,
                    "COSMICMAN_PIXABAY_BASE_URL": apis.pixabay.base_url,
                    "COSMICMAN_FLICKR_BATCH_SIZE": "2",
                    "COSMICMAN_UNSPLASH_BATCH_SIZE": "2",
                    "COSMICMAN_PIXABAY_BATCH_SIZE": "2",
                }
                for name, value in env.items():
                    patch.setenv(name, value)
                workspace = write_workspace(home, LOCATION)
                yield {**turn(home), "home": home, "workspace": workspace, "apis": apis, "store": s3}
        finally:
            server.__exit__(None, None, None)


def test_every_secret_reached_the_resource_that_uses_it(turned):
    """The scans below are not vacuous: each web API was called with its key and accepted it, and the store
    and the instance were reached with theirs (the turn ran on them)."""
    apis = turned["apis"]
    for fake in (apis.flickr, apis.unsplash, apis.pixabay):
        searches = fake.search_requests()
        # each fake answers 200 only to its own key (a wrong or missing one gets the API's auth error)
        assert searches and all(r.status == 200 for r in searches), (fake.name, [r.status for r in searches])
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
    assert {r.run_id for r in runs} == set(turned["runs"])
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert turned["census"]["blobs"] > 0 and turned["census"]["rows"]


def test_no_file_the_turn_wrote_holds_a_secret(turned):
    """Compute logs and the local artifacts of the instance: every file under the home (the database's own files
    live elsewhere)."""
    scanned = 0
    for path in Path(turned["home"]).rglob("*"):
        if path.is_file():
            scanned += 1
            assert leaks(path.read_bytes().decode("utf-8", "replace")) == [], path
    compute_logs = [p for p in Path(turned["home"]).rglob("*") if p.suffix in (".err", ".out", ".complete")]
    assert scanned > 0 and compute_logs


def test_no_object_in_the_store_holds_a_secret(turned):
    import s3fs

    options = turned["store"].storage_options()
    fs = s3fs.S3FileSystem(key=options["key"], secret=options["secret"], client_kwargs=options["client_kwargs"])
    keys = fs.find(BUCKET)
    assert len(keys) > 10
    for key in keys:
        assert leaks(fs.cat_file(key).decode("utf-8", "replace")) == [], key


def test_no_run_event_or_tick_holds_a_secret(turned):
    """Every run (its config and tags), every event record (materialization metadata, logs, step failures),
    every instigator's state and ticks, serialized as the instance stores them."""
    from dagster._core.scheduler.instigation import InstigatorType

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        events = [entry for run in runs for entry in instance.all_logs(run.run_id)]
        states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        ticks = [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]
        info = instance.info_dict()
    materializations = [e for e in events if e.dagster_event and e.dagster_event.is_step_materialization]
    assert len(runs) == 2 and len(materializations) >= 3
    for item in [*runs, *events, *states, *ticks]:
        assert leaks(dg.serialize_value(item)) == [], item
    assert leaks(repr(info)) == []


RUNS_QUERY = """
query {
  runsOrError { ... on Runs { results { runId status runConfigYaml tags { key value } } } }
  instance { info }
}
"""
MATERIALIZATIONS_QUERY = """
query {
  assetsOrError { ... on AssetConnection { nodes { key { path }
    assetMaterializations(limit: 20) { runId description metadataEntries {
      label description
      ... on TextMetadataEntry { text }
      ... on JsonMetadataEntry { jsonString }
      ... on MarkdownMetadataEntry { mdStr }
      ... on UrlMetadataEntry { url }
      ... on PathMetadataEntry { path }
      ... on TableMetadataEntry { table { records } }
    } }
  } } }
}
"""
RESOURCES_QUERY = """
query ($selector: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
    ... on ResourceDetailsList { results { name configuredValues { key value type } } }
  }
}
"""
LOGS_QUERY = """
query ($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) { ... on EventConnection { events { __typename
    ... on MessageEvent { message }
    ... on ExecutionStepFailureEvent { error { message stack } }
    ... on RunFailureEvent { error { message stack } }
  } } }
}
"""


def test_the_ui_shows_no_secret_and_names_each_variable(turned):
    """The UI's GraphQL: runs and their config, the instance, every asset's materializations with their
    metadata, every run's event log, and the resources' configuration -- where a secret shows as the name of
    its environment variable."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_graphql.test.utils import execute_dagster_graphql, infer_repository_selector

    with (
        dg.DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(turned["workspace"])])) as process,
    ):
        context = process.create_request_context()
        answers = {
            "runs": execute_dagster_graphql(context, RUNS_QUERY),
            "materializations": execute_dagster_graphql(context, MATERIALIZATIONS_QUERY),
            "resources": execute_dagster_graphql(
                context, RESOURCES_QUERY, {"selector": infer_repository_selector(context)}
            ),
        }
        run_ids = [r["runId"] for r in answers["runs"].data["runsOrError"]["results"]]
        for run_id in run_ids:
            answers[f"logs {run_id}"] = execute_dagster_graphql(context, LOGS_QUERY, {"runId": run_id})
    for name, answer in answers.items():
        assert not answer.errors, (name, answer.errors)
        assert leaks(repr(answer.data)) == [], name
    assert run_ids
    nodes = answers["materializations"].data["assetsOrError"]["nodes"]
    materialized = {"/".join(n["key"]["path"]) for n in nodes if n["assetMaterializations"]}
    assert materialized == {"fake_person_classifier", "raw_images", "filtered_images"}
    configured = {
        (resource["name"], value["key"]): (value["value"], value["type"])
        for resource in answers["resources"].data["allTopLevelResourceDetailsOrError"]["results"]
        for value in resource["configuredValues"]
    }
    # a secret shows as its variable's name, marked as one
    for (resource, field), name in {
        ("object_store", "access_key_id"): "AWS_ACCESS_KEY_ID",
        ("object_store", "secret_access_key"): "AWS_SECRET_ACCESS_KEY",
        ("sourcing", "flickr_api_key"): "FLICKR_API_KEY",
        ("sourcing", "unsplash_access_key"): "UNSPLASH_ACCESS_KEY",
        ("sourcing", "pixabay_api_key"): "PIXABAY_API_KEY",
        ("labelling", "label_studio_api_key"): "LABEL_STUDIO_API_KEY",
    }.items():
        assert configured[(resource, field)] == (name, "ENV_VAR"), (resource, field)
