"""The flywheel's automation conditions, tick by tick on an instance without runs (materializations are
reported), through Dagster's own evaluator: what each tick requests, and that nothing is requested twice."""

import dagster as dg
import pytest
from dagster._core.definitions.asset_key import AssetJobKey

from cosmicman.assets.automation import AnnotatedBatch, newly_annotated
from cosmicman.definitions import build_definitions
from cosmicman.environments.local import local_execution, local_resources
from cosmicman.environments.settings import new_images_per_version

VARIANTS = ["baseline", "hola"]
SETUP = {"fake_person_classifier", "eval_set", "base_annotator", "test_prompts"}


class Ticks:
    """Successive ticks of the automation over one instance, carrying the cursor as the daemon does."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def __call__(self) -> dict[str, set[str | None]]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        requested = {k.to_user_string(): result.get_requested_partitions(k) for k in graph.materializable_asset_keys}
        # a job's condition asks for a run of the whole job: reported under the job's name
        for evaluation in result.results:
            if isinstance(evaluation.key, AssetJobKey):
                requested[evaluation.key.job_name] = set(evaluation.true_subset.expensively_compute_partition_keys())
        return {k: v for k, v in requested.items() if v}


def materialize(instance, asset: str, partition: str | None = None, data_version: str | None = None, **metadata):
    tags = {"dagster/data_version": data_version} if data_version else None
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset, partition=partition, metadata=metadata or None, tags=tags)
    )


@pytest.fixture
def ticks(tmp_path):
    defs = build_definitions(
        local_resources(store_url=str(tmp_path / "store"), folder_url=str(tmp_path / "folder")),
        variants=VARIANTS,
        **local_execution(),
    )
    with dg.instance_for_test() as instance:
        yield Ticks(defs, instance)


BATCHES = ["batch-00000", "batch-00001"]


def annotated_pool(instance, images: int, annotator: str) -> None:
    """Everything upstream of the dataset materialized, each of the pool's two batches annotated with ``images``
    images."""
    for asset in (*SETUP, "base_model_evaluation"):
        materialize(instance, asset)
    instance.add_dynamic_partitions("sourcing_batches", BATCHES)
    instance.add_dynamic_partitions("annotation_rounds", ["round-001"])
    for batch in BATCHES:
        for asset in ("raw_images", "filtered_images", "human_parsing"):
            materialize(instance, asset, batch)
    for asset in ("labelling_tasks", "human_labels", "annotator"):
        materialize(instance, asset, "round-001")
    for batch in BATCHES:
        annotate(instance, batch, images, annotator)


def annotate(instance, batch: str, images: int, annotator: str) -> None:
    """One batch annotated (and captioned), as one run of annotations_job reports it."""
    materialize(instance, "annotations", batch, images=images, annotator=annotator)
    materialize(instance, "captions", batch)


def test_the_setup_assets_are_requested_while_missing_then_never_again(ticks):
    for name in SETUP:
        materialize(ticks.instance, name)
    # then, in a run of its own, the untuned base model's evaluation (not in the setup run the rounds wait on)
    assert ticks() == {"base_model_evaluation": {None}}
    materialize(ticks.instance, "base_model_evaluation")
    assert ticks() == {}  # once, and no ablation table of the base alone


def test_newly_annotated_counts_a_batchs_additions_or_all_of_it_when_new_or_relabelled():
    before = AnnotatedBatch(images=60, annotator="a1")
    assert newly_annotated(AnnotatedBatch(92, "a1"), before) == 32
    assert newly_annotated(AnnotatedBatch(50, "a1"), before) == 0  # a batch that shrank adds nothing
    assert newly_annotated(AnnotatedBatch(60, "a2"), before) == 60  # a new annotator relabels every image
    assert newly_annotated(AnnotatedBatch(60, "a1"), None) == 60  # a batch new since the last version


def test_a_dataset_version_waits_for_enough_newly_annotated_images_summed_over_batches(ticks):
    threshold = new_images_per_version()
    annotated_pool(ticks.instance, images=60, annotator="a1")
    assert "cosmicman_hq" in ticks()  # the first version: as soon as every batch is annotated
    materialize(ticks.instance, "cosmicman_hq", data_version="v0001")
    ticks()
    # a new batch lands one image short; another batch's annotation again changes nothing
    ticks.instance.add_dynamic_partitions("sourcing_batches", ["batch-00002"])
    for asset in ("raw_images", "filtered_images", "human_parsing"):
        materialize(ticks.instance, asset, "batch-00002")
    annotate(ticks.instance, "batch-00002", threshold - 1, "a1")
    annotate(ticks.instance, "batch-00000", 60, "a1")
    assert "cosmicman_hq" not in ticks()
    # the old batch grows by the missing image: the sum over batches reaches the threshold
    annotate(ticks.instance, "batch-00000", 61, "a1")
    assert "cosmicman_hq" in ticks()
    assert "cosmicman_hq" not in ticks()  # requested once per arrival, not on every tick
    materialize(ticks.instance, "cosmicman_hq", data_version="v0002")
    ticks()
    # a new annotator relabels the pool batch by batch: each relabelled batch counts every image it has
    annotate(ticks.instance, "batch-00001", threshold - 1, "a2")
    assert "cosmicman_hq" not in ticks()
    annotate(ticks.instance, "batch-00002", threshold - 1, "a2")
    assert "cosmicman_hq" in ticks()


def test_the_first_version_waits_for_every_batch_to_be_annotated(ticks):
    annotated_pool(ticks.instance, images=60, annotator="a1")
    ticks.instance.add_dynamic_partitions("sourcing_batches", ["batch-00002"])
    for asset in ("raw_images", "filtered_images", "human_parsing"):
        materialize(ticks.instance, asset, "batch-00002")
    assert "cosmicman_hq" not in ticks()  # a batch not annotated yet
    annotate(ticks.instance, "batch-00002", 5, "a1")
    assert "cosmicman_hq" in ticks()


def test_annotations_are_one_run_per_batch_not_automation(ticks):
    annotated_pool(ticks.instance, images=60, annotator="a1")
    ticks()
    ticks.instance.add_dynamic_partitions("sourcing_batches", ["batch-00002"])
    for asset in ("raw_images", "filtered_images", "human_parsing"):
        materialize(ticks.instance, asset, "batch-00002")
    # the hitl_round_sensor asks for the new batch (it knows whether the loop stopped); automation does not
    requested = ticks()
    assert "annotations" not in requested and "captions" not in requested


def test_a_new_dataset_version_trains_each_variant_then_evaluates_it_then_one_ablation_table(ticks):
    annotated_pool(ticks.instance, images=60, annotator="a1")
    ticks()
    materialize(ticks.instance, "cosmicman_hq", data_version="v0001")
    # training_job's own condition: one run of the job per variant (the Jobs page lists them)
    assert ticks() == {"training_job": set(VARIANTS)}
    # (the daemon's next tick sees those runs in progress; once they materialize, the version is handled)
    for variant in VARIANTS:
        materialize(ticks.instance, "daring_unet", variant, data_version=f"v0001-{variant}")
    assert ticks() == {"evaluation": set(VARIANTS)}  # each trained model, once
    for variant in VARIANTS:
        materialize(ticks.instance, "evaluation", variant)
    assert ticks() == {"ablation_table": {None}}  # once for every variant
    materialize(ticks.instance, "ablation_table")
    assert ticks() == {}
    # the same version again (the pool was unchanged): nothing to train
    materialize(ticks.instance, "cosmicman_hq", data_version="v0001")
    assert ticks() == {}
    materialize(ticks.instance, "cosmicman_hq", data_version="v0002")
    assert ticks() == {"training_job": set(VARIANTS)}


def test_an_evaluation_alone_waits_for_its_model_and_the_table_waits_for_the_evaluation(ticks):
    annotated_pool(ticks.instance, images=60, annotator="a1")
    materialize(ticks.instance, "cosmicman_hq", data_version="v0001")
    for variant in VARIANTS:
        materialize(ticks.instance, "daring_unet", variant, data_version=f"m1-{variant}")
        materialize(ticks.instance, "evaluation", variant)
    materialize(ticks.instance, "ablation_table")
    ticks()
    ticks()
    # a retrained model (its own data version) is evaluated; the table waits for that evaluation
    materialize(ticks.instance, "daring_unet", "hola", data_version="m2-hola")
    assert ticks() == {"evaluation": {"hola"}}
    materialize(ticks.instance, "evaluation", "hola")
    assert ticks() == {"ablation_table": {None}}
