"""One evaluation run as the ``evaluation`` asset launches it (``python -m cosmicman.evaluation`` in a child
process): a tiny SD-1.5 model and a tiny SDXL model trained by the real trainer, on a small prompt set against
the local I_e, scored by the local judge and stand-in scorers; the report, its files and its names."""

import json
import subprocess
import sys

import dagster as dg
import pytest

from cosmicman.assets.annotation import eval_set
from cosmicman.core.keys import EVALUATION_REPORT_FILE
from cosmicman.core.store import Store
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource
from cosmicman.environments.simulated_data import SimulatedEvaluationResource
from cosmicman.evaluation.config import EvaluationConfig
from cosmicman.evaluation.prompt_set import write_prompt_set
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.prompts import synthetic_test_attributes
from tests.model.test_train import write_shards
from tests.support.tiny_model import train_tiny_model

N_PROMPTS = 6


# SDXL is a slow case: SD keeps every paper measure in the fast suite, SDXL adds only its second text encoder
@pytest.fixture(scope="module", params=["sd", pytest.param("sdxl", marks=pytest.mark.slow)])
def evaluated(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"evaluation-{request.param}")
    store = Store(str(root / "store"))
    resources = {
        "object_store": ObjectStoreResource(url=store.url),
        "annotation": SimulatedAnnotatorResource(eval_size=12),
    }
    assert dg.materialize([eval_set], resources=resources).success
    prompts_url = str(root / "prompts.jsonl")
    write_prompt_set(synthetic_test_attributes(30_000, N_PROMPTS), prompts_url)
    config = SimulatedEvaluationResource(inference_steps=2).run_config(
        model_url=str(train_tiny_model(root / "model", request.param, write_shards(root / "shards", 1, 4))),
        prompts_url=prompts_url,
        store_url=store.url,
        output_url=str(root / "out"),
    )
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    done = subprocess.run(
        [sys.executable, "-m", "cosmicman.evaluation", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), Store(str(root / "out")), config


def test_the_report_has_every_paper_measure_and_its_ceiling(evaluated):
    report, _, _ = evaluated
    metrics = report["metrics"]
    for name in ("acc_obj", "acc_tex", "acc_shape", "acc_all"):
        assert 0.0 <= metrics[name] <= 1.0 and 0.0 <= report["ceiling"][name] <= 1.0
    assert metrics["frechet_distance"] > 0 and metrics["kid_std"] >= 0
    assert 0.0 <= metrics["clip_score"] <= 100.0
    assert report["n_prompts"] == N_PROMPTS and report["n_real"] == 12


def test_the_report_names_the_judge_the_prompt_set_and_the_stand_ins(evaluated):
    report, _, _ = evaluated
    assert report["prompt_set_version"].startswith("ps-") and report["prompt_set_version"].endswith(f"-n{N_PROMPTS}")
    assert report["judge"]["name"] and report["judge"]["version"]
    assert "annotator" not in report["judge"]["name"]
    # nothing here is the real model: every scorer's name says so
    assert "not-inception" in report["feature_extractor"]
    assert "untrained" in report["clip_model"] and "untrained" in report["hpsv2_model"]


def test_the_report_is_written_last_with_its_samples_and_questions(evaluated):
    report, out, _ = evaluated
    assert out.read_json(EVALUATION_REPORT_FILE) == report
    assert [s["key"] for s in report["samples"]] == [f"samples/{i:03d}.png" for i in range(N_PROMPTS)]
    assert all(out.exists(s["key"]) for s in report["samples"])
    # the first overlay_prompts (4 by default) prompts' attention overlays, on SD-1.5 and SDXL alike
    assert [o["key"] for o in report["overlays"]] == [f"overlays/{i:03d}.png" for i in range(4)]
    assert all(out.exists(o["key"]) and o["groups"] for o in report["overlays"])
    assert report["overlay_attention"]["layers"]
    questions = out.read_table("questions.parquet")
    assert set(questions["prompt"].to_list()) == set(range(N_PROMPTS))


def test_a_config_with_an_unknown_key_or_feature_kind_is_one_clear_error(evaluated):
    _, _, config = evaluated
    with pytest.raises(ValueError, match="unknown evaluation config keys"):
        EvaluationConfig.from_dict({**config.to_dict(), "nprompts": 3})
    with pytest.raises(ValueError, match="features.kind 'vgg' is not one of inception, random_conv"):
        EvaluationConfig.from_dict({**config.to_dict(), "features": {"kind": "vgg"}})
