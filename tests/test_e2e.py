"""The flywheel turns: the whole asset graph on a small synthetic pool, twice, through Dagster's daemon
(the turn ``tests/support/daemon_turn.py`` runs for the slow tests)."""

import json
import os

import polars as pl
import pytest

from tests.support.daemon_turn import VARIANTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flywheel(turned_flywheel):
    return turned_flywheel


def test_every_raw_image_is_kept_or_rejected_for_its_true_reason(flywheel):
    store = flywheel["store"]
    raw = pl.concat([df for _, df in store.iter_tables("tables/raw_images")])
    filtered = pl.concat([df for _, df in store.iter_tables("tables/filtered_images")])
    assert len(filtered) == len(raw) and set(filtered["sha256"]) == set(raw["sha256"])
    counts = dict(filtered.group_by("decision").len().iter_rows())
    assert sum(counts.values()) == len(raw)
    truth = pl.concat([df for _, df in store.iter_tables("tables/synthetic_truth")]).select("sha256", "case")
    joined = filtered.join(truth, on="sha256")
    assert len(joined) > 0 and joined["case"].n_unique() == 7  # every case the filters judge occurred
    # undecodable renders never reach the pool: sourcing records them as failures with a reason
    log = pl.concat([df for _, df in store.iter_tables("tables/sourcing_log")])
    corrupt = log.filter(pl.col("url").str.contains("case=corrupt"))
    assert len(corrupt) > 0 and set(corrupt["status"]) == {"failed"} and corrupt["reason"].null_count() == 0
    assert len(log.filter(pl.col("status") == "stored")) == len(raw)
    mismatched = joined.filter(pl.col("decision") != pl.col("case"))
    assert mismatched.is_empty(), mismatched.select("sha256", "case", "decision", "detail")
    # the folder dataset (no truth) holds only good people: all kept
    folder = filtered.join(raw.filter(pl.col("source") == "folder").select("sha256"), on="sha256")
    assert len(folder) > 0 and set(folder["decision"]) == {"kept"}


def test_dataset_stats_match_the_manifest(flywheel):
    from cosmicman.datasets.layout import read_manifest, read_stats
    from cosmicman.datasets.verification import verify_shards

    store = flywheel["store"]
    version = flywheel["first"]["dataset"]["version"]
    manifest = read_manifest(store.url, version)
    stats = read_stats(store.url, version)
    assert flywheel["first"]["dataset"]["samples"] == len(manifest) > 0
    assert stats["n_images"] == len(manifest)
    assert verify_shards(store.url, version) == []
    synthetic_kept = pl.concat([df for _, df in store.iter_tables("tables/filtered_images")]).filter(
        pl.col("decision") == "kept"
    )
    parsed = pl.concat([df for _, df in store.iter_tables("tables/human_parsing")])
    assert set(manifest["sha256"]) == set(parsed["sha256"]) <= set(synthetic_kept["sha256"])


def test_trained_unet_loads_in_diffusers(flywheel):
    from diffusers import UNet2DConditionModel

    from cosmicman.model.pipelines import local_model_dir

    variants = flywheel["first"]["variants"]
    assert len({v["output_url"] for v in variants.values()}) == len(VARIANTS)  # one model per variant
    training = variants["hola"]
    assert training["steps"] == 12
    assert all(isinstance(training[k], float) and training[k] > 0 for k in ("loss_first", "loss_last"))
    with local_model_dir(training["output_url"]) as path:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
        assert unet.config.cross_attention_dim > 0
        with open(os.path.join(path, "training_run.json")) as f:
            run_record = json.load(f)
    assert run_record["config"]["beta"] == 1.0 and run_record["config"]["act_fn"] == "silu"
    with (
        local_model_dir(variants["baseline"]["output_url"]) as path,
        open(os.path.join(path, "training_run.json")) as f,
    ):
        assert json.load(f)["config"]["beta"] == 0.0  # the baseline trains on the noise loss alone
    with (
        local_model_dir(variants["hola-mp_silu"]["output_url"]) as path,
        open(os.path.join(path, "training_run.json")) as f,
    ):
        assert json.load(f)["config"]["act_fn"] == "mp_silu"
    assert flywheel["first"]["ablation_rows"] == len(VARIANTS)
    # every variant reports the share of group attention inside the masks (HOLA's aim), also when reused
    for run_ in ("first", "second"):
        assert all(0.0 < v["attention_in_mask"] < 1.0 for v in flywheel[run_]["variants"].values())


def test_evaluation_metrics_are_numbers_in_range(flywheel):
    for ev in [*flywheel["first"]["variants"].values(), flywheel["first"]["base"]]:
        for k in ("acc_obj", "acc_tex", "acc_shape", "acc_all"):
            assert 0.0 <= ev[k] <= 1.0, (k, ev[k])
        assert ev["frechet_distance"] >= 0.0
    # the small flywheel trains one seed per variant: the gain over the baseline is measured, without a spread
    assert all(v["seeds"] == [0] and v["acc_all_sd"] is None for v in flywheel["first"]["variants"].values())
    ablation = flywheel["first"]["ablation"]
    assert ablation["hola_attention_gain_seeds"] == 1 and ablation["hola_attention_gain_sd"] is None
    assert -1.0 < ablation["hola_attention_gain"] < 1.0


def test_hitl_rounds_improve_the_annotator_cheaply(flywheel):
    from cosmicman.annotation.ledger import RoundLedger

    h = flywheel["first"]["hitl"]
    assert 1 <= h["rounds"] <= 2 and len(h["curve"]) == h["rounds"] + 1
    assert h["mean_accuracy_final"] > h["mean_accuracy_round0"]
    assert h["labels_asked"] > 0 and h["manual_share"] < 0.5
    assert h["stop_reason"] in ("all pass", "no gain", "max rounds (2)")
    results = RoundLedger(flywheel["store"]).results()
    # rounds sample images no earlier round asked about; each round starts from the annotator in force
    sampled = [set(r.sampled_ids) for r in results]
    assert all(not (a & b) for i, a in enumerate(sampled) for b in sampled[i + 1 :])
    for prev, nxt in zip(results, results[1:]):
        assert nxt.annotator_before == prev.annotator_in_force
    assert flywheel["second"]["hitl"]["rounds"] == h["rounds"]  # a second turn opens no new round


def test_second_run_adds_no_duplicate_blob_or_row(flywheel):
    first, second = flywheel["first"], flywheel["second"]
    assert second["new_batches"] == [] and second["runs"]["launched"] == 0
    # nothing changed, so nothing re-ran: the same dataset version and models are the latest
    assert second["dataset"]["version"] == first["dataset"]["version"]
    assert {v: s["output_url"] for v, s in second["variants"].items()} == {
        v: s["output_url"] for v, s in first["variants"].items()
    }
    assert flywheel["census_second"] == flywheel["census_first"]


def test_lineage_of_a_trained_model_names_its_batches_and_rounds(flywheel, capsys):
    from cosmicman.cli.__main__ import main
    from cosmicman.core.store import Store
    from cosmicman.datasets.layout import read_manifest

    store: Store = flywheel["store"]
    model_url = flywheel["first"]["variants"]["hola"]["output_url"]
    assert main(["lineage", model_url, "--store", store.url]) == 0
    lin = json.loads(capsys.readouterr().out)
    version = flywheel["first"]["dataset"]["version"]
    in_dataset = set(read_manifest(store.url, version)["sha256"].to_list())
    # expected independently of the manifest's provenance: the raw tables' partitions, the annotations
    batches = {
        key.rsplit("/", 1)[-1].removesuffix(".parquet")
        for key, df in store.iter_tables("tables/raw_images")
        if set(df["sha256"].to_list()) & in_dataset
    }
    ann = pl.concat([df for _, df in store.iter_tables("tables/annotations")]).filter(
        pl.col("sha256").is_in(list(in_dataset))
    )
    assert lin["dataset_version"] == version and lin["samples"] == len(in_dataset)
    assert lin["sourcing_batches"] == sorted(batches) and len(batches) >= 2
    # the label rounds behind the model: those adopted into the annotator that labelled its samples
    from cosmicman.annotation.ledger import RoundLedger

    adopted = [r.round for r in RoundLedger(store).results() if r.adopted and r.labels_asked]
    assert adopted and lin["label_rounds"] == adopted
    assert set(ann["label_rounds"].to_list()) == {json.dumps(adopted)}
    assert lin["code_versions"]["trainer"] and lin["training"]["beta"] == 1.0
    assert lin["filter_configs"] and all(c["backend"] == "local" for c in lin["filter_configs"])
    assert sum(lin["sources"].values()) == lin["samples"]
