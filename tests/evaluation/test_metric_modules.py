"""The evaluate modules load from the package with the network blocked and return the plain functions' numbers."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from cosmicman.evaluation.clip_score import ClipScorer, clip_score
from cosmicman.evaluation.frechet import frechet_distance, kernel_distance
from cosmicman.evaluation.hpsv2 import HpsV2Scorer, hpsv2_score
from cosmicman.evaluation.metric_modules import METRIC_NAMES, load_metric, metric_module_path


@pytest.fixture(scope="module")
def modules():
    """Every module, loaded while any socket connection raises (and without HF_*_OFFLINE)."""
    patch = pytest.MonkeyPatch()
    for var in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE"):
        patch.delenv(var, raising=False)

    def refuse(self, address):
        raise AssertionError(f"network access to {address} while loading a local evaluate module")

    patch.setattr(socket.socket, "connect", refuse)
    try:
        yield {name: load_metric(name) for name in METRIC_NAMES}
    finally:
        patch.undo()


def _feature_sets():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 8)), rng.normal(size=(24, 8)) + 0.3


def test_feature_modules_return_the_plain_numbers(modules):
    generated, real = _feature_sets()
    features = [*generated.tolist(), *real.tolist()]
    flags = [False] * len(generated) + [True] * len(real)

    fid = modules["fid"].compute(features=features, real=flags, feature_extractor="stand-in-test")
    assert fid["fid"] == pytest.approx(frechet_distance(generated, real), rel=1e-12)
    assert (fid["n_generated"], fid["n_real"], fid["feature_extractor"]) == (30, 24, "stand-in-test")

    kid = modules["kid"].compute(features=features, real=flags, feature_extractor="stand-in-test", subsets=20, seed=3)
    plain = kernel_distance(generated, real, subsets=20, seed=3)
    assert (kid["kid_mean"], kid["kid_std"]) == pytest.approx((plain.mean, plain.std), rel=1e-12)
    assert (kid["kid_subsets"], kid["kid_subset_size"]) == (20, 24)


def test_model_modules_return_the_plain_numbers(modules):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 32, 3), dtype=np.uint8) for _ in range(3)]
    captions = ["a woman in a red hat", "a man", " ".join(["red"] * 80)]

    clip = ClipScorer.tiny(2)
    out = modules["clip_score"].compute(images=images, captions=captions, scorer=clip)
    plain = clip_score(images, captions, clip)
    assert out["clip_scores"] == pytest.approx(list(plain.scores), abs=1e-6)
    assert out["clip_score"] == pytest.approx(plain.mean, abs=1e-6)
    assert (out["model"], out["long_captions"]) == ("tiny-random-clip-untrained:seed=2", 1)

    hps = HpsV2Scorer.tiny(0)
    out = modules["hpsv2"].compute(images=images, prompts=captions, scorer=hps)
    plain_hps = hpsv2_score(images, captions, hps)
    assert out["hpsv2_scores"] == pytest.approx(list(plain_hps.scores), abs=1e-6)
    assert out["model"].startswith("tiny-random-hpsv2") and out["truncated_prompts"] == 1


def test_unknown_metric_names_what_exists():
    with pytest.raises(ValueError, match="fid, kid, clip_score, hpsv2"):
        metric_module_path("inception_score")
    assert metric_module_path("fid").name == "fid"
