"""Every asset check of the code location, driven through Dagster: each passes on good input and fails on bad.

The checks run against stand-in assets with the real keys and partitions (what each check reads is written
by the test: a filtered table, round records, a dataset version, a model folder, evaluation metadata), so
they run in the same run as their asset, as they do in the flywheel's jobs.
"""

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from cosmicman.annotation.ledger import RoundLedger
from cosmicman.annotation.rounds import AnnotatorInForce, HitlRules, RoundPlan, close_round
from cosmicman.assets.annotation import annotation_rounds
from cosmicman.assets.annotation_checks import annotator_in_force_not_worse
from cosmicman.assets.automation import on_new_data_version_of
from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.datasets_checks import shards_match_manifest
from cosmicman.assets.evaluation_checks import build_evaluation_checks
from cosmicman.assets.filtering_checks import rejection_shares_within_bounds
from cosmicman.assets.training_checks import build_training_checks
from cosmicman.core.keys import table_key
from cosmicman.core.store import Store
from cosmicman.datasets.version import write_dataset_version
from cosmicman.jobs.annotation import annotations_job
from cosmicman.jobs.training import evaluation_job
from cosmicman.resources.storage import ObjectStoreResource
from tests.datasets.test_dataset_version import make_samples
from tests.support.tiny_model import poison_unet, truncate_unet, write_tiny_model

BATCH = "batch-00001"
VARIANTS = dg.StaticPartitionsDefinition(["hola"])


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def object_store(tmp_path):
    return ObjectStoreResource(url=str(tmp_path / "store"))


def evaluation_of(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


# -- filtered_images: each filter's rejection share within bounds (warn) ---------------------------------------


@dg.asset(key="filtered_images", partitions_def=sourcing_batches)
def filtered_stand_in() -> None:
    """The batch's table is written by the test."""


def check_batch(instance, object_store, decisions: dict[str, int], config: dict | None = None):
    rows = [d for d, n in decisions.items() for _ in range(n)]
    object_store.store().write_table(table_key("filtered_images", BATCH), pl.DataFrame({"decision": rows}))
    instance.add_dynamic_partitions(sourcing_batches.name, [BATCH])
    result = dg.materialize(
        [filtered_stand_in, rejection_shares_within_bounds],
        partition_key=BATCH,
        instance=instance,
        resources={"object_store": object_store},
        run_config={"ops": {"filtered_images_rejection_shares_within_bounds": {"config": config or {}}}},
    )
    return evaluation_of(result, "rejection_shares_within_bounds")


def test_rejection_share_exactly_at_its_bound_passes(instance, object_store):
    check = check_batch(instance, object_store, {"kept": 10, "too_small": 90})
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["share_size"].value == 0.9
    shares = {r.data["filter"]: r.data for r in check.metadata["shares"].value.records}
    assert list(shares) == ["decode", "size", "fake_person", "quality", "person_count", "face_size"]
    assert shares["size"] == {
        "filter": "size",
        "reached": 100,
        "rejected": 90,
        "share": 0.9,
        "min_share": 0.0,
        "max_share": 0.9,
        "judged": True,
        "within": True,
    }
    # the 10 images left are too few to judge the later filters: said, not hidden
    assert "fake_person, quality, person_count, face_size reached by under 20 images" in check.description


def test_rejection_share_just_over_its_bound_warns(instance, object_store):
    check = check_batch(instance, object_store, {"kept": 9, "too_small": 91})
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == "size rejected 91.0 % of 100 (bounds 0.0-90.0 %)"
    assert check.metadata["out_of_bounds"].value == 1


def test_rejection_bounds_come_from_run_config(instance, object_store):
    check = check_batch(instance, object_store, {"kept": 9, "too_small": 91}, {"max_share": {"size": 0.95}})
    assert check.passed
    check = check_batch(instance, object_store, {"kept": 95, "fake_person": 5}, {"min_share": {"fake_person": 0.06}})
    assert not check.passed and check.description.startswith("fake_person rejected 5.0 % of 100")


# -- annotator: the annotator in force not worse on I_e than the one before (blocking the pool's annotation) ----

RULES = HitlRules(threshold=0.5)  # exact binary fractions below
BEFORE = {"a": 0.25, "b": 1.0}  # mean 0.625
EQUAL = {"a": 0.5, "b": 0.75}  # every category passes: adopted, mean 0.625
WORSE = {"a": 0.5, "b": 0.74}  # every category passes: adopted, mean 0.62


def close_round_one(store: Store, after: dict[str, float]) -> None:
    ledger = RoundLedger(store)
    base = AnnotatorInForce("probe-r0", "models/annotator/probe-r0.zip")
    ledger.write_base(base.version, base.key)
    plan = RoundPlan(1, base, BEFORE, tuple(BEFORE), ("img00",), 100, RULES.threshold)
    ledger.write_plan(plan)
    ledger.write_result(
        close_round(plan, AnnotatorInForce("probe-r1", "models/annotator/probe-r1.zip"), after, 10, RULES)
    )


@dg.asset(key="annotator", partitions_def=annotation_rounds)
def annotator_stand_in() -> None:
    """The round's records are written by the test."""


@dg.asset(
    key="annotations",
    partitions_def=sourcing_batches,
    deps=[dg.AssetDep("annotator", partition_mapping=dg.LastPartitionMapping())],
)
def annotations_stand_in() -> None:
    """Stands for annotating one batch of the pool."""


@dg.asset(key="captions", partitions_def=sourcing_batches, deps=["annotations"])
def captions_stand_in() -> None:
    """Stands for captioning one batch of the pool."""


def run_round(instance, object_store) -> dg.AssetCheckEvaluation:
    instance.add_dynamic_partitions(annotation_rounds.name, ["round-001"])
    result = dg.materialize(
        [annotator_stand_in, annotator_in_force_not_worse],
        partition_key="round-001",
        instance=instance,
        resources={"object_store": object_store},
        raise_on_error=False,
    )
    return evaluation_of(result, "annotator_in_force_not_worse")


def test_annotator_equal_on_eval_set_passes(instance, object_store):
    close_round_one(object_store.store(), EQUAL)
    check = run_round(instance, object_store)
    assert check.passed and check.metadata["mean_accuracy_current"].value == 0.625
    assert check.description.startswith("probe-r1 (in force after round 1) is not worse than probe-r0")


def test_annotator_just_worse_on_eval_set_fails_and_blocks(instance, object_store):
    close_round_one(object_store.store(), WORSE)
    check = run_round(instance, object_store)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR and check.blocking
    assert check.metadata["change_points"].value == -0.5
    assert [r.data["category"] for r in check.metadata["categories_fallen"].value.records] == ["b"]


def test_no_closed_round_passes_saying_so(instance, object_store):
    check = run_round(instance, object_store)
    assert check.passed and check.description.startswith("no round has closed yet")


@pytest.mark.parametrize(("after", "annotated"), [(EQUAL, True), (WORSE, False)])
def test_annotations_job_annotates_a_batch_only_after_the_check_passed(instance, object_store, after, annotated):
    close_round_one(object_store.store(), after)
    defs = dg.Definitions(
        assets=[annotator_stand_in, annotations_stand_in, captions_stand_in],
        asset_checks=[annotator_in_force_not_worse],
        jobs=[annotations_job],
        resources={"object_store": object_store},
    )
    instance.add_dynamic_partitions(sourcing_batches.name, [BATCH])
    result = defs.resolve_job_def("annotations_job").execute_in_process(
        instance=instance, partition_key=BATCH, raise_on_error=False
    )
    assert evaluation_of(result, "annotator_in_force_not_worse").passed is annotated
    assert result.success is annotated
    materialized = {(e.asset_key.path[0], e.partition) for e in result.get_asset_materialization_events()}
    assert materialized == ({("annotations", BATCH), ("captions", BATCH)} if annotated else set())


# -- cosmicman_hq: the shards match the manifest (blocking) ------------------------------------------------------


@dg.asset(key="cosmicman_hq")
def dataset_stand_in() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"version": "v0001"})


@dg.asset(key="daring_unet", deps=["cosmicman_hq"])
def training_stand_in() -> None:
    """What must not train on a version whose shards do not match."""


@pytest.fixture
def dataset(object_store) -> list[Path]:
    """The shared shard files of v0001, in its order."""
    store = object_store.store()
    info = write_dataset_version(store.url, "v0001", make_samples(7), samples_per_shard=3)
    return [Path(store.url) / "datasets" / "cosmicman-hq" / "shards" / name for name in info.shards]


def run_dataset(instance, object_store, selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dataset_stand_in, training_stand_in, shards_match_manifest],
        selection=selection,
        instance=instance,
        resources={"object_store": object_store},
        raise_on_error=False,
    )


def test_intact_shards_match_the_manifest(instance, object_store, dataset):
    result = run_dataset(instance, object_store)
    check = evaluation_of(result, "shards_match_manifest")
    assert check.passed and check.description.startswith("v0001: 3 shards, 7 samples")
    assert (check.metadata["shards"].value, check.metadata["samples"].value) == (3, 7)
    assert {e.asset_key.path[0] for e in result.get_asset_materialization_events()} == {"cosmicman_hq", "daring_unet"}


def test_an_altered_shard_fails_and_blocks_what_trains_on_it(instance, object_store, dataset):
    shard = dataset[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = run_dataset(instance, object_store)
    check = evaluation_of(result, "shards_match_manifest")
    assert not check.passed and check.blocking
    (problem,) = [r.data["problem"] for r in check.metadata["problems"].value.records]
    assert problem.startswith(f"{shard.name}: sha256")
    assert {e.asset_key.path[0] for e in result.get_asset_materialization_events()} == {"cosmicman_hq"}


def test_a_shard_lost_later_fails_when_the_check_runs_again(instance, object_store, dataset):
    assert evaluation_of(run_dataset(instance, object_store), "shards_match_manifest").passed
    dataset[2].unlink()
    again = run_dataset(instance, object_store, selection=dg.AssetSelection.checks(shards_match_manifest))
    check = evaluation_of(again, "shards_match_manifest")
    assert not check.passed and check.metadata["problems_total"].value == 1
    assert check.metadata["problems"].value.records[0].data["problem"] == f"{dataset[2].name}: missing"


# -- daring_unet: the model loads and its weights are finite (blocking before evaluation) ------------------------


class ModelAt(dg.Config):
    url: str
    version: str = "model-1"


@dg.asset(key="daring_unet", partitions_def=VARIANTS)
def model_stand_in(config: ModelAt) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"output_url": config.url}, data_version=dg.DataVersion(config.version))


@dg.asset(key="evaluation", deps=["daring_unet"], partitions_def=VARIANTS)
def evaluation_stand_in() -> None:
    """What must not evaluate a broken model in the same run."""


(MODEL_CHECK,) = build_training_checks(VARIANTS)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def train(instance, url: Path, version: str = "model-1", evaluate: bool = True) -> dg.ExecuteInProcessResult:
    """Train (stand-in) and check the model, and evaluate it in the same run when ``evaluate``."""
    return dg.materialize(
        [model_stand_in, *([evaluation_stand_in] if evaluate else []), MODEL_CHECK],
        partition_key="hola",
        instance=instance,
        run_config={"ops": {"daring_unet": {"config": {"url": str(url), "version": version}}}},
        raise_on_error=False,
    )


def test_a_sound_model_passes(instance, tiny_model):
    result = train(instance, tiny_model)
    check = evaluation_of(result, "model_loads_with_finite_weights")
    assert check.passed and check.metadata["loads"].value and check.metadata["non_finite"].value == 0
    assert {e.asset_key.path[0] for e in result.get_asset_materialization_events()} == {"daring_unet", "evaluation"}


def test_a_nan_weight_fails_and_blocks_evaluation_in_the_run(instance, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (name,) = poison_unet(folder)
    result = train(instance, folder)
    check = evaluation_of(result, "model_loads_with_finite_weights")
    assert not check.passed and check.blocking and check.metadata["non_finite"].value == 1
    assert check.metadata["non_finite_tensors"].value == {f"unet.{name}": 1}
    assert {e.asset_key.path[0] for e in result.get_asset_materialization_events()} == {"daring_unet"}


def test_a_model_that_does_not_load_fails(instance, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    truncate_unet(folder)
    check = evaluation_of(train(instance, folder), "model_loads_with_finite_weights")
    assert not check.passed and not check.metadata["loads"].value and "does not load" in check.description


def test_evaluation_job_evaluates_only_a_model_that_passed_its_check(instance, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    poison_unet(folder)
    defs = dg.Definitions(
        assets=[model_stand_in, evaluation_stand_in], asset_checks=[MODEL_CHECK], jobs=[evaluation_job]
    )
    job = defs.resolve_job_def("evaluation_job")
    for url, evaluated in ((folder, False), (tiny_model, True)):
        train(instance, url, evaluate=False)
        result = job.execute_in_process(instance=instance, partition_key="hola", raise_on_error=False)
        assert evaluation_of(result, "model_loads_with_finite_weights").passed is evaluated
        assert bool(result.get_asset_materialization_events()) is evaluated


@dg.asset(
    key="evaluation",
    deps=["daring_unet"],
    partitions_def=VARIANTS,
    automation_condition=on_new_data_version_of("daring_unet"),
)
def automated_evaluation_stand_in() -> None:
    """Evaluation under the flywheel's own automation condition."""


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised by Dagster's own condition tester
def test_automation_does_not_evaluate_a_model_whose_check_failed(instance, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    poison_unet(folder)
    assets = [model_stand_in, automated_evaluation_stand_in, MODEL_CHECK]
    result = dg.evaluate_automation_conditions(defs=assets, instance=instance)
    train(instance, folder, version="broken", evaluate=False)
    result = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=result.cursor)
    assert result.get_requested_partitions(dg.AssetKey("evaluation")) == set()
    train(instance, tiny_model, version="sound", evaluate=False)
    result = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=result.cursor)
    assert result.get_requested_partitions(dg.AssetKey("evaluation")) == {"hola"}


# -- evaluation: not worse than on the previous dataset version (warn) -------------------------------------------


class Figures(dg.Config):
    dataset_version: str
    acc_all: float
    frechet_distance: float


@dg.asset(key="evaluation", partitions_def=VARIANTS)
def evaluated_stand_in(config: Figures) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=config.model_dump())


(EVALUATION_CHECK,) = build_evaluation_checks(VARIANTS)


def evaluate(instance, version: str, acc_all: float, fd: float, tolerance: dict | None = None):
    result = dg.materialize(
        [evaluated_stand_in, EVALUATION_CHECK],
        partition_key="hola",
        instance=instance,
        run_config={
            "ops": {
                "evaluation": {"config": {"dataset_version": version, "acc_all": acc_all, "frechet_distance": fd}},
                "evaluation_evaluation_not_worse_than_previous_version": {"config": tolerance or {}},
            }
        },
    )
    return evaluation_of(result, "evaluation_not_worse_than_previous_version")


def test_first_dataset_version_passes_saying_there_is_nothing_to_compare(instance):
    check = evaluate(instance, "v0001", 0.6, 10.0)
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == "no evaluation on a dataset version before v0001: nothing to compare"


def test_equal_or_within_tolerance_passes_just_worse_warns(instance):
    evaluate(instance, "v0001", 0.6, 10.0)
    assert evaluate(instance, "v0002", 0.6, 10.0).passed
    assert evaluate(instance, "v0002", 0.6 - 0.03, 10.0 * 1.2).passed  # the same version again: still v0001's
    worse = evaluate(instance, "v0002", 0.6 - 0.03 - 1e-6, 10.0)
    assert not worse.passed and worse.severity == dg.AssetCheckSeverity.WARN
    assert worse.metadata["previous_dataset_version"].value == "v0001"
    assert "acc_all 0.5700 vs 0.6000 (worse" in worse.description
    assert not evaluate(instance, "v0002", 0.6, 10.0 * 1.2 + 1e-6).passed


def test_compares_with_the_latest_previous_version_and_tolerances_from_run_config(instance):
    evaluate(instance, "v0001", 0.9, 1.0)
    evaluate(instance, "v0002", 0.5, 1.0)
    check = evaluate(instance, "v0003", 0.5, 1.0)
    assert check.passed and check.metadata["previous_acc_all"].value == 0.5  # v0002's, not v0001's
    assert not evaluate(instance, "v0004", 0.49, 1.0, {"acc_all_drop": 0.0}).passed


# -- the code location: every check runs in the jobs of its asset -------------------------------------------------


def test_every_check_runs_with_its_asset_and_the_annotator_check_gates_the_pools_annotation():
    from cosmicman.definitions import defs

    checks = {str(k.asset_key.path[0]): k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "filtered_images": "rejection_shares_within_bounds",
        "annotator": "annotator_in_force_not_worse",
        "cosmicman_hq": "shards_match_manifest",
        "daring_unet": "model_loads_with_finite_weights",
        "evaluation": "evaluation_not_worse_than_previous_version",
    }
    steps = {
        job: {n.name for n in defs.resolve_job_def(job).nodes}
        for job in ("pool_job", "labels_job", "annotations_job", "dataset_job", "training_job", "evaluation_job")
    }
    assert "filtered_images_rejection_shares_within_bounds" in steps["pool_job"]
    assert "annotator_annotator_in_force_not_worse" in steps["labels_job"]
    assert steps["annotations_job"] == {"annotator_annotator_in_force_not_worse", "annotations", "captions"}
    assert "cosmicman_hq_shards_match_manifest" in steps["dataset_job"]
    assert "daring_unet_model_loads_with_finite_weights" in steps["training_job"]
    assert steps["evaluation_job"] == {
        "daring_unet_model_loads_with_finite_weights",
        "evaluation",
        "evaluation_evaluation_not_worse_than_previous_version",
    }
