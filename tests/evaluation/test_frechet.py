"""FID against closed forms and torchmetrics; KID by hand, against torchmetrics, near 0 for one distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from torch import nn

from cosmicman.evaluation.features import RandomConvFeatures, images_to_array
from cosmicman.evaluation.frechet import (
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_distance,
    polynomial_mmd2,
)


def _reference_fid(mu1, s1, mu2, s2):
    """The pytorch-fid formula, with scipy.linalg.sqrtm of the product."""
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_zero_for_identical_sets():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_form_for_gaussians():
    # Diagonal Gaussians: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # 5 + 1+1+0.25
    assert closed == pytest.approx(7.25)
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)

    rng = np.random.default_rng(1)
    d = 8
    la, lb = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = la @ la.T + 0.1 * np.eye(d), lb @ lb.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    assert frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(_reference_fid(m1, s1, m2, s2), rel=1e-8)

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
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(xa[:1])


class _StandInModule(nn.Module):
    """torchmetrics takes the feature extractor as an nn.Module over uint8 NCHW batches."""

    def __init__(self, extractor: RandomConvFeatures):
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.embed(images)


def _image_sets(n: int = 40) -> tuple[list[Image.Image], list[Image.Image]]:
    rng = np.random.default_rng(5)
    dark = [Image.fromarray(rng.integers(0, 160, (128, 64, 3), dtype=np.uint8)) for _ in range(n)]
    bright = [Image.fromarray(rng.integers(60, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(n + 7)]
    return dark, bright


def test_fid_agrees_with_torchmetrics_given_the_same_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    extractor = RandomConvFeatures(seed=0, dim=32)
    generated, real = _image_sets()
    ours = frechet_distance(extractor(generated), extractor(real))

    reference = FrechetInceptionDistance(feature=_StandInModule(extractor))
    reference.update(torch.from_numpy(images_to_array(real, size=extractor.size)), real=True)
    reference.update(torch.from_numpy(images_to_array(generated, size=extractor.size)), real=False)
    theirs = float(reference.compute())
    assert ours > 0.1  # two different image sets: a real distance (0.51), not round-off
    assert ours == pytest.approx(theirs, rel=1e-3)

    # KID: one subset of every vector is the exact MMD^2 of the two sets, whatever order torchmetrics draws.
    n = len(generated)
    kid = KernelInceptionDistance(feature=_StandInModule(extractor), subsets=1, subset_size=n)
    kid.update(torch.from_numpy(images_to_array(real[:n], size=extractor.size)), real=True)
    kid.update(torch.from_numpy(images_to_array(generated, size=extractor.size)), real=False)
    kid_mean, _ = kid.compute()
    ours_kid = kernel_distance(extractor(generated), extractor(real[:n]), subsets=1)
    assert ours_kid.subset_size == n
    assert ours_kid.mean > 0
    assert ours_kid.mean == pytest.approx(float(kid_mean), rel=1e-4)  # theirs in float32


def test_polynomial_mmd2_by_hand():
    # d = 1, k(a, b) = (a b + 1)^3. X = {0, 1}, Y = {1, 2}:
    # within X off-diagonal: 2 k(0,1) = 2 -> /2 = 1; within Y: 2 k(1,2) = 54 -> /2 = 27;
    # across: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37 -> 2 * 37 / 4 = 18.5.
    x, y = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    assert polynomial_mmd2(x, y) == pytest.approx(1 + 27 - 18.5)
    # the biased estimate (diagonals kept, / m^2) would give (1+1+1+8 + 8+27+27+64)/4 - 18.5 = 15.75
    assert polynomial_mmd2(x, y) != pytest.approx(15.75)
    assert polynomial_mmd2(x, x) == pytest.approx(1 + 1 - 2 * (1 + 1 + 1 + 8) / 4)  # unbiased: -3.5, not 0


def test_kid_near_zero_for_one_distribution_and_clearly_positive_for_a_shift():
    rng = np.random.default_rng(7)
    d = 32
    a, b = rng.normal(size=(200, d)), rng.normal(size=(150, d))
    same = kernel_distance(a, b, subsets=50, seed=1)
    assert same.subset_size == 150 and same.subsets == 50
    # unbiased: |KID| within a few subset-stds of 0, and tiny in absolute terms
    assert abs(same.mean) < 0.01
    # measured on these draws (50 subsets of 150): shift 0 -> 0.005, 0.02 -> 0.008, 0.1 -> 0.045, 0.5 -> 1.01;
    # the subset std is about 0.005 throughout. A biased estimator (diagonals kept) would put the
    # same-distribution value near 2 (E k(x, x) - E k(x, x')) / m ~ 0.09 and fail the first bound.
    shifted = kernel_distance(a, b + 0.5, subsets=50, seed=1)
    assert shifted.mean > 0.5
    assert shifted.mean > 20 * abs(same.mean)
    # the edge: a 0.02 shift is not separated from sampling noise, a 0.1 shift is (several stds above)
    assert kernel_distance(a, b + 0.02, subsets=50, seed=1).mean < 0.02
    moderate = kernel_distance(a, b + 0.1, subsets=50, seed=1)
    assert moderate.mean > 0.03 and moderate.mean > same.mean + 5 * same.std
    # seeded: same seed same numbers; a different seed draws other subsets
    assert kernel_distance(a, b, subsets=50, seed=1) == same
    assert kernel_distance(a, b, subsets=50, seed=2).mean != same.mean
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(a[:1], b)
