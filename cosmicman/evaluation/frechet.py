"""Distances between two sets of image features: the FID formula and KID, over any feature extractor.

* :func:`frechet_distance` is the FID formula ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.
  The matrix square root is taken in its symmetric form ``Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` through
  ``scipy.linalg.eigh``: the two traces are equal (``S_a S_b`` is similar to ``S_a^{1/2} S_b S_a^{1/2}``),
  and the symmetric form never yields the complex parts or NaNs that ``scipy.linalg.sqrtm(S_a @ S_b)``
  gives on the near-singular covariances of small sets.
* :func:`kernel_distance` is KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 under the cubic
  polynomial kernel ``k(x, y) = (x . y / d + 1)^3``, averaged over random subsets as clean-fid and
  torchmetrics do. Unlike FID it is unbiased, so two samples of one distribution score about 0 even for
  a few dozen images; that is why small evaluation sets report it beside FID.

A distance is only as meaningful as its features: numbers over the local stand-in extractor
(:mod:`cosmicman.evaluation.features`) are comparable only with other numbers over the same extractor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

__all__ = [
    "KernelDistance",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_distance",
    "polynomial_mmd2",
]

KID_SUBSETS = 100  # clean-fid's num_subsets and torchmetrics' subsets
KID_MAX_SUBSET_SIZE = 1000  # clean-fid's max_subset_size and torchmetrics' subset_size


def _features(feats: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be [N, D], got shape {x.shape}")
    return x


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of an ``[N, D]`` feature matrix."""
    x = _features(feats, "features")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors to estimate a covariance")
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    m = (m + m.T) / 2.0
    w, v = linalg.eigh(m)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a = np.atleast_1d(np.asarray(mu_a, dtype=np.float64))
    mu_b = np.atleast_1d(np.asarray(mu_b, dtype=np.float64))
    sigma_a = np.atleast_2d(np.asarray(sigma_a, dtype=np.float64))
    sigma_b = np.atleast_2d(np.asarray(sigma_b, dtype=np.float64))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (mu_a.size,) * 2:
        raise ValueError(f"shape mismatch: mu {mu_a.shape}/{mu_b.shape}, sigma {sigma_a.shape}/{sigma_b.shape}")
    diff = mu_a - mu_b
    root_a = _sqrt_psd(sigma_a)
    inner = root_a @ sigma_b @ root_a
    inner = (inner + inner.T) / 2.0
    eig = np.clip(linalg.eigvalsh(inner), 0.0, None)
    tr_covmean = float(np.sqrt(eig).sum())
    d = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)
    # Round-off can make the distance of identical sets a tiny negative number.
    return max(d, 0.0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance (the FID formula) between two ``[N, D]`` feature sets."""
    mu_a, s_a = feature_stats(feats_a)
    mu_b, s_b = feature_stats(feats_b)
    return frechet_distance_from_stats(mu_a, s_a, mu_b, s_b)


def polynomial_mmd2(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Unbiased MMD^2 between two equal-size ``[m, D]`` sets under ``k(x, y) = (x . y / D + 1)^3``.

    The within-set kernel sums leave out the diagonal (``k(x_i, x_i)``) and divide by ``m (m - 1)``; the
    cross term divides by ``m^2``: the estimator of clean-fid's ``kernel_distance`` and torchmetrics'
    ``poly_mmd``. It can be negative when the two sets come from one distribution.
    """
    x = _features(feats_a, "feats_a")
    y = _features(feats_b, "feats_b")
    if x.shape != y.shape:
        raise ValueError(f"MMD subsets must have one shape, got {x.shape} and {y.shape}")
    m, dim = x.shape
    if m < 2:
        raise ValueError("need at least 2 feature vectors per set for the unbiased MMD")
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / m**2)


@dataclass(frozen=True)
class KernelDistance:
    """KID over ``subsets`` random subsets of ``subset_size`` vectors per set: their mean and (population) std."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = KID_SUBSETS,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    seed: int = 0,
) -> KernelDistance:
    """KID between two ``[N, D]`` feature sets (sizes may differ).

    As clean-fid: the subset size is ``min(N_a, N_b, max_subset_size)``; each subset draws that many
    vectors from each set without replacement and scores :func:`polynomial_mmd2`. The mean over subsets
    is KID; the std is the population std over subsets, as torchmetrics reports it. Seeded (numpy
    ``default_rng(seed)``), so a result is reproducible; with ``subsets=1`` and the subset size equal to
    both set sizes the value is the exact MMD^2 of the two full sets (the estimator ignores order).
    """
    x = _features(feats_a, "feats_a")
    y = _features(feats_b, "feats_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(x.shape[0], y.shape[0], int(max_subset_size))
    if size < 2:
        raise ValueError(f"KID needs at least 2 vectors per set, got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.default_rng(seed)
    scores = np.array(
        [
            polynomial_mmd2(
                x[rng.choice(x.shape[0], size, replace=False)], y[rng.choice(y.shape[0], size, replace=False)]
            )
            for _ in range(subsets)
        ]
    )
    return KernelDistance(mean=float(scores.mean()), std=float(scores.std()), subsets=int(subsets), subset_size=size)
