"""The ablation over training seeds through the assets: ``daring_unet`` trains each seed of a variant (reusing
trained ones), ``evaluation`` scores each seed's model and reports means and spreads, ``base_model_evaluation``
scores the untuned base, and ``ablation_table`` shows them with HOLA's attention gain paired by seed.

The launchers are stand-ins that publish what the trainer and the evaluation publish (a run record, a report)
with figures set by the test from the seed and the variant, so every mean, spread and gain is known exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

import cosmicman.assets.training as training_assets
from cosmicman.assets.ablation_rows import BASE_ROW
from cosmicman.assets.evaluation import ablation_table, base_model_evaluation, evaluation
from cosmicman.assets.evaluation import test_prompts as prompt_set_asset
from cosmicman.assets.training import daring_unet
from cosmicman.assets.training_checks import model_urls
from cosmicman.cli.summary import gain_line, mean_sd
from cosmicman.core.keys import EVALUATION_REPORT_FILE, LATEST_DATASET_KEY, TRAINING_RUN_FILE
from cosmicman.core.store import Store
from cosmicman.environments.simulated_data import SimulatedEvaluationResource
from cosmicman.resources.launchers import EvaluationLauncher, TrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource

LAUNCHED: list[str] = []
BASE = "/models/base-sd"


def attention(beta: float, seed: int) -> float:
    """The stand-in trainer's attention in the masks: HOLA (beta 1) +0.1 over the baseline, plus seed noise."""
    return 0.2 + 0.1 * beta + [0.0, 0.02, 0.07][seed]


class RecordingTrainer(TrainingLauncher):
    """Publishes a run record at the config's output, as ``python -m cosmicman.model.train`` does."""

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        LAUNCHED.append(f"train {context.partition_key} seed {config['seed']}")
        share = attention(config["beta"], config["seed"])
        record = {
            "config": config,
            "data": {"shards": config["shards"]},
            "code_version": "test",
            "loss_history": [{"step": s, "loss": 1 / s, "noise": 0.9 / s, "hola": 0.1 / s} for s in (1, 2)],
            "metrics": {
                "loss_first": 1.0,
                "loss_last": 0.1 + config["seed"] / 100,
                "noise_loss_last": 0.09,
                "hola_loss_last": 0.01,
                "steps": 2,
                "seconds": 1.0,
                "seconds_per_step": 0.5,
                "attention_alignment": {
                    "mean": share,
                    "chance": 0.13,
                    "groups": {"hair": share, "top": share / 2},
                    "chance_groups": {"hair": 0.1, "top": 0.2},
                },
            },
        }
        Store(config["output_url"]).write_json(TRAINING_RUN_FILE, record)
        return dg.MaterializeResult()


class RecordingEvaluation(EvaluationLauncher):
    """Publishes a report at the config's output, as ``python -m cosmicman.evaluation`` does; acc_all is
    0.3 for the base model and 0.5 + 0.1 beta + seed / 50 for a trained one."""

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        run = Store(config["model_url"])
        trained = run.exists(TRAINING_RUN_FILE)
        cfg = run.read_json(TRAINING_RUN_FILE)["config"] if trained else {}
        LAUNCHED.append(f"score {cfg.get('act_fn', 'base')} beta {cfg.get('beta')} seed {cfg.get('seed')}")
        acc = 0.5 + 0.1 * cfg["beta"] + cfg["seed"] / 50 if trained else 0.3
        metrics = {
            "acc_obj": acc,
            "acc_tex": acc,
            "acc_shape": acc,
            "acc_all": acc,
            "frechet_distance": 10.0 - 10 * acc,
            "kid": 0.01,
            "kid_std": 0.001,
            "clip_score": 20.0,
            "hpsv2": 0.2,
        }
        out = Store(config["output_url"])
        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, format="PNG")
        out.write_bytes("samples/000.png", png.getvalue())
        out.write_json(
            EVALUATION_REPORT_FILE,
            {
                "metrics": metrics,
                "ceiling": {k: 0.9 for k in ("acc_obj", "acc_tex", "acc_shape", "acc_all", "clip_score", "hpsv2")},
                "prompt_set_version": "p",
                "n_prompts": 4,
                "judge": {"name": "judge", "version": "1"},
                "feature_extractor": "features",
                "clip_model": "clip",
                "hpsv2_model": "hps",
                "model_url": config["model_url"],
                "samples": [{"key": "samples/000.png", "caption": "a person"}],
                "output_url": config["output_url"],
            },
        )
        return dg.MaterializeResult()


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value if not isinstance(v, dg.TableMetadataValue) else v for k, v in event.metadata.items()}


def _rows(value: dg.TableMetadataValue) -> list[dict[str, Any]]:
    return [dict(r.data) for r in value.records]


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    """baseline and hola on 3 seeds, hola-gelu on 1, each evaluated, the base model, the ablation table; each
    asset's metadata, the launches, and the data versions of a second daring_unet[hola]."""
    monkeypatch = pytest.MonkeyPatch()
    # the dataset version is the test's: its shards are named, its lineage is not what is tested here
    monkeypatch.setattr(training_assets, "shard_urls", lambda *a, **k: ["/data/shard-000000.tar"])
    monkeypatch.setattr(training_assets, "excluded_samples", lambda *a, **k: [])
    monkeypatch.setattr(training_assets, "_lineage", lambda store, key: dg.MetadataValue.json({"model": key}))
    store = Store(str(tmp_path_factory.mktemp("ablation") / "store"))
    store.write_json(LATEST_DATASET_KEY, {"version": "v0001"})
    training = TrainingResource(overrides={"pretrained": BASE}, seeds_by_variant={"baseline": 3, "hola": 3})
    resources = {
        "object_store": ObjectStoreResource(url=store.url),
        "training": training,
        "training_launcher": RecordingTrainer(),
        "evaluation_config": SimulatedEvaluationResource(n_prompts=4),
        "evaluation_launcher": RecordingEvaluation(),
    }
    LAUNCHED.clear()
    out: dict[str, Any] = {"unet": {}, "evaluation": {}}
    with dg.instance_for_test() as instance:

        def run(asset, partition=None, **extra):
            return dg.materialize([asset], resources={**resources, **extra}, instance=instance, partition_key=partition)

        run(prompt_set_asset)
        for variant in ("baseline", "hola", "hola-gelu"):
            out["unet"][variant] = run(daring_unet, variant)
        out["launched_training"] = list(LAUNCHED)
        again = run(daring_unet, "hola")
        out["unet_again"] = _metadata(again, "daring_unet")
        out["launched_after_again"] = len(LAUNCHED)
        for variant in ("baseline", "hola", "hola-gelu"):
            out["evaluation"][variant] = _metadata(run(evaluation, variant), "evaluation")
        out["base"] = _metadata(run(base_model_evaluation), "base_model_evaluation")
        out["ablation"] = _metadata(run(ablation_table), "ablation_table")
        out["launched"] = list(LAUNCHED)
        out["no_base"] = dg.materialize(
            [base_model_evaluation],
            resources={**resources, "training": TrainingResource()},
            instance=instance,
            raise_on_error=False,
        )
    monkeypatch.undo()
    return out


def test_daring_unet_trains_each_seed_once_and_reports_their_mean_and_spread(ablated):
    assert ablated["launched_training"] == [
        *(f"train baseline seed {s}" for s in (0, 1, 2)),
        *(f"train hola seed {s}" for s in (0, 1, 2)),
        "train hola-gelu seed 0",
    ]
    hola = _metadata(ablated["unet"]["hola"], "daring_unet")
    assert hola["seeds"] == [0, 1, 2]
    shares = [attention(1.0, s) for s in (0, 1, 2)]
    assert hola["attention_in_mask"] == pytest.approx(sum(shares) / 3, abs=1e-4)
    assert hola["attention_in_mask_sd"] == pytest.approx(0.03606, abs=1e-4)
    assert hola["loss_last"] == pytest.approx(0.11, abs=1e-4) and "loss_last_sd" in hola
    models = _rows(hola["models"])
    assert [m["seed"] for m in models] == [0, 1, 2] and len({m["output_url"] for m in models}) == 3
    assert hola["output_url"] == models[0]["output_url"]  # the first seed's model, as before replicates
    groups = _rows(hola["attention_in_mask_by_group"])
    assert groups[0]["group"] == "hair" and groups[0]["share_in_mask"] == pytest.approx(sum(shares) / 3, abs=1e-4)
    assert groups[0]["seeds"] == 3 and groups[1]["chance"] == 0.2
    # the blocking check loads every seed's model, not only the first
    (event,) = ablated["unet"]["hola"].asset_materializations_for_node("daring_unet")
    assert model_urls(event.metadata) == [m["output_url"] for m in models]
    # one seed: no spread, and the data version is the model's own name (as before replicates)
    gelu = ablated["unet"]["hola-gelu"]
    gelu_meta = _metadata(gelu, "daring_unet")
    assert gelu_meta["seeds"] == [0] and "attention_in_mask_sd" not in gelu_meta
    (gelu_event,) = gelu.asset_materializations_for_node("daring_unet")
    assert gelu_event.tags["dagster/data_version"] == _rows(gelu_meta["models"])[0]["output_url"].rsplit("/", 1)[1]


def test_a_second_materialization_reuses_every_seed_and_keeps_its_data_version(ablated):
    again = ablated["unet_again"]
    assert ablated["launched_after_again"] == len(ablated["launched_training"])  # nothing trained again
    assert again["reused"] is True and all(m["reused"] for m in _rows(again["models"]))
    (first,) = ablated["unet"]["hola"].asset_materializations_for_node("daring_unet")
    assert first.tags["dagster/data_version"].startswith("seeds-")


def test_evaluation_scores_every_seed_and_reports_means_with_their_spread(ablated):
    scored = [line for line in ablated["launched"] if line.startswith("score")]
    assert len(scored) == 3 + 3 + 1 + 1  # each seed's model once, and the base model
    hola = ablated["evaluation"]["hola"]
    accs = [0.6 + s / 50 for s in (0, 1, 2)]
    assert hola["acc_all"] == pytest.approx(sum(accs) / 3, abs=1e-4)
    assert hola["acc_all_sd"] == pytest.approx(0.02, abs=1e-4) and hola["seeds"] == [0, 1, 2]
    assert [r["acc_all"] for r in _rows(hola["by_seed"])] == pytest.approx(accs, abs=1e-4)
    generated = {r["metric"]: r for r in _rows(hola["metrics"])}
    assert generated["acc_all"]["generated"] == pytest.approx(0.62, abs=1e-4) and generated["acc_all"]["sd"] > 0
    gelu = ablated["evaluation"]["hola-gelu"]
    assert gelu["acc_all"] == pytest.approx(0.6) and "acc_all_sd" not in gelu and gelu["seeds"] == [0]
    assert hola["dataset_version"] == "v0001"  # what the regression check compares across


def test_the_base_model_is_scored_like_a_variant_and_needs_a_pretrained_model(ablated):
    base = ablated["base"]
    assert base["acc_all"] == pytest.approx(0.3) and base["pretrained"] == BASE
    failed = ablated["no_base"]
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "names no pretrained model" in failure.event_specific_data.error.message


def test_the_ablation_table_shows_means_spreads_the_base_row_and_the_paired_hola_gain(ablated):
    table = ablated["ablation"]
    rows = _rows(table["table"])
    assert [r["variant"] for r in rows] == [BASE_ROW, "baseline", "hola", "hola-gelu"]
    assert rows[0]["acc_all"] == 0.3 and rows[0]["seeds"] is None
    assert rows[2]["seeds"] == 3 and rows[2]["acc_all"] == pytest.approx(0.62) and rows[2]["acc_all_sd"] == 0.02
    assert rows[3]["acc_all_sd"] is None  # one seed: no spread, not a spread of 0
    fidelity = {r["variant"]: r for r in _rows(table["fidelity_and_training"])}
    assert fidelity["hola"]["attn_in_mask_sd"] == pytest.approx(0.03606, abs=1e-4)
    assert fidelity[BASE_ROW]["attn_in_mask"] is None
    assert {r["variant"] for r in _rows(table["spread"])} == {"baseline", "hola", "hola-gelu"}
    # hola minus baseline, seed by seed: the seed noise cancels, the gain is HOLA's +0.1 with no spread
    assert table["hola_attention_gain"] == pytest.approx(0.1, abs=1e-4)
    assert table["hola_attention_gain_sd"] == pytest.approx(0.0, abs=1e-4)
    assert table["hola_attention_gain_seeds"] == 3 and table["attention_in_mask_chance"] == 0.13
    assert table["variants"] == 3
    line = gain_line(table)
    assert line.startswith("HOLA attention gain: 0.100 ± 0.000 over 3 seeds (hola 0.330 vs noise-only 0.230")
    assert line.endswith("chance 0.130)")


def test_the_summary_formats_a_spread_only_where_there_is_one():
    assert mean_sd(0.51234, 0.0123, ".3f") == "0.512 ± 0.012"
    assert mean_sd(0.51234, None, ".3f") == "0.512"
    assert mean_sd(None, None, ".3f") == "-"
    assert gain_line({"hola_attention_gain_note": "not measured: x"}) == "HOLA attention gain: not measured: x"
    assert gain_line({}) == "HOLA attention gain: not measured (no ablation table)"


def test_reports_are_json_as_published(ablated):
    # the evaluation's metadata names its report: a finished evaluation's folder holds it
    report = ablated["evaluation"]["hola"]["report"]
    assert json.loads(Path(report).read_text())["metrics"]["acc_all"] == pytest.approx(0.6)
