"""Metrics: Fréchet distance against closed forms, offline features, semantic accuracy by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import linalg

from cosmicman.core.protocol import load_protocol
from cosmicman.model.metrics import (
    InceptionFeatures,
    RandomConvFeatures,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    semantic_accuracy,
    semantic_accuracy_details,
)


def _reference_fid(mu1, s1, mu2, s2):
    """The pytorch-fid formula, with scipy.linalg.sqrtm of the product."""
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # a permutation of the same set too
    assert frechet_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_form_for_gaussians():
    # Diagonal Gaussians: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # 5 + 1+1+0.25
    assert closed == pytest.approx(7.25)
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)

    # Full covariances: same value as the standard (pytorch-fid) formula.
    rng = np.random.default_rng(1)
    d = 8
    la, lb = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = la @ la.T + 0.1 * np.eye(d), lb @ lb.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    assert frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(_reference_fid(m1, s1, m2, s2), rel=1e-8)

    # Samples from two Gaussians converge to the closed form.
    xa = rng.multivariate_normal(mu1, np.diag(a), size=40000)
    xb = rng.multivariate_normal(mu2, np.diag(b), size=40000)
    assert frechet_distance(xa, xb) == pytest.approx(closed, rel=0.03)


def test_frechet_stable_on_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, where sqrtm(S1 S2) goes complex / NaN.
    rng = np.random.default_rng(2)
    xa, xb = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    fd = frechet_distance(xa, xb)
    assert math.isfinite(fd) and fd > 0
    mu, s = feature_stats(xa)
    assert mu.shape == (64,) and s.shape == (64, 64)


def test_random_conv_features_deterministic_and_separating():
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(12)]
    flat = [Image.new("RGB", (64, 128), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(12)]
    f1 = RandomConvFeatures(seed=0, dim=32)
    a = f1(noise)
    assert a.shape == (12, 32)
    np.testing.assert_array_equal(a, RandomConvFeatures(seed=0, dim=32)(noise))
    assert not np.allclose(a, RandomConvFeatures(seed=1, dim=32)(noise))
    # within-set distance is much smaller than across very different image sets
    noise2 = [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(12)]
    within = frechet_distance(a, f1(noise2))
    across = frechet_distance(a, f1(flat))
    assert across > 5 * within


def test_inception_fails_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("COSMICMAN_INCEPTION_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="COSMICMAN_INCEPTION_PATH"):
        InceptionFeatures()
    with pytest.raises(FileNotFoundError, match="not found"):
        InceptionFeatures(tmp_path / "inception-2015-12-05.pt")


def test_semantic_accuracy_hand_made_case():
    proto = load_protocol()
    truth = [
        # prompt 1: 6 questions: global x2 (gender, age), obj x2, tex x1, shape x1
        {
            "gender": "woman",
            "age": "adult",
            "hat_exists": "yes",
            "hat_color": "red",
            "hat_type": "cap",
            "bag_exists": "no",
        },
        # prompt 2: 3 questions: obj, tex, shape
        {"top_exists": "yes", "top_color": "blue", "sleeve_length": "long"},
    ]
    pred = [
        # gender right, age wrong, hat_exists right, hat_color right, hat_type wrong, bag_exists right
        {
            "gender": "woman",
            "age": "elderly",
            "hat_exists": "yes",
            "hat_color": "red",
            "hat_type": "beanie",
            "bag_exists": "no",
        },
        # the VQA says there is no top: top_exists wrong; colour/sleeve answered right but their parent
        # failed, so DSG's dependency rule marks them wrong too
        {"top_exists": "no", "top_color": "blue", "sleeve_length": "long"},
    ]
    acc = semantic_accuracy(pred, truth, proto)
    assert set(acc) == {"acc_obj", "acc_tex", "acc_shape", "acc_all"}
    assert acc["acc_obj"] == pytest.approx(2 / 3)  # hat yes, bag no | top wrong
    assert acc["acc_tex"] == pytest.approx(1 / 2)  # hat red | top blue (parent failed)
    assert acc["acc_shape"] == pytest.approx(0 / 2)  # cap wrong | sleeve (parent failed)
    assert acc["acc_all"] == pytest.approx(4 / 9)  # gender, hat_exists, hat_color, bag_exists
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    # without the dependency rule the two children of prompt 2 count as right
    loose = semantic_accuracy(pred, truth, proto, dependency=False)
    assert loose["acc_tex"] == 1.0 and loose["acc_shape"] == pytest.approx(1 / 2)
    assert loose["acc_all"] == pytest.approx(6 / 9)
    counts = semantic_accuracy_details(pred, truth, proto)
    assert counts["global"] == {"correct": 1, "total": 2}
    # perfect answers -> 1.0 everywhere; a missing answer is wrong
    assert set(semantic_accuracy(truth, truth, proto).values()) == {1.0}
    assert semantic_accuracy([{}, {}], truth, proto)["acc_all"] == 0.0
    with pytest.raises(ValueError):
        semantic_accuracy(pred[:1], truth, proto)
