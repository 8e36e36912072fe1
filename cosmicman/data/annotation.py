"""Annotate Anyone's human-in-the-loop annotation: annotators, the simulated human, and the round logic.

Dagster-free (numpy / scipy / PIL). The paper's loop (Sec. 3.2.2): measure the current AI annotator on
an evaluation set I_e with ground truth, per category; categories under the threshold (85 %) go to
human annotators, who label only those categories on a sample I_r of the pool; the annotator is
fine-tuned on those labels and measured again on I_e; stop when every category passes or a round
brings no gain. Each round records accuracy per category before / after, the labels asked of humans
and the labels a full manual pass over the pool would have needed.

* :class:`Annotator` is the interface every backend implements (the light probe here; a VLM with
  LoRA in production lives behind a resource).
* :class:`ProbeAnnotator` is the light embedded default: a fixed, weight-free vision backbone
  (:class:`PersonRegionBackbone`: the person located from pixels, grid colour-name histograms and edge energy) plus
  one softmax-regression head per category. Its round 0 (:meth:`ProbeAnnotator.pretrained`) is
  trained on a small, noisy, biased label set that simulates a generic pretrained VLM (reliable on
  head categories such as gender / age, systematically confused on tail ones), so its per-category
  accuracy has a long tail. :meth:`ProbeAnnotator.finetune` retrains only the heads of the labelled
  categories and returns a new, separately versioned annotator; annotators are immutable.
* :class:`SimulatedOracle` is the simulated human: it answers from the synthetic world's ground truth
  with a configurable error rate (a wrong answer is drawn uniformly from the rest of the vocabulary).
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Protocol as TypingProtocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from cosmicman.data.imageio import decode_image, sha256_hex
from cosmicman.data.protocol import Category, Protocol, load_protocol

__all__ = [
    "LabelRecord",
    "AnnotationItem",
    "items_from_samples",
    "Annotator",
    "PersonRegionBackbone",
    "ProbeAnnotator",
    "GENERIC_VLM_PROFILE",
    "simulate_pretraining_labels",
    "SimulatedOracle",
    "per_category_accuracy",
    "mean_accuracy",
    "categories_below",
    "select_round_sample",
    "full_manual_label_count",
    "HitlRoundResult",
    "run_hitl_round",
    "should_stop",
    "run_hitl_loop",
    "load_annotator",
]

DEFAULT_THRESHOLD = 0.85


# --------------------------------------------------------------------------------------------------
# Records and items
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRecord:
    """One answer to one question about one image. ``source``: ``"oracle"`` (simulated) or ``"human"``."""

    image_sha256: str
    category: str
    answer: str
    source: Literal["oracle", "human"] = "oracle"
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class AnnotationItem:
    """An image in I_e or in the pool. ``attributes`` is the ground truth (I_e, synthetic pool) or None.

    The annotator only ever sees ``image``; the truth is for measuring it and for the simulated oracle.
    """

    image_sha256: str
    image: Image.Image
    attributes: Mapping[str, str] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, attributes: Mapping[str, str] | None = None) -> "AnnotationItem":
        return cls(sha256_hex(data), decode_image(data), dict(attributes) if attributes is not None else None)

    @classmethod
    def from_sample(cls, sample: Any, with_truth: bool = True) -> "AnnotationItem":
        """From a ``SyntheticSample`` (anything with ``image_bytes`` and ``attributes``)."""
        return cls.from_bytes(sample.image_bytes, sample.attributes if with_truth else None)


def items_from_samples(samples: Iterable[Any], with_truth: bool = True) -> list[AnnotationItem]:
    return [AnnotationItem.from_sample(s, with_truth) for s in samples]


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
@runtime_checkable
class Annotator(TypingProtocol):
    """An AI annotator. Implementations are immutable: ``finetune`` returns a new version."""

    @property
    def version(self) -> str: ...

    def predict(self, images: Sequence[Image.Image], categories: Sequence[str]) -> list[dict[str, str]]:
        """One dict per image: answers to those of ``categories`` that apply per the *predicted*
        hierarchy (a hat colour only when the annotator itself says there is a hat)."""
        ...

    def finetune(self, labels: Sequence[LabelRecord],
                 images: Mapping[str, Image.Image | bytes]) -> "Annotator":
        """A new annotator trained on ``labels``; ``images`` maps each label's sha256 to its image."""
        ...

    def save(self, path: str | Path | None = None) -> bytes:
        """Serialise (and write to ``path`` if given); returns the bytes."""
        ...


# --------------------------------------------------------------------------------------------------
# The fixed backbone
# --------------------------------------------------------------------------------------------------
# Colour-name prototypes (sRGB): the protocol's 12 garment colours, three skin tones, blonde hair.
_PROTOTYPES = {
    "black": (25, 25, 28), "white": (242, 242, 240), "gray": (128, 128, 128), "red": (200, 30, 35),
    "orange": (240, 140, 30), "yellow": (240, 215, 40), "green": (45, 150, 60), "blue": (40, 75, 200),
    "purple": (125, 50, 160), "pink": (240, 150, 190), "brown": (115, 70, 35), "beige": (220, 200, 160),
    "skin_light": (240, 205, 180), "skin_medium": (195, 145, 105), "skin_dark": (110, 75, 55),
    "blonde": (225, 195, 115),
}


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8/float sRGB -> CIE Lab (D65)."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                 dtype=np.float32)
    # explicit 3x3 product (a BLAS call here would spawn threads for every image)
    xyz = np.stack([c[..., 0] * m[i, 0] + c[..., 1] * m[i, 1] + c[..., 2] * m[i, 2] for i in range(3)], axis=-1)
    xyz = xyz / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


_PROTO_LAB = _srgb_to_lab(np.array(list(_PROTOTYPES.values()), dtype=np.float32))


class PersonRegionBackbone:
    """A fixed, weight-free feature extractor for single-person images (deterministic; no download).

    1. Foreground from pixels: each row's background colour is the median of its outer columns
       (``edge`` of the width on each side, where a centred person rarely reaches); a pixel is
       foreground when its Lab distance to its row's background exceeds ``fg_threshold``.
    2. Person box: rows with foreground in the central band give top / bottom; the box is centred on
       the foreground's median column and is ``box_aspect`` x its height wide (scale-normalised).
    3. Per cell of a ``grid_w`` x ``grid_h`` grid over the box: the foreground fraction, a soft
       colour-name histogram (16 Lab prototypes: the protocol's garment colours, skin tones, blonde)
       over foreground pixels, and horizontal / vertical / diagonal gradient energy on foreground
       pixels at twice the resolution (stripes, dots, plaid).
    4. Global: box height and width relative to the image, horizontal extent of the foreground,
       and the background's colour-name histogram and gradient energy in the top and bottom thirds.
    """

    kind = "person-region"

    def __init__(self, grid_w: int = 3, grid_h: int = 10, cell: int = 8, sigma: float = 14.0,
                 edge: float = 0.07, fg_threshold: float = 16.0, box_aspect: float = 0.6,
                 kind: str = "person-region"):
        if kind != self.kind:
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.grid_w, self.grid_h, self.cell, self.sigma = int(grid_w), int(grid_h), int(cell), float(sigma)
        self.edge, self.fg_threshold, self.box_aspect = float(edge), float(fg_threshold), float(box_aspect)
        self.k = len(_PROTOTYPES)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "grid_w": self.grid_w, "grid_h": self.grid_h, "cell": self.cell,
                "sigma": self.sigma, "edge": self.edge, "fg_threshold": self.fg_threshold,
                "box_aspect": self.box_aspect}

    @property
    def dim(self) -> int:
        return self.grid_w * self.grid_h * (1 + self.k + 3) + self.k + 9 * (self.k + 2) + 4 + 2 * (self.k + 1)

    def _soft_hist(self, lab: np.ndarray) -> np.ndarray:
        d2 = ((lab[..., None, :] - _PROTO_LAB) ** 2).sum(-1)
        w = np.exp(-(d2 - d2.min(-1, keepdims=True)) / (2 * self.sigma ** 2))
        return w / w.sum(-1, keepdims=True)

    def foreground(self, img: Image.Image, width: int = 80, height: int = 160) -> np.ndarray:
        """Boolean ``[height, width]`` foreground estimate (see the class docstring)."""
        lab = _srgb_to_lab(np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR)))
        e = max(2, int(round(self.edge * width)))
        border = np.concatenate([lab[:, :e], lab[:, -e:]], axis=1)
        bg = np.median(border, axis=1, keepdims=True)
        return np.sqrt(((lab - bg) ** 2).sum(-1)) > self.fg_threshold

    def _one(self, img: Image.Image) -> np.ndarray:
        img = img.convert("RGB")
        W, H = img.size
        fw, fh = 80, 160
        fg = self.foreground(img, fw, fh)
        band = fg[:, int(fw * 0.3):int(fw * 0.7)]
        rows = np.flatnonzero(band.sum(1) >= 2)
        if len(rows) < 4:
            top, bottom = 0, fh
        else:
            top, bottom = int(rows[0]), int(rows[-1]) + 1
        cols = np.flatnonzero(fg[top:bottom].any(0))
        cx = float(np.median(np.nonzero(fg[top:bottom])[1])) if fg[top:bottom].any() else fw / 2
        ph = bottom - top
        half = self.box_aspect * ph * (fh / H) * (W / fw) / 2  # box width in feature-map columns
        # box in original pixels
        sx, sy = W / fw, H / fh
        box = (max(0.0, (cx - half) * sx), top * sy, min(float(W), (cx + half) * sx), bottom * sy)
        gw, gh, c = self.grid_w, self.grid_h, self.cell
        crop = img.crop(tuple(int(round(v)) for v in box))
        small = np.asarray(crop.resize((gw * c, gh * c), Image.BILINEAR), dtype=np.float32)
        lab = _srgb_to_lab(small)
        # foreground of the crop, with the per-row background of the full image
        full_lab = _srgb_to_lab(np.asarray(img.resize((fw, fh), Image.BILINEAR)))
        e = max(2, int(round(self.edge * fw)))
        bg_rows = np.median(np.concatenate([full_lab[:, :e], full_lab[:, -e:]], axis=1), axis=1)  # [fh, 3]
        ys = np.clip(((box[1] + (np.arange(gh * c) + 0.5) * (box[3] - box[1]) / (gh * c)) / sy).astype(int), 0, fh - 1)
        crop_fg = (np.sqrt(((lab - bg_rows[ys][:, None, :]) ** 2).sum(-1)) > self.fg_threshold).astype(np.float32)
        hist = self._soft_hist(lab) * crop_fg[..., None]
        fg_cells = crop_fg.reshape(gh, c, gw, c).mean(axis=(1, 3))
        hist_cells = hist.reshape(gh, c, gw, c, self.k).sum(axis=(1, 3))
        hist_cells = hist_cells / np.maximum(hist_cells.sum(-1, keepdims=True), 1.0)
        big = np.asarray(crop.convert("L").resize((gw * c * 2, gh * c * 2), Image.BILINEAR), dtype=np.float32) / 255.0
        gx = np.abs(np.diff(big, axis=1))[:-1, :]
        gy = np.abs(np.diff(big, axis=0))[:, :-1]
        gd = np.abs(big[1:, 1:] - big[:-1, :-1])
        grads = np.pad(np.stack([gx, gy, gd], -1), ((0, 1), (0, 1), (0, 0)), mode="edge")
        fg_big = np.repeat(np.repeat(crop_fg, 2, axis=0), 2, axis=1)[..., None]
        g_cells = (grads * fg_big).reshape(gh, 2 * c, gw, 2 * c, 3).sum(axis=(1, 3))
        g_cells = 10.0 * g_cells / np.maximum(fg_big.reshape(gh, 2 * c, gw, 2 * c, 1).sum(axis=(1, 3)), 1.0)
        per_cell = np.concatenate([fg_cells[..., None], hist_cells, g_cells], axis=-1)
        colour_max = hist_cells.max(axis=(0, 1))
        # the head at higher resolution (lips, eyes, wrinkles, hair line): a 3x3 grid over a square
        # box of 0.16 x the person's height at the top of the box
        hs = 0.16 * (box[3] - box[1])
        hx = cx * sx
        head = img.crop(tuple(int(round(v)) for v in (hx - hs / 2, box[1], hx + hs / 2, box[1] + hs)))
        hc = 6
        hlab = _srgb_to_lab(np.asarray(head.resize((3 * hc, 3 * hc), Image.BILINEAR), dtype=np.float32))
        hhist = self._soft_hist(hlab).reshape(3, hc, 3, hc, self.k).mean(axis=(1, 3))
        hl = hlab[..., 0] / 10.0
        hg = np.stack([np.pad(np.abs(np.diff(hl, axis=1)), ((0, 0), (0, 1))),
                       np.pad(np.abs(np.diff(hl, axis=0)), ((0, 1), (0, 0)))], -1)
        head_f = np.concatenate([hhist, hg.reshape(3, hc, 3, hc, 2).mean(axis=(1, 3))], -1)
        extent = (cols[-1] - cols[0] + 1) / fw if len(cols) else 0.0
        glob = np.array([ph / fh, top / fh, extent, (cx - fw / 2) / fw], dtype=np.float32)
        bgf = []
        bg_mask = ~fg
        gl = np.abs(np.diff(full_lab[..., 0], axis=1))[:, :] / 10.0
        for sl in (slice(0, fh // 3), slice(2 * fh // 3, fh)):
            m = bg_mask[sl]
            h = self._soft_hist(full_lab[sl])[m].mean(0) if m.any() else np.zeros(self.k)
            g = gl[sl][m[:, 1:]].mean() if m[:, 1:].any() else 0.0
            bgf.append(np.append(h, g))
        return np.concatenate([per_cell.ravel(), colour_max, head_f.ravel(), glob,
                               np.concatenate(bgf)]).astype(np.float32)

    def __call__(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, img in enumerate(images):
            if isinstance(img, (bytes, bytearray)):
                img = decode_image(bytes(img))
            out[i] = self._one(img)
        return out


# --------------------------------------------------------------------------------------------------
# Softmax-regression heads
# --------------------------------------------------------------------------------------------------
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


def _fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                 w0: np.ndarray | None = None, prior: np.ndarray | None = None, prior_l2: float = 0.0,
                 sample_weight: np.ndarray | None = None, maxiter: int = 200) -> np.ndarray:
    """Multinomial logistic regression ``[D+1, C]`` (last row = bias) by full-batch L-BFGS (torch).

    Loss: mean weighted cross-entropy + ``l2 * |W|^2`` + ``prior_l2 * |W - prior|^2`` (biases unpenalised).
    Convex, so the result does not depend on ``w0`` beyond the tolerance.
    """
    import torch

    n, d = x.shape
    with _single_thread():
        xb = torch.from_numpy(np.hstack([x, np.ones((n, 1), dtype=x.dtype)]).astype(np.float64))
        onehot = torch.zeros((n, n_classes), dtype=torch.float64)
        onehot[torch.arange(n), torch.from_numpy(np.asarray(y, dtype=np.int64))] = 1.0
        sw = torch.ones(n, dtype=torch.float64) if sample_weight is None else \
            torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
        sw = (sw / sw.sum())[:, None]
        mask = torch.ones((d + 1, 1), dtype=torch.float64)
        mask[-1] = 0.0
        pr_np = np.zeros((d + 1, n_classes)) if prior is None else prior.astype(np.float64)
        pr = torch.from_numpy(pr_np)

        start = torch.from_numpy((pr_np if w0 is None else w0.astype(np.float64)).copy())
        w = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=maxiter, history_size=10, tolerance_grad=1e-6,
                                tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logp = torch.log_softmax(xb @ w, dim=1)
            wm, dm = w * mask, (w - pr) * mask
            loss = -(sw * onehot * logp).sum() + l2 * (wm ** 2).sum() + prior_l2 * (dm ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        out = w.detach().numpy()
    return out.reshape(d + 1, n_classes).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Simulating a generic pretrained VLM's knowledge
# --------------------------------------------------------------------------------------------------
# Per-category reliability of the labels a generic (web-trained) VLM has "seen": head categories
# (gender, age, big garments) are reliable; tail ones (patterns, lengths, types, small items) are
# systematically confused. Categories not listed use the per-tag default.
GENERIC_VLM_PROFILE: dict[str, float] = {
    "gender": 0.97, "age": 0.95, "background": 0.92, "hair_exists": 0.95, "top_exists": 0.95,
    "pants_exists": 0.95, "dress_exists": 0.93, "skirt_exists": 0.9, "shoes_exists": 0.9,
    "hat_exists": 0.9, "top_color": 0.88, "dress_color": 0.85, "pants_color": 0.85, "hair_color": 0.85,
    "skin_tone": 0.8,
    "_tag:global": 0.75, "_tag:obj": 0.6, "_tag:tex": 0.5, "_tag:shape": 0.4,
    "top_pattern": 0.35, "dress_pattern": 0.3, "skirt_pattern": 0.3, "pants_pattern": 0.3,
    "scarf_pattern": 0.3, "sleeve_length": 0.45, "pants_length": 0.4, "dress_length": 0.4,
    "skirt_length": 0.35, "hat_type": 0.35, "shoes_type": 0.35, "bag_type": 0.3, "pose": 0.4,
    "belt_exists": 0.5, "belt_color": 0.3, "sunglasses_exists": 0.55,
}


def _reliability(cat: Category, profile: Mapping[str, float]) -> float:
    return float(profile.get(cat.name, profile.get(f"_tag:{cat.tag}", 0.6)))


def _confusion_map(cat: Category, seed: int) -> dict[str, str]:
    """A fixed derangement of the vocabulary: the systematic mistake the simulated VLM makes."""
    answers = list(cat.answers)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{cat.name}".encode()).digest()[:4], "little"))
    shift = int(rng.integers(1, len(answers))) if len(answers) > 1 else 0
    order = [answers[i] for i in rng.permutation(len(answers))]
    return {order[i]: order[(i + shift) % len(order)] for i in range(len(order))}


def simulate_pretraining_labels(attributes: Sequence[Mapping[str, str]], seed: int = 0,
                                profile: Mapping[str, float] | None = None,
                                protocol: Protocol | None = None,
                                tail_coverage: float = 0.5) -> list[dict[str, str]]:
    """Noisy, biased labels as a generic pretrained VLM would give, from the true ``attributes``.

    Per category with reliability ``r`` (from ``profile``): the true answer with probability ``r``,
    otherwise the category's fixed systematic confusion (a derangement of its vocabulary), so weak
    categories are learnt *wrongly*, not just noisily. Categories with ``r < 0.6`` are only labelled
    on a ``tail_coverage`` fraction of the images (the VLM rarely saw them).
    """
    protocol = protocol or load_protocol()
    profile = GENERIC_VLM_PROFILE if profile is None else profile
    rng = np.random.default_rng(seed)
    maps = {c.name: _confusion_map(c, seed) for c in protocol.categories}
    out = []
    for attrs in attributes:
        noisy = {}
        for cat in protocol.categories:
            if cat.name not in attrs:
                continue
            r = _reliability(cat, profile)
            if r < 0.6 and rng.random() > tail_coverage:
                continue
            truth = attrs[cat.name]
            noisy[cat.name] = truth if rng.random() < r else maps[cat.name][truth]
        out.append(noisy)
    return out


# --------------------------------------------------------------------------------------------------
# The probe annotator
# --------------------------------------------------------------------------------------------------


class ProbeAnnotator:
    """Fixed backbone + one softmax-regression head per category. Immutable; see the module docstring.

    ``finetune`` retrains the heads of the labelled categories only (L-BFGS on the human labels, with
    a weak L2 pull towards the previous head so a few labels do not erase what was known), keeps the
    other heads, and returns a new annotator whose version names its parent and round.
    """

    kind = "probe"

    def __init__(self, heads: Mapping[str, np.ndarray], mean: np.ndarray, std: np.ndarray,
                 backbone_config: Mapping[str, Any] | None = None, lineage: Sequence[str] = (),
                 round: int = 0, protocol: Protocol | None = None, l2: float = 1e-2,
                 prior_l2: float = 1e-3):
        self.protocol = protocol or load_protocol()
        self.backbone = PersonRegionBackbone(**(backbone_config or {}))
        self._heads = {}
        for name, w in heads.items():
            arr = np.array(w, dtype=np.float32, copy=True)
            arr.setflags(write=False)
            self._heads[name] = arr
        self._mean = np.array(mean, dtype=np.float32, copy=True)
        self._std = np.array(std, dtype=np.float32, copy=True)
        self._mean.setflags(write=False)
        self._std.setflags(write=False)
        self.lineage = tuple(lineage)
        self.round = int(round)
        self.l2, self.prior_l2 = float(l2), float(prior_l2)
        h = hashlib.sha256()
        h.update(json.dumps(self.backbone.config, sort_keys=True).encode())
        for name in sorted(self._heads):
            h.update(name.encode())
            h.update(self._heads[name].tobytes())
        self._digest = h.hexdigest()[:10]

    # -- identity ---------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"probe-r{self.round}-{self._digest}"

    @property
    def heads(self) -> Mapping[str, np.ndarray]:
        """Read-only view of the head weights (``[D+1, C]`` per category)."""
        return dict(self._heads)

    def __repr__(self) -> str:
        return f"ProbeAnnotator(version={self.version!r}, heads={len(self._heads)})"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def train(cls, images: Sequence[Image.Image | bytes], labels: Sequence[Mapping[str, str]],
              protocol: Protocol | None = None, backbone_config: Mapping[str, Any] | None = None,
              l2: float = 1e-2, prior_l2: float = 1e-3) -> "ProbeAnnotator":
        """Round 0 from scratch: features of ``images``; ``labels[i]`` answers some categories of image i."""
        protocol = protocol or load_protocol()
        backbone = PersonRegionBackbone(**(backbone_config or {}))
        feats = backbone(list(images))
        mean = feats.mean(0)
        std = feats.std(0) + 1e-3
        x = (feats - mean) / std
        heads = {}
        for cat in protocol.categories:
            idx = [i for i, lab in enumerate(labels) if cat.name in lab]
            if not idx:
                continue
            y = np.array([cat.answers.index(labels[i][cat.name]) for i in idx])
            heads[cat.name] = _fit_softmax(x[idx], y, len(cat.answers), l2)
        return cls(heads, mean, std, backbone.config, lineage=(), round=0, protocol=protocol,
                   l2=l2, prior_l2=prior_l2)

    @classmethod
    def pretrained(cls, images: Sequence[Image.Image | bytes], true_attributes: Sequence[Mapping[str, str]],
                   seed: int = 0, profile: Mapping[str, float] | None = None,
                   protocol: Protocol | None = None, **kwargs: Any) -> "ProbeAnnotator":
        """Round 0, simulating a generic pretrained VLM: trained on :func:`simulate_pretraining_labels`."""
        noisy = simulate_pretraining_labels(true_attributes, seed=seed, profile=profile, protocol=protocol)
        return cls.train(images, noisy, protocol=protocol, **kwargs)

    # -- inference --------------------------------------------------------------------------------
    def features(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        return (self.backbone(list(images)) - self._mean) / self._std

    def predict_proba(self, images: Sequence[Image.Image | bytes], category: str) -> np.ndarray:
        return self._proba(self.features(images), category)

    def _proba(self, x: np.ndarray, category: str) -> np.ndarray:
        w = self._heads[category]
        z = np.einsum("nd,dc->nc", x, w[:-1]) + w[-1]
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def _needed(self, categories: Iterable[str]) -> list[Category]:
        by_name = self.protocol.by_name
        need: set[str] = set()
        stack = list(categories)
        while stack:
            name = stack.pop()
            if name not in by_name:
                raise KeyError(f"unknown category {name!r}")
            if name not in need:
                need.add(name)
                stack.extend(by_name[name].requires)
        # protocol order has parents before children
        return [c for c in self.protocol.categories if c.name in need]

    def predict(self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
                ) -> list[dict[str, str]]:
        categories = [c.name for c in self.protocol.categories] if categories is None else list(categories)
        if not len(images):
            return []
        x = self.features(images)
        needed = self._needed(categories)
        answers: dict[str, np.ndarray] = {}
        for cat in needed:
            if cat.name in self._heads:
                answers[cat.name] = self._proba(x, cat.name).argmax(1)
        wanted = set(categories)
        out = []
        for i in range(len(images)):
            pred: dict[str, str] = {}
            for cat in needed:
                if cat.name in answers and cat.applies(pred):
                    pred[cat.name] = cat.answers[int(answers[cat.name][i])]
            out.append({k: v for k, v in pred.items() if k in wanted})
        return out

    # -- fine-tuning ------------------------------------------------------------------------------
    def finetune(self, labels: Sequence[LabelRecord],
                 images: Mapping[str, Image.Image | bytes], round: int | None = None) -> "ProbeAnnotator":
        """New annotator whose heads for the labelled categories are retrained on ``labels``.

        ``images`` maps every label's ``image_sha256`` to the image (or its bytes). Several labels for
        the same (image, category) are all used (disagreeing humans become soft targets).
        """
        if not labels:
            return self
        by_name = self.protocol.by_name
        shas = sorted({lab.image_sha256 for lab in labels})
        missing = [s for s in shas if s not in images]
        if missing:
            raise KeyError(f"finetune needs the labelled images; {len(missing)} missing, e.g. {missing[0]}")
        row = {s: i for i, s in enumerate(shas)}
        x = self.features([images[s] for s in shas])
        new_heads = dict(self._heads)
        by_cat: dict[str, list[LabelRecord]] = {}
        for lab in labels:
            if lab.category not in by_name:
                raise KeyError(f"label for unknown category {lab.category!r}")
            if lab.answer not in by_name[lab.category].answers:
                raise ValueError(f"{lab.category}={lab.answer!r} is not in its vocabulary")
            by_cat.setdefault(lab.category, []).append(lab)
        for name, labs in sorted(by_cat.items()):
            cat = by_name[name]
            idx = np.array([row[lab.image_sha256] for lab in labs])
            y = np.array([cat.answers.index(lab.answer) for lab in labs])
            prior = self._heads.get(name)
            new_heads[name] = _fit_softmax(x[idx], y, len(cat.answers), self.l2, w0=prior,
                                           prior=prior, prior_l2=self.prior_l2 if prior is not None else 0.0)
        rnd = self.round + 1 if round is None else int(round)
        return ProbeAnnotator(new_heads, self._mean, self._std, self.backbone.config,
                              lineage=self.lineage + (self.version,), round=rnd, protocol=self.protocol,
                              l2=self.l2, prior_l2=self.prior_l2)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> bytes:
        """A zip of ``meta.json`` + ``arrays.npz`` (no pickle). Written to ``path`` if given."""
        meta = {"kind": self.kind, "version": self.version, "round": self.round, "lineage": list(self.lineage),
                "backbone": self.backbone.config, "l2": self.l2, "prior_l2": self.prior_l2,
                "protocol_version": self.protocol.version, "heads": sorted(self._heads)}
        arrays = {"mean": self._mean, "std": self._std}
        arrays.update({f"head/{k}": v for k, v in self._heads.items()})
        npz = io.BytesIO()
        np.savez(npz, **arrays)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True))
            zf.writestr("arrays.npz", npz.getvalue())
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    @classmethod
    def load(cls, src: str | Path | bytes, protocol: Protocol | None = None) -> "ProbeAnnotator":
        data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            npz = np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False)
            arrays = {k: npz[k] for k in npz.files}
        if meta.get("kind") != cls.kind:
            raise ValueError(f"not a probe annotator: kind={meta.get('kind')!r}")
        heads = {k[len("head/"):]: v for k, v in arrays.items() if k.startswith("head/")}
        ann = cls(heads, arrays["mean"], arrays["std"], meta["backbone"], lineage=meta["lineage"],
                  round=meta["round"], protocol=protocol, l2=meta["l2"], prior_l2=meta["prior_l2"])
        if ann.version != meta["version"]:
            raise ValueError(f"corrupt annotator: version {ann.version} != recorded {meta['version']}")
        return ann


def load_annotator(src: str | Path | bytes, protocol: Protocol | None = None) -> Annotator:
    """Load any saved annotator (dispatches on the ``kind`` recorded by ``save``)."""
    return ProbeAnnotator.load(src, protocol=protocol)


# --------------------------------------------------------------------------------------------------
# The simulated human
# --------------------------------------------------------------------------------------------------
class SimulatedOracle:
    """A human labeller simulated from ground truth: wrong with probability ``error_rate``.

    A wrong answer is drawn uniformly from the category's other answers. Only categories that apply to
    the image by truth are answered (the labelling UI shows a garment's colour question only when the
    garment exists). Deterministic in ``seed`` and the (image, category, round) asked.
    """

    def __init__(self, error_rate: float = 0.05, seed: int = 0, protocol: Protocol | None = None,
                 source: Literal["oracle", "human"] = "oracle"):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be in [0, 1]")
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        self.protocol = protocol or load_protocol()
        self.source = source

    def _rng(self, sha: str, category: str, round: int) -> np.random.Generator:
        key = hashlib.sha256(f"{self.seed}:{sha}:{category}:{round}".encode()).digest()
        return np.random.default_rng(int.from_bytes(key[:8], "little"))

    def answer(self, sha: str, attributes: Mapping[str, str], category: str, round: int = 0) -> str | None:
        cat = self.protocol.by_name[category]
        if not cat.applies(attributes) or category not in attributes:
            return None
        truth = attributes[category]
        rng = self._rng(sha, category, round)
        if len(cat.answers) > 1 and rng.random() < self.error_rate:
            others = [a for a in cat.answers if a != truth]
            return others[int(rng.integers(len(others)))]
        return truth

    def label(self, items: Sequence[AnnotationItem], categories: Sequence[str], round: int = 0
              ) -> list[LabelRecord]:
        out = []
        for item in items:
            if item.attributes is None:
                raise ValueError(f"the simulated oracle needs ground truth for {item.image_sha256}")
            for name in categories:
                ans = self.answer(item.image_sha256, item.attributes, name, round)
                if ans is not None:
                    out.append(LabelRecord(item.image_sha256, name, ans, self.source, round))
        return out


# --------------------------------------------------------------------------------------------------
# Round logic
# --------------------------------------------------------------------------------------------------
def per_category_accuracy(annotator: Annotator, eval_items: Sequence[AnnotationItem],
                          categories: Sequence[str] | None = None, protocol: Protocol | None = None,
                          predictions: Sequence[Mapping[str, str]] | None = None) -> dict[str, float]:
    """Accuracy per category on I_e, over the items where the category applies *by ground truth*.

    A missing prediction (the annotator's own hierarchy skipped the question) counts as wrong.
    Categories that apply to no eval item are left out. ``predictions`` may be passed precomputed.
    """
    protocol = protocol or load_protocol()
    names = [c.name for c in protocol.categories] if categories is None else list(categories)
    if predictions is None:
        predictions = annotator.predict([it.image for it in eval_items], names)
    by_name = protocol.by_name
    acc = {}
    for name in names:
        cat = by_name[name]
        hits = total = 0
        for item, pred in zip(eval_items, predictions):
            truth = item.attributes
            if truth is None:
                raise ValueError(f"eval item {item.image_sha256} has no ground truth")
            if name not in truth or not cat.applies(truth):
                continue
            total += 1
            hits += int(pred.get(name) == truth[name])
        if total:
            acc[name] = hits / total
    return acc


def mean_accuracy(acc: Mapping[str, float]) -> float:
    """Macro average over categories."""
    return float(np.mean(list(acc.values()))) if acc else float("nan")


def categories_below(acc: Mapping[str, float], threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Categories whose accuracy is under ``threshold`` (these go to humans), worst first."""
    return [k for k, v in sorted(acc.items(), key=lambda kv: (kv[1], kv[0])) if v < threshold]


def select_round_sample(pool_ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """A deterministic random sample I_r of ``n`` pool ids, independent of the pool's order.

    Ranks ids by ``sha256(seed:id)`` and takes the first ``n`` (all of them if the pool is smaller).
    """
    ids = sorted(set(pool_ids))
    ranked = sorted(ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return ranked[:max(int(n), 0)]


def full_manual_label_count(pool_items: Sequence[AnnotationItem], protocol: Protocol | None = None) -> int:
    """Labels a full manual pass over the pool needs: the applicable categories of every image.

    Uses the truth where known (the exact hierarchy); an image without truth counts every category
    (an upper bound).
    """
    protocol = protocol or load_protocol()
    total = 0
    for item in pool_items:
        if item.attributes is not None:
            total += len(protocol.applicable(item.attributes))
        else:
            total += len(protocol.categories)
    return total


@dataclass(frozen=True)
class HitlRoundResult:
    round: int
    annotator_before: str
    annotator_after: str
    accuracy_before: Mapping[str, float]
    accuracy_after: Mapping[str, float]
    categories_sent: tuple[str, ...]
    sampled_ids: tuple[str, ...]
    labels_asked: int
    full_manual_labels: int
    threshold: float = DEFAULT_THRESHOLD

    @property
    def cost_share(self) -> float:
        """Labels asked of humans / labels a full manual pass over the pool would need."""
        return self.labels_asked / self.full_manual_labels if self.full_manual_labels else 0.0

    @property
    def mean_accuracy_before(self) -> float:
        return mean_accuracy(self.accuracy_before)

    @property
    def mean_accuracy_after(self) -> float:
        return mean_accuracy(self.accuracy_after)

    @property
    def gain(self) -> float:
        return self.mean_accuracy_after - self.mean_accuracy_before

    @property
    def passing_after(self) -> bool:
        return not categories_below(self.accuracy_after, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_before"] = dict(self.accuracy_before)
        d["accuracy_after"] = dict(self.accuracy_after)
        d["categories_sent"] = list(self.categories_sent)
        d["sampled_ids"] = list(self.sampled_ids)
        d.update(cost_share=self.cost_share, mean_accuracy_before=self.mean_accuracy_before,
                 mean_accuracy_after=self.mean_accuracy_after, gain=self.gain)
        return d


def run_hitl_round(annotator: Annotator, eval_items: Sequence[AnnotationItem],
                   pool_items: Sequence[AnnotationItem], oracle: SimulatedOracle,
                   threshold: float = DEFAULT_THRESHOLD, sample_size: int = 100, seed: int = 0,
                   round: int | None = None, protocol: Protocol | None = None,
                   prior_labels: Sequence[LabelRecord] = (),
                   accuracy_before: Mapping[str, float] | None = None
                   ) -> tuple[Annotator, HitlRoundResult, list[LabelRecord]]:
    """One Annotate Anyone round; returns ``(new_annotator, result, labels)``.

    Measure on I_e; send the categories under ``threshold`` to the oracle for a sample I_r of
    ``sample_size`` pool images; fine-tune on those labels (plus ``prior_labels`` of the same
    categories from earlier rounds, whose images must be in ``pool_items``); measure again. With no
    category under the threshold nothing is asked and the annotator is returned unchanged.
    """
    protocol = protocol or load_protocol()
    rnd = (getattr(annotator, "round", 0) + 1) if round is None else int(round)
    acc_before = dict(accuracy_before) if accuracy_before is not None else \
        per_category_accuracy(annotator, eval_items, protocol=protocol)
    sent = categories_below(acc_before, threshold)
    full = full_manual_label_count(pool_items, protocol)
    if not sent:
        res = HitlRoundResult(rnd, annotator.version, annotator.version, acc_before, acc_before, (), (), 0,
                              full, threshold)
        return annotator, res, []
    by_id = {it.image_sha256: it for it in pool_items}
    sampled = select_round_sample(by_id, sample_size, seed=seed + rnd)
    labels = oracle.label([by_id[s] for s in sampled], sent, round=rnd)
    sent_set = set(sent)
    train = [lab for lab in prior_labels if lab.category in sent_set] + labels
    images = {s: it.image for s, it in by_id.items()}
    new = annotator.finetune(train, images)
    acc_after = per_category_accuracy(new, eval_items, protocol=protocol)
    res = HitlRoundResult(rnd, annotator.version, new.version, acc_before, acc_after, tuple(sent),
                          tuple(sampled), len(labels), full, threshold)
    return new, res, labels


def should_stop(history: Sequence[HitlRoundResult], min_gain: float = 0.0) -> tuple[bool, str]:
    """The paper's stop rule on the latest round: every category passes, or the round brought no gain.

    Returns ``(stop, reason)`` with reason ``"all pass"``, ``"no gain"`` or ``"continue"``.
    """
    if not history:
        return False, "continue"
    last = history[-1]
    if last.passing_after:
        return True, "all pass"
    if last.gain <= min_gain:
        return True, "no gain"
    return False, "continue"


def run_hitl_loop(annotator: Annotator, eval_items: Sequence[AnnotationItem],
                  pool_items: Sequence[AnnotationItem], oracle: SimulatedOracle,
                  threshold: float = DEFAULT_THRESHOLD, sample_size: int = 100, seed: int = 0,
                  max_rounds: int = 5, min_gain: float = 0.0, protocol: Protocol | None = None
                  ) -> tuple[Annotator, list[HitlRoundResult], str]:
    """Rounds until :func:`should_stop` (or ``max_rounds``). Labels accumulate across rounds.

    A round that does not improve mean accuracy is discarded (the previous annotator is kept), then
    the loop stops with ``"no gain"``. Returns ``(final_annotator, history, reason)``.
    """
    history: list[HitlRoundResult] = []
    all_labels: list[LabelRecord] = []
    acc = None
    reason = "max rounds"
    for _ in range(max_rounds):
        new, res, labels = run_hitl_round(annotator, eval_items, pool_items, oracle, threshold,
                                          sample_size, seed, protocol=protocol, prior_labels=all_labels,
                                          accuracy_before=acc)
        history.append(res)
        stop, why = should_stop(history, min_gain)
        if why != "no gain":
            annotator, acc = new, res.accuracy_after
            all_labels.extend(labels)
        if stop:
            reason = why
            break
    return annotator, history, reason
