"""The fake-person classifier: an image embedding and a trainable logistic head giving P(fake person).

The head is trained from labelled images, typically a folder in the Human-Art layout
(:class:`~cosmicman.filtering.humanart.HumanArtFolder`); label 1 = fake person.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cosmicman.core.imageio import ImageDecodeError, decode_image
from cosmicman.filtering.backends import BackendUnavailable, Embedder
from cosmicman.filtering.embedders import OfflineImageFeatures
from cosmicman.filtering.humanart import HumanArtFolder


@dataclass
class LogisticHead:
    """A linear head on standardised embeddings: P(fake) = sigmoid(w . (x - mean) / std + b)."""

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    embedder: str = ""

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = ((np.atleast_2d(x) - self.mean) / self.std) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            weight=self.weight,
            bias=np.array([self.bias]),
            mean=self.mean,
            std=self.std,
            embedder=np.array(self.embedder),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LogisticHead:
        d = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(d["weight"], float(d["bias"][0]), d["mean"], d["std"], str(d["embedder"]))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 300) -> LogisticHead:
    """L2-regularised logistic regression by Newton steps (small dims) on standardised features."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = np.hstack([(X - mean) / std, np.ones((len(X), 1))])
    w = np.zeros(Z.shape[1])
    reg = l2 * np.eye(Z.shape[1])
    reg[-1, -1] = 0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(Z @ w, -50, 50)))
        g = Z.T @ (p - y) / len(y) + reg @ w
        Hm = (Z * (p * (1 - p))[:, None]).T @ Z / len(y) + reg
        step = np.linalg.solve(Hm, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticHead(w[:-1].astype(np.float32), float(w[-1]), mean.astype(np.float32), std.astype(np.float32))


def held_out_split(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, stratified by group so every group of two or more images is measured."""
    rng = np.random.default_rng(seed)
    names = np.asarray(groups)
    train: list[int] = []
    val: list[int] = []
    for g in sorted(set(names.tolist())):
        idx = rng.permutation(np.flatnonzero(names == g))
        n_val = min(len(idx) - 1, max(1, int(round(len(idx) * val_fraction)))) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.asarray(train, int), np.asarray(val, int)


def fit_fake_person_head(
    X: np.ndarray, labels: Sequence[int], groups: Sequence[str] | None = None, val_fraction: float = 0.25, seed: int = 0
) -> tuple[LogisticHead, dict[str, float]]:
    """Fit the head (label 1 = fake) on embeddings ``X``; accuracy on a held-out split, then refit on all.

    ``groups`` are '/'-separated names (Human-Art: ``real_human/dance``); the split is stratified by
    group and held-out accuracy is reported for every prefix: ``val_accuracy/real_human`` (the scenario
    group) and ``val_accuracy/real_human/dance`` (the scenario), with ``n_val/...`` beside each.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(labels, int)
    if len(set(y.tolist())) < 2:
        raise ValueError("the fake-person head needs both real (0) and fake (1) images")
    names = list(groups) if groups is not None else [""] * len(y)
    tr, val = held_out_split(names, val_fraction, seed)
    head = fit_logistic(X[tr], y[tr])
    pv = head.prob(X[val])
    correct = (pv > 0.5).astype(int) == y[val]
    metrics: dict[str, float] = {
        "val_accuracy": float(correct.mean()),
        "n_train": int(len(tr)),
        "n_val": int(len(val)),
        "train_accuracy": float(((head.prob(X[tr]) > 0.5).astype(int) == y[tr]).mean()),
        "val_min_margin": float(np.min(np.where(y[val] == 1, pv - 0.5, 0.5 - pv))),
    }
    if groups is not None:
        per: dict[str, list[bool]] = {}
        for i, ok in zip(val, correct):
            parts = names[i].split("/")
            for k in range(1, len(parts) + 1):
                per.setdefault("/".join(parts[:k]), []).append(bool(ok))
        for name in sorted(per):
            metrics[f"val_accuracy/{name}"] = float(np.mean(per[name]))
            metrics[f"n_val/{name}"] = len(per[name])
    return fit_logistic(X, y), metrics


def train_fake_person_head(
    images: Sequence[Image.Image],
    labels: Sequence[int],
    embedder: Embedder | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> tuple[LogisticHead, dict[str, float]]:
    """Embed ``images`` and fit the head (label 1 = fake); see :func:`fit_fake_person_head` for metrics."""
    embedder = embedder or OfflineImageFeatures()
    embedder.setup()
    head, metrics = fit_fake_person_head(
        np.stack([embedder.embed(im) for im in images]), labels, groups, val_fraction, seed
    )
    head.embedder = embedder.name
    return head, metrics


def train_fake_person_head_from_folder(
    folder: HumanArtFolder, embedder: Embedder | None = None, val_fraction: float = 0.25, seed: int = 0
) -> tuple[LogisticHead, dict[str, float]]:
    """Train the head on a Human-Art-layout folder; held-out accuracy per scenario group and scenario.

    Images are embedded one at a time (memory holds embeddings, not pixels); undecodable files are
    counted in ``n_unreadable`` and skipped.
    """
    embedder = embedder or OfflineImageFeatures()
    embedder.setup()
    X, labels, strata, unreadable = [], [], [], 0
    for entry in folder.entries():
        try:
            img = decode_image(folder.read_bytes(entry))
        except ImageDecodeError:
            unreadable += 1
            continue
        X.append(embedder.embed(img))
        labels.append(entry.label)
        strata.append(entry.stratum)
    if len(set(labels)) < 2:
        raise ValueError(f"{folder.url!r} needs both real_human and 2D/3D_virtual_human images")
    head, metrics = fit_fake_person_head(np.stack(X), labels, strata, val_fraction, seed)
    head.embedder = embedder.name
    metrics.update(n_images=len(labels), n_fake=int(sum(labels)), n_unreadable=unreadable)
    return head, metrics


class FakePersonClassifier:
    """Embedding + trainable head -> P(fake person)."""

    name = "fake_person"

    def __init__(self, head: LogisticHead | None, embedder: Embedder | None = None) -> None:
        self.head = head
        self.embedder = embedder or OfflineImageFeatures()

    def setup(self) -> None:
        head = self._trained_head()
        if head.embedder and head.embedder != self.embedder.name:
            raise BackendUnavailable(f"head was trained on {head.embedder!r} embeddings, not {self.embedder.name!r}")
        self.embedder.setup()

    def _trained_head(self) -> LogisticHead:
        if self.head is None:
            raise BackendUnavailable(
                "FakePersonClassifier has no head: train one with train_fake_person_head() "
                "or load saved bytes with LogisticHead.from_bytes()"
            )
        return self.head

    def score(self, img: Image.Image) -> float:
        return float(self._trained_head().prob(self.embedder.embed(img))[0])
