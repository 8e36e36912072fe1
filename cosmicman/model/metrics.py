"""Evaluation metrics: Fréchet distance, offline / production feature extractors, semantic accuracy.

Dagster-free (numpy / scipy / torch only).

* :func:`frechet_distance` is the FID formula ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``
  over any feature extractor. The matrix square root is taken in its symmetric form
  ``Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` through ``scipy.linalg.eigh``: the two traces are equal
  (``S_a S_b`` is similar to ``S_a^{1/2} S_b S_a^{1/2}``), and the symmetric form never yields the
  complex parts or NaNs that ``scipy.linalg.sqrtm(S_a @ S_b)`` gives on near-singular covariances.
* :class:`RandomConvFeatures` is a fixed, randomly initialised conv net (seeded). It is **not**
  Inception-v3: distances computed with it are comparable only with other distances computed with the
  same seed and dim inside this project, never with published FID numbers.
* :class:`InceptionFeatures` is the production path: it loads the TorchScript Inception-v3 of the
  StyleGAN / clean-fid lineage (``inception-2015-12-05.pt``, 2048-d pool features) from a *local* path
  and fails clearly when the file is absent (nothing is downloaded).
* :func:`semantic_accuracy` is the paper's DSG-style semantic accuracy: one question per attribute of
  each test prompt, answered by a VQA backend on the generated image, averaged into
  Acc_obj / Acc_tex / Acc_shape (by the protocol's category tag) and Acc_all (every question, global
  ones included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import linalg

__all__ = [
    "frechet_distance",
    "frechet_distance_from_stats",
    "feature_stats",
    "RandomConvFeatures",
    "InceptionFeatures",
    "images_to_array",
    "semantic_accuracy",
    "semantic_accuracy_details",
]


# --------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------
def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of an ``[N, D]`` feature matrix."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
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


# --------------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------------
def images_to_array(images: Iterable, size: tuple[int, int] | None = None) -> np.ndarray:
    """PIL images / HxWx3 uint8 arrays -> uint8 ``[N, 3, H, W]``; resized to ``size`` (W, H) if given."""
    from PIL import Image

    out = []
    for img in images:
        if isinstance(img, (bytes, bytearray)):
            import io

            img = Image.open(io.BytesIO(img))
        if isinstance(img, Image.Image):
            img = img.convert("RGB")
            if size is not None and img.size != tuple(size):
                img = img.resize((size[0], size[1]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        else:
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
                arr = np.asarray(Image.fromarray(arr).resize((size[0], size[1]), Image.Resampling.BILINEAR))
        out.append(arr.transpose(2, 0, 1))
    if not out:
        raise ValueError("no images given")
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size=(W, H)")
    return np.stack(out)


class RandomConvFeatures:
    """A fixed random-init conv net as an offline feature extractor.

    NOT Inception: the weights are drawn from ``seed`` (no download, no training), so Fréchet distances
    over these features are comparable only within this project, between runs using the same
    ``seed``, ``dim`` and ``size``. Each image is resized to ``size`` (W, H), scaled to [-1, 1], passed
    through four stride-2 conv + leaky-ReLU layers; the output concatenates global mean and std pooling
    of the last map, projected to ``dim`` by a fixed random matrix.
    """

    def __init__(self, seed: int = 0, dim: int = 64, size: tuple[int, int] = (64, 128), batch_size: int = 64):
        import torch
        from torch import nn

        self.seed = int(seed)
        self.dim = int(dim)
        self.size = (int(size[0]), int(size[1]))
        self.batch_size = int(batch_size)
        gen = torch.Generator().manual_seed(self.seed)
        chans = [3, 16, 32, 64, 96]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            assert conv.bias is not None  # Conv2d's default bias=True
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.proj = torch.randn(2 * chans[-1], self.dim, generator=gen) / (2 * chans[-1]) ** 0.5

    @property
    def name(self) -> str:
        return f"random-conv-s{self.seed}-d{self.dim}-{self.size[0]}x{self.size[1]}"

    def __call__(self, images: Sequence) -> np.ndarray:
        import torch

        arr = images_to_array(images, size=self.size)
        feats = []
        with torch.no_grad():
            for i in range(0, len(arr), self.batch_size):
                x = torch.from_numpy(arr[i : i + self.batch_size]).float() / 127.5 - 1.0
                h = self.net(x)
                pooled = torch.cat([h.mean(dim=(2, 3)), h.flatten(2).std(dim=2)], dim=1)
                feats.append((pooled @ self.proj).numpy())
        return np.concatenate(feats).astype(np.float64)


INCEPTION_ENV_VAR = "COSMICMAN_INCEPTION_PATH"


class InceptionFeatures:
    """Production FID features: TorchScript Inception-v3 (2048-d pool3) loaded from a local file.

    Expects the StyleGAN / clean-fid TorchScript file ``inception-2015-12-05.pt`` (the TF-FID port,
    called as ``model(uint8 NCHW, return_features=True)``; it resizes to 299 internally). The path is
    the argument or the ``COSMICMAN_INCEPTION_PATH`` environment variable. Nothing is downloaded: a
    missing file raises FileNotFoundError saying where to put it.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, batch_size: int = 32, device: str = "cpu"):
        path = weights_path or os.environ.get(INCEPTION_ENV_VAR)
        if not path:
            raise FileNotFoundError(
                "InceptionFeatures needs local weights: pass weights_path or set "
                f"{INCEPTION_ENV_VAR} to a TorchScript 'inception-2015-12-05.pt' "
                "(the StyleGAN/clean-fid FID Inception). For offline tests use RandomConvFeatures."
            )
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {str(path)!r}: place the TorchScript "
                "'inception-2015-12-05.pt' there (nothing is downloaded), or use RandomConvFeatures offline."
            )
        import torch

        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise RuntimeError(f"{path} is not a loadable TorchScript Inception model: {exc}") from exc
        self.path = path
        self.device = device
        self.batch_size = int(batch_size)
        self.dim = 2048

    @property
    def name(self) -> str:
        return f"inception-v3-torchscript:{self.path.name}"

    def __call__(self, images: Sequence) -> np.ndarray:
        import torch

        feats = []
        batch: list = []

        def flush() -> None:
            arr = images_to_array(batch)  # the model resizes to 299 itself; one size per batch
            x = torch.from_numpy(arr).to(self.device)
            with torch.no_grad():
                feats.append(self.model(x, return_features=True).float().cpu().numpy())

        for img in images:
            batch.append(img)
            if len(batch) == self.batch_size:
                flush()
                batch = []
        if batch:
            flush()
        return np.concatenate(feats).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Semantic accuracy
# --------------------------------------------------------------------------------------------------
_TAG_KEYS = {"obj": "acc_obj", "tex": "acc_tex", "shape": "acc_shape"}


def semantic_accuracy_details(
    answers_pred: Sequence[Mapping[str, str]],
    answers_true: Sequence[Mapping[str, str]],
    protocol=None,
    dependency: bool = True,
) -> dict[str, dict[str, int]]:
    """Correct / total question counts per tag (obj, tex, shape, global) and ``all``.

    One question per attribute in each test prompt (``answers_true[i]``); the VQA answers for the image
    generated from that prompt are ``answers_pred[i]`` (a missing answer is wrong). With ``dependency``
    (DSG's rule), a question whose category ``requires`` parent answers counts as correct only if the
    VQA answer to each parent matches the requirement too (a red hat on an image with no hat is wrong).
    """
    if protocol is None:
        from cosmicman.core.protocol import load_protocol

        protocol = load_protocol()
    if len(answers_pred) != len(answers_true):
        raise ValueError(f"{len(answers_pred)} predictions for {len(answers_true)} prompts")
    by_name = protocol.by_name
    counts = {k: {"correct": 0, "total": 0} for k in ("obj", "tex", "shape", "global", "all")}
    for pred, truth in zip(answers_pred, answers_true):
        for cat_name, true_answer in truth.items():
            cat = by_name.get(cat_name)
            if cat is None:
                raise ValueError(f"unknown category {cat_name!r} in a test prompt")
            ok = pred.get(cat_name) == true_answer
            if ok and dependency:
                ok = all(pred.get(p) == v for p, v in cat.requires.items())
            for key in (cat.tag, "all"):
                counts[key]["total"] += 1
                counts[key]["correct"] += int(ok)
    return counts


def semantic_accuracy(
    answers_pred: Sequence[Mapping[str, str]],
    answers_true: Sequence[Mapping[str, str]],
    protocol=None,
    dependency: bool = True,
) -> dict[str, float]:
    """``{"acc_obj", "acc_tex", "acc_shape", "acc_all"}`` in [0, 1] (see :func:`semantic_accuracy_details`).

    Acc_obj / Acc_tex / Acc_shape average the questions whose category is tagged obj / tex / shape;
    Acc_all averages every question, global ones included. A tag with no question gives NaN.
    """
    counts = semantic_accuracy_details(answers_pred, answers_true, protocol, dependency)
    out = {}
    for tag, key in list(_TAG_KEYS.items()) + [("all", "acc_all")]:
        c = counts[tag]
        out[key] = c["correct"] / c["total"] if c["total"] else float("nan")
    return out
