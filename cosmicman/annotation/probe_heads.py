"""The probe annotator's heads: one part-aware, class-balanced one-hidden-layer MLP per category, fitted
in parallel worker processes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from cosmicman.core.workers import map_in_workers


@contextmanager
def _single_thread():
    """Run small dense maths on one thread: BLAS thread pools thrash on small matrices on busy CPUs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


HEAD_HIDDEN = 16
_HEAD_PARTS = ("w1", "b1", "w2", "b2")


class Head:
    """A category's head: a one-hidden-layer MLP (GELU) over the feature columns of its part.

    Immutable (read-only arrays). ``params`` is every weight flattened, for comparing and hashing.
    """

    def __init__(self, cols: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> None:
        self.cols = np.array(cols, dtype=np.int64)
        self.w1, self.b1, self.w2, self.b2 = (np.array(a, dtype=np.float32) for a in (w1, b1, w2, b2))
        self.params = np.concatenate([a.ravel() for a in (self.w1, self.b1, self.w2, self.b2)])
        for a in (self.cols, self.w1, self.b1, self.w2, self.b2, self.params):
            a.setflags(write=False)

    def logits(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import erf

        h = x[:, self.cols] @ self.w1 + self.b1
        return (0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))) @ self.w2 + self.b2

    def arrays(self) -> dict[str, np.ndarray]:
        return {"cols": self.cols, "w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _fit_head(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cols: np.ndarray,
    l2: float,
    prior: Head | None = None,
    prior_l2: float = 0.0,
    seed: int = 0,
    maxiter: int = 60,
) -> Head:
    """Fit a :class:`Head` on rows ``x`` (standardised features) by full-batch L-BFGS (torch).

    Loss: class-balanced cross-entropy (a rare "yes" must not be drowned by "no": its children depend
    on it) + ``l2 * |W|^2`` + ``prior_l2 * |theta - prior|^2``. Fine-tuning starts from ``prior``, so a
    few labels refine what was known instead of replacing it; from scratch the start is seeded.
    """
    import torch

    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sw = 1.0 / np.sqrt(np.maximum(counts[y], 1.0))
    with _single_thread():
        xs = torch.from_numpy(np.ascontiguousarray(x[:, cols], dtype=np.float32))
        ys = torch.from_numpy(np.asarray(y, dtype=np.int64))
        weights = torch.from_numpy((sw / sw.sum()).astype(np.float32))
        if prior is not None:
            start = [torch.from_numpy(np.array(a, dtype=np.float32)) for a in (prior.w1, prior.b1, prior.w2, prior.b2)]
        else:
            g = torch.Generator().manual_seed(seed)
            start = [
                torch.randn(len(cols), HEAD_HIDDEN, generator=g) / np.sqrt(len(cols)),
                torch.zeros(HEAD_HIDDEN),
                torch.randn(HEAD_HIDDEN, n_classes, generator=g) / np.sqrt(HEAD_HIDDEN),
                torch.zeros(n_classes),
            ]
        anchor = [t.clone() for t in start]
        params = [t.clone().requires_grad_(True) for t in start]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=maxiter, history_size=10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            w1, b1, w2, b2 = params
            logits = torch.nn.functional.gelu(xs @ w1 + b1) @ w2 + b2
            loss = (torch.nn.functional.cross_entropy(logits, ys, reduction="none") * weights).sum()
            loss = loss + l2 * ((w1**2).sum() + (w2**2).sum())
            if prior is not None and prior_l2 > 0:
                loss = loss + prior_l2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            loss.backward()
            return loss

        opt.step(closure)
        return Head(cols, *(p.detach().numpy() for p in params))


@dataclass(frozen=True)
class HeadFit:
    """One head to fit: its category, the feature rows it learns from, their answers, where it starts."""

    category: str
    rows: np.ndarray
    y: np.ndarray
    n_classes: int
    cols: np.ndarray
    prior: Head | None = None


def _warm_up_fitting() -> None:
    """Fit a tiny head here: torch and the modules its optimiser loads on first use (about 3 s of
    imports) are then loaded once, in this process, and forked workers inherit them instead of each
    loading them again. Later calls cost about 2 ms."""
    _fit_head(np.zeros((2, 1), np.float32), np.array([0, 1]), 2, np.array([0]), 0.0, maxiter=1)


def fit_heads(x: np.ndarray, fits: Sequence[HeadFit], l2: float, prior_l2: float = 0.0) -> dict[str, Head]:
    """Every head of ``fits`` (by category), fitted on rows of ``x`` in parallel (:func:`map_in_workers`).

    A head's fit reads only its own inputs and starts from its prior or from a seed of its category's
    name, so the heads do not depend on the number of workers. The costliest fits go first, so the
    workers finish together.
    """
    _warm_up_fitting()
    by_cost = sorted(fits, key=lambda f: -len(f.rows) * len(f.cols))

    def fit(i: int) -> dict[str, np.ndarray]:
        f = by_cost[i]
        return _fit_head(
            x[f.rows], f.y, f.n_classes, f.cols, l2, prior=f.prior, prior_l2=prior_l2, seed=_name_seed(f.category)
        ).arrays()

    fitted = dict(zip((f.category for f in by_cost), map_in_workers(fit, len(by_cost))))
    return {f.category: Head(**fitted[f.category]) for f in fits}
