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
  (:class:`PersonRegionBackbone`: the person and its anatomical landmarks located from pixels, part
  regions with colour-name histograms, Lab, pattern / gradient, skin and garment statistics, vertical
  silhouette profiles, background statistics) plus one part-aware, class-balanced head per category
  (a one-hidden-layer MLP reading only the feature groups of its part, ``_HEAD_INPUTS``). Its round 0 (:meth:`ProbeAnnotator.pretrained`) is
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
import multiprocessing
import os
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, runtime_checkable
from typing import Protocol as TypingProtocol

import numpy as np
from PIL import Image

from cosmicman.core.imageio import decode_image, sha256_hex
from cosmicman.core.protocol import Category, Protocol, load_protocol

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
    "merge_human_answers",
    "implied_labels",
    "load_annotator",
    "map_in_workers",
    "materialize",
]

DEFAULT_THRESHOLD = 0.85
WORKERS_ENV = "COSMICMAN_WORKERS"  # how many processes map_in_workers uses; unset: every core this process may use


# --------------------------------------------------------------------------------------------------
# Parallel work
# --------------------------------------------------------------------------------------------------
_T = TypeVar("_T")
# The task forked workers run. Set only while map_in_workers runs, so workers inherit it instead of
# unpickling it (with the arrays, images or synthetic world it reads); set in a worker, it keeps that
# worker from forking workers of its own.
_FORKED_TASK: Callable[[int], Any] | None = None


def _worker_count() -> int:
    configured = os.environ.get(WORKERS_ENV)
    if configured:
        return max(int(configured), 1)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    """One torch thread per worker: the workers already share out the cores."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextmanager
def _opencv_single_threaded():
    """OpenCV on one thread here while workers fork: a forked worker inherits OpenCV's thread pool
    without its threads, and waits on them forever (seen in ``cv2.setNumThreads``); with the pool
    stopped, workers inherit none and run OpenCV in their own thread. The pool restarts afterwards."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _run_forked_task(index: int) -> Any:
    assert _FORKED_TASK is not None
    return _FORKED_TASK(index)


def map_in_workers(task: Callable[[int], _T], n: int, min_per_worker: int = 1) -> list[_T]:
    """``[task(0), ..., task(n - 1)]``, computed by a pool of forked worker processes (``WORKERS_ENV``).

    ``task`` must be a pure function of its index, so the results do not depend on the number of
    workers. Workers are forked, so the task and what it reads are inherited, not pickled; only the
    results travel back. Runs here, in order, with one worker, inside a worker, or with fewer than
    ``min_per_worker`` tasks per worker (below that, forking costs more than it saves).
    """
    global _FORKED_TASK
    workers = min(_worker_count(), n // max(min_per_worker, 1))
    if workers <= 1 or _FORKED_TASK is not None:
        return [task(i) for i in range(n)]
    _FORKED_TASK = task
    try:
        with _opencv_single_threaded(), ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker) as pool:
            return list(pool.map(_run_forked_task, range(n), chunksize=max(1, n // (8 * workers))))
    finally:
        _FORKED_TASK = None


# --------------------------------------------------------------------------------------------------
# Records and items
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRecord:
    """One answer to one question about one image. ``source``: ``"oracle"`` (simulated), ``"human"``, or
    ``"implied"`` (derived from the answers to detail questions, see :func:`implied_labels`)."""

    image_sha256: str
    category: str
    answer: str
    source: Literal["oracle", "human", "implied"] = "oracle"
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AnnotationItem:
    """An image in I_e or in the pool. ``attributes`` is the ground truth (I_e, synthetic pool) or None.

    The annotator only ever sees ``image``; the truth is for measuring it and for the simulated oracle.
    ``pool_id`` is what a round samples by (the sha256 for a real image). A :meth:`lazy` item decodes
    (or renders) its image the first time ``image`` or ``image_sha256`` is read, so a round over a large
    pool touches only the images it samples.
    """

    def __init__(self, image_sha256: str, image: Image.Image, attributes: Mapping[str, str] | None = None,
                 pool_id: str | None = None) -> None:
        self._sha, self._image, self._load = image_sha256, image, None
        self.attributes = dict(attributes) if attributes is not None else None
        self.pool_id = pool_id or image_sha256

    @classmethod
    def lazy(cls, pool_id: str, load: Callable[[], bytes], attributes: Mapping[str, str] | None = None
             ) -> AnnotationItem:
        item = cls("", None, attributes, pool_id)  # type: ignore[arg-type]
        item._load = load
        return item

    def _materialize(self) -> None:
        if self._load is not None:
            self._set_bytes(self._load())

    def _set_bytes(self, data: bytes) -> None:
        self._sha, self._image, self._load = sha256_hex(data), decode_image(data), None

    @property
    def image_sha256(self) -> str:
        self._materialize()
        return self._sha

    @property
    def image(self) -> Image.Image:
        self._materialize()
        return self._image

    @classmethod
    def from_bytes(cls, data: bytes, attributes: Mapping[str, str] | None = None) -> AnnotationItem:
        return cls(sha256_hex(data), decode_image(data), attributes)

    @classmethod
    def from_sample(cls, sample: Any, with_truth: bool = True) -> AnnotationItem:
        """From a ``SyntheticSample`` (anything with ``image_bytes`` and ``attributes``)."""
        return cls.from_bytes(sample.image_bytes, sample.attributes if with_truth else None)


def items_from_samples(samples: Iterable[Any], with_truth: bool = True) -> list[AnnotationItem]:
    return [AnnotationItem.from_sample(s, with_truth) for s in samples]


def materialize(items: Sequence[AnnotationItem]) -> None:
    """Decode (or render) the :meth:`AnnotationItem.lazy` ones among ``items`` now, loading in parallel."""
    lazy = [it for it in items if it._load is not None]
    loaded = map_in_workers(lambda i: lazy[i]._load(), len(lazy), min_per_worker=4)
    for item, data in zip(lazy, loaded):
        item._set_bytes(data)


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
def labelled_image_rows(labels: Sequence[LabelRecord], images: Mapping[str, Any]
                        ) -> tuple[list[str], dict[str, int]]:
    """The labelled images' sha256s (sorted) and each one's row; every one must be in ``images``."""
    shas = sorted({lab.image_sha256 for lab in labels})
    missing = [s for s in shas if s not in images]
    if missing:
        raise KeyError(f"finetune needs the labelled images; {len(missing)} missing, e.g. {missing[0]}")
    return shas, {s: i for i, s in enumerate(shas)}


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
                 images: Mapping[str, Image.Image | bytes]) -> Annotator:
        """A new annotator trained on ``labels``; ``images`` maps each label's sha256 to its image."""
        ...

    def save(self, path: str | Path | None = None) -> bytes:
        """Serialise (and write to ``path`` if given); returns the bytes."""
        ...


# --------------------------------------------------------------------------------------------------
# The fixed backbone
# --------------------------------------------------------------------------------------------------
# Colour-name prototypes (sRGB): the protocol's 12 garment colours, three skin tones, the hair colours
# that are not already garment colours (blonde, auburn, hair brown, silver).
_PROTOTYPES = {
    "black": (25, 25, 28), "white": (242, 242, 240), "gray": (128, 128, 128), "red": (200, 30, 35),
    "orange": (240, 140, 30), "yellow": (240, 215, 40), "green": (45, 150, 60), "blue": (40, 75, 200),
    "purple": (125, 50, 160), "pink": (240, 150, 190), "brown": (115, 70, 35), "beige": (220, 200, 160),
    "skin_light": (240, 205, 180), "skin_medium": (198, 146, 106), "skin_dark": (134, 90, 62),
    "blonde": (225, 195, 115), "auburn": (168, 58, 24), "hair_brown": (92, 56, 30), "silver": (168, 168, 166),
}
_SKIN = slice(12, 15)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8/float sRGB -> CIE Lab (D65), float32 (OpenCV's exact float conversion)."""
    import cv2

    a = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32) / 255.0)
    shape = a.shape
    return cv2.cvtColor(a.reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(shape)


_PROTO_LAB = _srgb_to_lab(np.array(list(_PROTOTYPES.values()), dtype=np.float32))

# Person-frame regions: (name, y0, y1, x0, x1). y in landmark units ("t" head top, "hy" head centre,
# "sy" shoulders, "waist", "hip", "knee", "ankle", "b" feet bottom) plus an offset in head heights;
# x in head heights from the body axis (image left = the person's right = negative).
_REGIONS: tuple[tuple[str, tuple[str, float], tuple[str, float], float, float], ...] = (
    ("crown", ("t", -0.05), ("t", 0.3), -0.5, 0.5),
    ("brim", ("t", 0.05), ("t", 0.45), -0.95, 0.95),
    ("hair_top", ("hy", -0.45), ("hy", -0.2), -0.4, 0.4),
    ("hair_side", ("hy", -0.2), ("hy", 0.25), -0.55, 0.55),
    ("hair_low", ("hy", 0.3), ("hy", 0.62), -0.55, 0.55),
    ("hair_back", ("hy", 0.62), ("sy", 0.0), -0.6, 0.6),
    ("eyes", ("hy", -0.15), ("hy", 0.06), -0.32, 0.32),
    ("cheeks", ("hy", 0.06), ("hy", 0.26), -0.3, 0.3),
    ("mouth", ("hy", 0.24), ("hy", 0.38), -0.16, 0.16),
    ("forehead", ("hy", -0.36), ("hy", -0.16), -0.22, 0.22),
    ("neck", ("sy", -0.22), ("sy", 0.1), -0.32, 0.32),
    ("torso_r", ("sy", 0.2), ("waist", -0.05), -0.6, -0.08),
    ("torso_c", ("sy", 0.2), ("waist", -0.05), -0.08, 0.06),
    ("torso_l", ("sy", 0.2), ("waist", -0.05), 0.06, 0.26),
    ("torso_ll", ("sy", 0.2), ("waist", -0.05), 0.26, 0.6),
    ("waist", ("waist", -0.1), ("hip", -0.15), -0.5, 0.5),
    ("belt_hi", ("hip", -0.15), ("hip", 0.05), -0.5, 0.5),
    ("belt_lo", ("waist", -0.05), ("waist", 0.1), -0.45, 0.45),
    ("buckle", ("hip", -0.08), ("hip", 0.04), -0.06, 0.06),
    ("hip", ("hip", 0.1), ("hip", 0.45), -0.6, 0.6),
    ("thigh", ("hip", 0.5), ("knee", -0.2), -0.8, 0.8),
    ("shin", ("knee", 0.2), ("ankle", -0.2), -0.9, 0.9),
    ("feet", ("ankle", 0.0), ("b", 0.0), -1.0, 1.0),
    ("arm_up_r", ("sy", 0.0), ("hip", -0.6), -2.2, -1.0),
    ("arm_up_l", ("sy", 0.0), ("hip", -0.6), 1.0, 2.2),
    ("side_r", ("hip", -0.6), ("knee", 0.0), -2.4, -0.8),
    ("side_l", ("hip", -0.6), ("knee", 0.0), 0.8, 2.4),
    ("raised_r", ("t", -1.6), ("sy", -0.2), -2.6, -0.7),
    ("raised_l", ("t", -1.6), ("sy", -0.2), 0.7, 2.6),
    ("scarf_end", ("sy", 0.3), ("sy", 1.0), 0.08, 0.22),
    ("scarf_mirror", ("sy", 0.3), ("sy", 1.0), -0.22, -0.08),
)
# Vertical profiles: rows between two landmarks, in ``n`` bands, over |x| <= half-width (head heights).
_PROFILES = (("head", ("t", -0.4), ("sy", 0.2), 8, 1.0), ("body", ("sy", 0.0), ("b", 0.0), 20, 1.4))
# Channels of the per-pixel stack (summed over rectangles with an integral image).
_N_PROTO = len(_PROTOTYPES)
_CH_FG, _CH_HIST, _CH_LAB = 0, 1, 1 + _N_PROTO
_CH_GX, _CH_GY, _CH_GX2, _CH_GY2, _CH_L2, _CH_SKIN, _CH_GAR = (1 + _N_PROTO + 3 + i for i in range(7))
_N_CH = 1 + _N_PROTO + 3 + 7
_REGION_DIM = 1 + _N_PROTO + 3 + 8  # fg share, colour names, mean Lab, 4 gradients, L std, skin, garment, max name


# Which backbone features each category's head reads (part-aware heads): a group name from
# ``PersonRegionBackbone.groups``; ``region:hist`` is only the region's 12 garment-colour names and
# ``region:colour`` its colour names and mean Lab. Categories not listed read every feature.
_HEAD=["crown","brim","hair_top","hair_side","hair_low","hair_back","eyes","cheeks","mouth","forehead","profile_head"]
_TORSO=["neck","torso_r","torso_c","torso_l","torso_ll"]
_ARMS=["arm_up_r","arm_up_l","side_r","side_l","raised_r","raised_l"]
_LOW=["waist","belt_hi","belt_lo","buckle","hip","thigh","shin","feet","profile_body"]
_HEAD_INPUTS: dict[str, list[str]] = {
 "gender":["mouth","eyes","forehead","hair_side","hair_low","hair_back","profile_head","profile_body","frame","hip","torso_r"],
 "age":["frame","forehead","cheeks","eyes","hair_top","hair_side","profile_head","profile_body"],
 "body_shape":["frame","profile_body","profile_head","waist","hip","thigh","torso_r","torso_ll"],
 "skin_tone":["cheeks","eyes","neck","mouth"],
 "pose":_ARMS+["profile_head","profile_body","frame"],
 "background":["background","frame"],
 "hair_exists":_HEAD+["frame"],"hair_color":["crown:colour","hair_top:colour","hair_side:colour","hair_low:colour","hair_back:colour"],
 "hair_length":_HEAD+["neck","frame"],
 "hat_exists":_HEAD[:5]+["profile_head","frame"],"hat_color":["crown:colour","brim:colour"],"hat_type":["crown","brim","hair_top","profile_head","frame"],
 "sunglasses_exists":["eyes","cheeks","forehead","frame"],
 "top_exists":_TORSO+_LOW+["frame"],"top_color":["torso_r:hist","torso_c:hist","torso_ll:hist"],
 "top_pattern":["torso_r","torso_c","torso_ll"],"sleeve_length":_TORSO+_ARMS+["profile_body","frame"],
 "dress_exists":_TORSO+_LOW+["frame"],"dress_color":["torso_r:hist","torso_ll:hist","hip:hist"],
 "dress_pattern":["torso_r","torso_ll","hip"],"dress_length":_LOW+["frame"],
 "skirt_exists":_LOW+["torso_r","frame"],"skirt_color":["hip:hist","thigh:hist"],"skirt_pattern":["hip","thigh"],"skirt_length":_LOW+["frame"],
 "pants_exists":_LOW+["torso_r","frame"],"pants_color":["hip:hist","thigh:hist"],"pants_pattern":["hip","thigh"],"pants_length":_LOW+["frame"],
 "belt_exists":["waist","belt_hi","belt_lo","buckle","hip","torso_r","torso_ll","frame"],
 "belt_color":["belt_hi:colour","belt_lo:colour","waist:colour","hip:colour","torso_r:colour"],
 "shoes_exists":["shin","feet","profile_body","frame"],"shoes_color":["feet:colour","shin:colour"],"shoes_type":["shin","feet","profile_body","frame"],
 "bag_exists":_ARMS+["scarf_end","scarf_mirror","torso_r","torso_ll","hip","frame"],
 "bag_color":["side_r:hist","arm_up_r:hist","raised_r:hist","side_l:hist","arm_up_l:hist","torso_r:hist","hip:hist"],
 "bag_type":_ARMS+["torso_r","torso_ll","hip","frame"],
 "scarf_exists":["neck","scarf_end","scarf_mirror","torso_r","torso_c","torso_l","torso_ll","frame"],
 "scarf_color":["neck:colour","scarf_end:colour","scarf_mirror:colour","torso_l:colour"],
 "scarf_pattern":["neck","scarf_end","scarf_mirror"],
 "background_color":["background"],"lighting":["frame","background"],"person_position":["frame"],
 "hat_pattern":["crown","brim"],"hair_bangs":["forehead","eyes","hair_top","crown","profile_head"],
 "hair_style":_HEAD+["neck"],"sunglasses_color":["eyes:colour","cheeks:colour"],
 "sunglasses_shape":["eyes","cheeks","forehead"],"expression":["mouth","cheeks"],"lipstick":["mouth"],
 "facial_hair":["mouth","cheeks","neck","profile_head"],"top_fit":_TORSO+["waist","profile_body","frame"],
 "top_length":["waist","belt_hi","belt_lo","torso_r","torso_c","hip","profile_body"],
 "dress_sleeve":_TORSO+_ARMS+["profile_body","frame"],"dress_fit":_LOW+["frame"],"skirt_shape":_LOW+["frame"],
 "pants_fit":_LOW+["frame"],"belt_width":["waist","belt_hi","belt_lo","buckle","hip"],"shoes_sole":["feet","shin"],
 "legs_exposed":["thigh","shin","hip","profile_body"],"stockings_exists":["thigh","shin","profile_body"],
 "stockings_color":["thigh:colour","shin:colour"],"arms_exposed":_ARMS+_TORSO+["profile_body"],
 "gloves_exists":_ARMS,"gloves_color":[f"{a}:colour" for a in _ARMS],
 "bag_pattern":_ARMS+["torso_r","torso_ll","hip"],"bag_size":_ARMS+["torso_r","torso_ll","hip","frame"],
 "scarf_length":["neck","scarf_end","scarf_mirror","torso_c","torso_l"],"neckline":["neck","torso_c","torso_l","torso_r"],
 "necklace_exists":["neck","torso_c","torso_l"],
}


class PersonRegionBackbone:
    """A fixed, weight-free, part-aware feature extractor for single-person images (deterministic).

    1. The image is resized to ``width`` x ``height`` and converted to Lab. Foreground: each row's
       background is estimated separately from the outer ``edge`` columns on the left and on the
       right (a picture frame or bush on one side does not spoil the other); a pixel is foreground
       when it is farther than ``fg_threshold`` from both.
    2. Person frame from pixels: the body axis (mean foreground column of the leg rows), the feet
       (last foreground row near the axis) and the head top (the foreground run through the torso
       followed upwards in a narrow band on the axis, so raised hands and clouds are skipped). The
       height fraction gives the head count (about 5 for a child, 7 for an adult), hence the head
       height and the anatomical landmarks (head centre, shoulders, waist, hip, knee, ankle).
    3. A per-pixel stack: foreground, soft colour-name memberships (19 Lab prototypes: the protocol's
       12 colours, three skin tones, four hair colours), Lab, gradient energies along x and y at
       one and two pixels (pattern statistics: stripes are vertical energy only, plaid both, dots
       both and weaker), L^2 (colour bimodality), skin likeness (chroma distance to the person's own
       skin, read in the cheeks) and garment likeness (distance to the hip garment colour).
    4. Part regions in the person frame (crown, brim, hair sides / back, eyes, cheeks, mouth,
       forehead, neck, torso strips, waist, belt bands and buckle, hip, thigh, shin, feet, the arm
       zones beside the body, the raised-hand zones above the shoulders, the scarf end and its
       mirror), each summarised by foreground share, colour-name histogram, mean Lab, gradient
       statistics, L spread, skin and garment share and the dominant name's share; vertical profiles
       (head and body bands: left / right extent, central run width, skin and garment share); the
       frame itself (height fraction, head height, axis offset); the background (border colour
       names per third, texture, horizon strength).

    Cost: about 5 ms per 320x640 image on one core.
    """

    kind = "person-parts"

    def __init__(self, width: int = 128, height: int = 256, sigma: float = 10.0, edge: float = 0.06,
                 fg_threshold: float = 16.0, kind: str = "person-parts"):
        if kind != self.kind:
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.width, self.height, self.sigma = int(width), int(height), float(sigma)
        self.edge, self.fg_threshold = float(edge), float(fg_threshold)
        self.k = _N_PROTO

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.width, "height": self.height, "sigma": self.sigma,
                "edge": self.edge, "fg_threshold": self.fg_threshold}

    @property
    def groups(self) -> dict[str, slice]:
        """Named feature groups (regions, profiles, frame, background) -> their slice of the vector."""
        out, i = {}, 0
        for name, *_ in _REGIONS:
            out[name] = slice(i, i + _REGION_DIM)
            i += _REGION_DIM
        for name, _, _, n, _ in _PROFILES:
            out[f"profile_{name}"] = slice(i, i + 5 * n)
            i += 5 * n
        out["frame"] = slice(i, i + 7)
        i += 7
        out["background"] = slice(i, i + 3 * (self.k + 3) + 2)
        return out

    @property
    def dim(self) -> int:
        return max(s.stop for s in self.groups.values())

    def columns(self, category: str) -> np.ndarray:
        """Indices of the features the head of ``category`` reads (see ``_HEAD_INPUTS``)."""
        spec = _HEAD_INPUTS.get(category)
        idx = np.arange(self.dim)
        if spec is None:
            return idx
        groups = self.groups
        out = []
        for g in spec:
            name, _, sub = g.partition(":")
            cols = idx[groups[name]]
            out.append(cols[1:13] if sub == "hist" else cols[1:1 + self.k + 3] if sub == "colour" else cols)
        return np.unique(np.concatenate(out))

    def _soft_hist(self, lab: np.ndarray) -> np.ndarray:
        lab = np.asarray(lab, np.float32)
        # |p - q|^2 = |p|^2 - 2 p.q + |q|^2, channel by channel (no BLAS thread pool per image)
        # lightness counts a quarter (shading near part borders darkens a colour, it does not change it)
        q = _PROTO_LAB * np.array([0.5, 1.0, 1.0], np.float32)
        lab = lab * np.array([0.5, 1.0, 1.0], np.float32)
        d2 = (q ** 2).sum(-1) - 2.0 * (lab[..., :1] * q[:, 0] + lab[..., 1:2] * q[:, 1] + lab[..., 2:3] * q[:, 2])
        d2 -= d2.min(-1, keepdims=True)
        w = np.exp(d2 * np.float32(-0.5 / self.sigma ** 2))
        return w / w.sum(-1, keepdims=True)

    def _rgb(self, img: Image.Image) -> tuple[np.ndarray, float]:
        """The working-size image with its exposure undone, and the gain that undid it.

        Auto-levels: the 99th percentile of the brightest channel is brought to 245 (gain 1 to 2), so a
        dim photo's garments keep their colour names; the gain itself is a feature (it says "dim")."""
        rgb = np.asarray(img.convert("RGB").resize((self.width, self.height), Image.BILINEAR), np.float32)
        gain = float(np.clip(245.0 / max(np.percentile(rgb.max(-1), 99), 1.0), 1.0, 2.0))
        return np.minimum(rgb * gain, 255.0), gain

    def _lab(self, img: Image.Image) -> np.ndarray:
        return _srgb_to_lab(self._rgb(img)[0])

    def _fg(self, lab: np.ndarray) -> np.ndarray:
        e = max(2, int(round(self.edge * self.width)))
        d = None
        for side in (lab[:, :e], lab[:, -e:]):
            bg = np.median(side, axis=1, keepdims=True)
            di = ((lab - bg) ** 2).sum(-1)
            d = di if d is None else np.minimum(d, di)
        return d > self.fg_threshold ** 2

    def foreground(self, img: Image.Image) -> np.ndarray:
        """Boolean ``[height, width]`` foreground estimate (see the class docstring)."""
        return self._fg(self._lab(img))

    def _frame(self, fg: np.ndarray) -> dict[str, float]:
        H, W = fg.shape
        # the legs' columns, over the whole width (people do not always stand in the middle)
        x0 = int(0.08 * W)
        legs = fg[int(0.72 * H):int(0.97 * H), x0:W - x0]
        cols = np.nonzero(legs)[1]
        cx = float(np.median(cols)) + x0 if len(cols) else W / 2
        ci = int(round(cx))
        wide = fg[:, max(0, ci - int(0.15 * W)):ci + int(0.15 * W) + 1].sum(1)
        rows = np.flatnonzero(wide >= 2)
        if len(rows) < 8:
            b, first = H - 1, 0
        else:
            b, first = int(rows[-1]), int(rows[0])
        band = fg[:, max(0, ci - int(0.05 * W)):ci + int(0.05 * W) + 1].sum(1) >= 2
        y = first + (b - first) // 2
        top, gap = y, 0
        while y > 0:
            y -= 1
            if band[y]:
                top, gap = y, 0
            else:
                gap += 1
                if gap > 2:
                    break
        ph = max(b - top + 1, 8)
        r = ph / H
        heads = float(np.clip(5.0 + 2.0 * (r - 0.635) / (0.83 - 0.635), 5.0, 7.0))
        h = ph / (1.23 + 0.955 * (heads - 1.0))
        body = (heads - 1.0) * h
        hip = top + h + 0.42 * body
        return {"cx": cx, "t": float(top), "b": float(b), "h": h, "r": r, "heads": heads,
                "hy": top + 0.5 * h, "sy": top + (1.2 if heads > 5.5 else 1.15) * h, "hip": hip,
                "waist": hip - 0.45 * h, "knee": top + h + 0.71 * body, "ankle": top + h + 0.955 * body}

    def _one(self, img: Image.Image) -> np.ndarray:
        rgb, gain = self._rgb(img)
        lab_full = _srgb_to_lab(rgb)
        fg_full = self._fg(lab_full)
        # gradient energies at full working resolution, inside the foreground only
        L = lab_full[..., 0] / 10.0
        inner = fg_full.copy()
        inner[:, 2:] &= fg_full[:, :-2]
        inner[2:] &= fg_full[:-2]
        grads = np.zeros(L.shape + (5,), np.float32)
        grads[:, 1:, 0] = np.abs(np.diff(L, axis=1))
        grads[1:, :, 1] = np.abs(np.diff(L, axis=0))
        grads[:, 2:, 2] = np.abs(L[:, 2:] - L[:, :-2])
        grads[2:, :, 3] = np.abs(L[2:] - L[:-2])
        grads[..., :4] *= inner[..., None]
        grads[..., 4] = inner

        # everything else on 2x2 cells (colour statistics do not need the full resolution)
        def pool(a: np.ndarray) -> np.ndarray:
            hh, ww = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            return a[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, *a.shape[2:]).mean(axis=(1, 3))

        lab = pool(lab_full)
        fgf = pool(fg_full.astype(np.float32))
        fg = fgf >= 0.5
        grads = pool(grads)
        H, W = lab.shape[:2]
        fr = self._frame(fg)
        h, cx = fr["h"], fr["cx"]
        hist = self._soft_hist(lab)

        def rect(y0, y1, x0, x1):
            """Pixel bounds of a region in frame units, clipped to the image (possibly empty)."""
            ya = min(max(int(round(fr[y0[0]] + y0[1] * h)), 0), H)
            yb = min(max(int(round(fr[y1[0]] + y1[1] * h)), 0), H)
            xa = min(max(int(round(cx + x0 * h)), 0), W)
            xb = min(max(int(round(cx + x1 * h)), 0), W)
            return ya, max(yb, ya), xa, max(xb, xa)

        # the person's own skin colour (cheeks) and garment colour (just below the hip)
        def ref_colour(box, pick):
            ya, yb, xa, xb = rect(*box)
            m = fg[ya:yb, xa:xb]
            px = lab[ya:yb, xa:xb][m]
            if len(px) == 0:
                return None
            if pick is not None:
                near = np.argmax(hist[ya:yb, xa:xb][m], -1)
                sel = np.isin(near, pick)
                if sel.sum() >= 3:
                    px = px[sel]
            return np.median(px, axis=0)

        skin = ref_colour((("hy", 0.06), ("hy", 0.28), -0.28, 0.28), [12, 13, 14])
        if skin is None:
            skin = _PROTO_LAB[13]
        garment = ref_colour((("hip", 0.15), ("hip", 0.45), -0.4, 0.4), None)
        if garment is None:
            garment = np.array([50.0, 0.0, 0.0], np.float32)
        dsk = (lab[..., 1] - skin[1]) ** 2 + (lab[..., 2] - skin[2]) ** 2 + 0.25 * (lab[..., 0] - skin[0]) ** 2
        dga = ((lab - garment) ** 2).sum(-1)
        innf = grads[..., 4]
        stack = np.empty((H, W, _N_CH), np.float32)
        stack[..., _CH_FG] = fgf
        stack[..., _CH_HIST:_CH_HIST + self.k] = hist * fgf[..., None]
        stack[..., _CH_LAB:_CH_LAB + 3] = lab * fgf[..., None]
        stack[..., _CH_GX:_CH_GY2 + 1] = grads[..., :4]
        Lh = lab[..., 0] / 10.0
        stack[..., _CH_L2] = Lh * Lh * fgf
        stack[..., _CH_SKIN] = (dsk < 15.0 ** 2) * fgf
        stack[..., _CH_GAR] = (dga < 14.0 ** 2) * fgf
        integ = np.zeros((H + 1, W + 1, _N_CH), np.float32)
        integ[1:, 1:] = stack.cumsum(0).cumsum(1)
        inner_integ = np.zeros((H + 1, W + 1), np.float32)
        inner_integ[1:, 1:] = innf.cumsum(0).cumsum(1)

        def total(ya, yb, xa, xb):
            return integ[yb, xb] - integ[ya, xb] - integ[yb, xa] + integ[ya, xa]

        def region(ya, yb, xa, xb):
            area = (yb - ya) * (xb - xa)
            out = np.zeros(_REGION_DIM, np.float32)
            if area <= 0:
                return out
            s = total(ya, yb, xa, xb)
            n = s[_CH_FG]
            out[0] = n / area
            if n < 1:
                return out
            ni = max(inner_integ[yb, xb] - inner_integ[ya, xb] - inner_integ[yb, xa] + inner_integ[ya, xa], 1.0)
            hh = s[_CH_HIST:_CH_HIST + self.k] / n
            out[1:1 + self.k] = hh
            mean_lab = s[_CH_LAB:_CH_LAB + 3] / n
            o = 1 + self.k
            out[o:o + 3] = mean_lab / np.array([100.0, 50.0, 50.0])
            out[o + 3:o + 7] = s[[_CH_GX, _CH_GY, _CH_GX2, _CH_GY2]] / ni
            out[o + 7] = np.sqrt(max(s[_CH_L2] / n - (mean_lab[0] / 10.0) ** 2, 0.0))
            out[o + 8] = s[_CH_SKIN] / n
            out[o + 9] = s[_CH_GAR] / n
            out[o + 10] = hh.max()
            return out

        feats = [region(*rect(y0, y1, x0, x1)) for _, y0, y1, x0, x1 in _REGIONS]
        # vertical profiles
        for _, y0, y1, n, half in _PROFILES:
            ya, yb, xa, xb = rect(y0, y1, -half, half)
            edges = np.linspace(ya, max(yb, ya + n), n + 1).round().astype(int).clip(0, H)
            prof = np.zeros((n, 5), np.float32)
            for j in range(n):
                r0, r1 = edges[j], max(edges[j + 1], edges[j] + 1)
                if r0 >= H:
                    continue
                r1 = min(r1, H)
                rows = fg[r0:r1]
                colp = rows.any(0)
                ci = int(np.clip(round(cx), 0, W - 1))
                xs = np.flatnonzero(colp)
                if len(xs):
                    prof[j, 0] = (ci - xs[0]) / h
                    prof[j, 1] = (xs[-1] - ci) / h
                # the contiguous run through the axis
                if colp[ci]:
                    lo = ci
                    while lo > 0 and colp[lo - 1]:
                        lo -= 1
                    hi = ci
                    while hi < W - 1 and colp[hi + 1]:
                        hi += 1
                    prof[j, 2] = (hi - lo + 1) / h
                s = total(r0, r1, xa, xb)
                nn = max(s[_CH_FG], 1.0)
                prof[j, 3] = s[_CH_SKIN] / nn
                prof[j, 4] = s[_CH_GAR] / nn
            feats.append(prof.ravel())
        feats.append(np.array([fr["r"], fr["heads"] / 7.0, h / H * 5.0, (cx - W / 2) / W, fr["t"] / H,
                               fg.mean(), gain - 1.0], np.float32))
        # background: border columns per third
        e = max(2, int(round(self.edge * W)))
        bgf = []
        for k in range(3):
            sl = slice(k * H // 3, (k + 1) * H // 3)
            border = np.concatenate([lab[sl, :e], lab[sl, -e:]], axis=1)
            bgf.append(self._soft_hist(border).reshape(-1, self.k).mean(0))
            bl = border[..., 0] / 10.0
            bgf.append(np.array([np.abs(np.diff(bl, axis=1)).mean(), np.abs(np.diff(bl, axis=0)).mean(),
                                 bl.std()], np.float32))
        rowmean = np.concatenate([lab[:, :e], lab[:, -e:]], axis=1).mean(1)
        step = np.sqrt((np.diff(rowmean, axis=0) ** 2).sum(-1))
        bgf.append(np.array([step.max() / 10.0, float(np.argmax(step)) / H], np.float32))
        feats.append(np.concatenate(bgf))
        return np.concatenate(feats).astype(np.float32)

    def __call__(self, images: Sequence[Image.Image | bytes], keys: Sequence[str] | None = None) -> np.ndarray:
        """Features of each image. Recently seen images come from a bounded cache, since every round
        measures the same I_e and refits on the images labelled before; the others are computed in
        parallel (:func:`map_in_workers`).

        The cache knows an image by ``keys[i]`` where given (a digest of its encoded bytes, such as the
        sha256 labels name it by: cheaper than hashing its pixels), else by a digest of its pixels.
        """
        config = json.dumps(self.config, sort_keys=True)
        if keys is None:
            images = [_as_image(img) for img in images]
            cache_keys: list[tuple] = [(config, img.size, hashlib.sha1(img.tobytes()).digest()) for img in images]
        elif len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        else:
            cache_keys = [(config, key) for key in keys]
        first_missing: dict[tuple, int] = {}
        for i, key in enumerate(cache_keys):
            if key not in _FEATURE_CACHE:
                first_missing.setdefault(key, i)
        rows = list(first_missing.values())
        computed = map_in_workers(lambda j: self._one(_as_image(images[rows[j]])), len(rows), min_per_worker=16)
        fresh = dict(zip(first_missing, computed))
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, key in enumerate(cache_keys):
            if key in fresh:
                out[i] = fresh[key]
            else:
                out[i] = _FEATURE_CACHE[key]
                _FEATURE_CACHE.move_to_end(key)
        _FEATURE_CACHE.update(fresh)
        while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
            _FEATURE_CACHE.popitem(last=False)
        return out


def _as_image(img: Image.Image | bytes) -> Image.Image:
    return decode_image(bytes(img)) if isinstance(img, (bytes, bytearray)) else img


_FEATURE_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_FEATURE_CACHE_SIZE = 8192  # about 40 MB of features


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


def _fit_head(x: np.ndarray, y: np.ndarray, n_classes: int, cols: np.ndarray, l2: float,
              prior: Head | None = None, prior_l2: float = 0.0, seed: int = 0, maxiter: int = 60) -> Head:
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
            start = [torch.randn(len(cols), HEAD_HIDDEN, generator=g) / np.sqrt(len(cols)),
                     torch.zeros(HEAD_HIDDEN), torch.randn(HEAD_HIDDEN, n_classes, generator=g) / np.sqrt(HEAD_HIDDEN),
                     torch.zeros(n_classes)]
        anchor = [t.clone() for t in start]
        params = [t.clone().requires_grad_(True) for t in start]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=maxiter, history_size=10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            w1, b1, w2, b2 = params
            logits = torch.nn.functional.gelu(xs @ w1 + b1) @ w2 + b2
            loss = (torch.nn.functional.cross_entropy(logits, ys, reduction="none") * weights).sum()
            loss = loss + l2 * ((w1 ** 2).sum() + (w2 ** 2).sum())
            if prior is not None and prior_l2 > 0:
                loss = loss + prior_l2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            loss.backward()
            return loss

        opt.step(closure)
        return Head(cols, *(p.detach().numpy() for p in params))


@dataclass(frozen=True)
class _HeadFit:
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


def _fit_heads(x: np.ndarray, fits: Sequence[_HeadFit], l2: float, prior_l2: float = 0.0) -> dict[str, Head]:
    """Every head of ``fits`` (by category), fitted on rows of ``x`` in parallel (:func:`map_in_workers`).

    A head's fit reads only its own inputs and starts from its prior or from a seed of its category's
    name, so the heads do not depend on the number of workers. The costliest fits go first, so the
    workers finish together.
    """
    _warm_up_fitting()
    by_cost = sorted(fits, key=lambda f: -len(f.rows) * len(f.cols))

    def fit(i: int) -> dict[str, np.ndarray]:
        f = by_cost[i]
        return _fit_head(x[f.rows], f.y, f.n_classes, f.cols, l2, prior=f.prior, prior_l2=prior_l2,
                         seed=_name_seed(f.category)).arrays()

    fitted = dict(zip((f.category for f in by_cost), map_in_workers(fit, len(by_cost))))
    return {f.category: Head(**fitted[f.category]) for f in fits}


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
    """Fixed backbone + one small MLP head per category. Immutable; see the module docstring.

    ``finetune`` retrains the heads of the labelled categories only (L-BFGS on the human labels, from
    the previous head with a weak L2 pull towards it, so a few labels do not erase what was known),
    keeps the other heads, and returns a new annotator whose version names its parent and round.
    """

    kind = "probe"

    def __init__(self, heads: Mapping[str, Head], mean: np.ndarray, std: np.ndarray,
                 backbone_config: Mapping[str, Any] | None = None, lineage: Sequence[str] = (),
                 round: int = 0, protocol: Protocol | None = None, l2: float = 1e-2,
                 prior_l2: float = 1e-3):
        self.protocol = protocol or load_protocol()
        self.backbone = PersonRegionBackbone(**(backbone_config or {}))
        self._heads = dict(heads)
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
            h.update(self._heads[name].cols.tobytes())
            h.update(self._heads[name].params.tobytes())
        self._digest = h.hexdigest()[:10]

    # -- identity ---------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"probe-r{self.round}-{self._digest}"

    @property
    def heads(self) -> Mapping[str, np.ndarray]:
        """Each category's head parameters, flattened (read-only)."""
        return {k: h.params for k, h in self._heads.items()}

    def __repr__(self) -> str:
        return f"ProbeAnnotator(version={self.version!r}, heads={len(self._heads)})"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def train(cls, images: Sequence[Image.Image | bytes], labels: Sequence[Mapping[str, str]],
              protocol: Protocol | None = None, backbone_config: Mapping[str, Any] | None = None,
              l2: float = 1e-2, prior_l2: float = 1e-3) -> ProbeAnnotator:
        """Round 0 from scratch: features of ``images``; ``labels[i]`` answers some categories of image i."""
        protocol = protocol or load_protocol()
        backbone = PersonRegionBackbone(**(backbone_config or {}))
        feats = backbone(list(images))
        mean = feats.mean(0)
        std = feats.std(0) + 1e-3
        x = (feats - mean) / std
        fits = []
        for cat in protocol.categories:
            idx = [i for i, lab in enumerate(labels) if cat.name in lab]
            if idx:
                y = np.array([cat.answers.index(labels[i][cat.name]) for i in idx])
                fits.append(_HeadFit(cat.name, np.array(idx), y, len(cat.answers), backbone.columns(cat.name)))
        heads = _fit_heads(x, fits, l2)
        return cls(heads, mean, std, backbone.config, lineage=(), round=0, protocol=protocol,
                   l2=l2, prior_l2=prior_l2)

    @classmethod
    def pretrained(cls, images: Sequence[Image.Image | bytes], true_attributes: Sequence[Mapping[str, str]],
                   seed: int = 0, profile: Mapping[str, float] | None = None,
                   protocol: Protocol | None = None, **kwargs: Any) -> ProbeAnnotator:
        """Round 0, simulating a generic pretrained VLM: trained on :func:`simulate_pretraining_labels`."""
        noisy = simulate_pretraining_labels(true_attributes, seed=seed, profile=profile, protocol=protocol)
        return cls.train(images, noisy, protocol=protocol, **kwargs)

    # -- inference --------------------------------------------------------------------------------
    def features(self, images: Sequence[Image.Image | bytes], keys: Sequence[str] | None = None) -> np.ndarray:
        """Standardised backbone features; ``keys`` as for :meth:`PersonRegionBackbone.__call__`."""
        return (self.backbone(list(images), keys) - self._mean) / self._std

    def predict_proba(self, images: Sequence[Image.Image | bytes], category: str) -> np.ndarray:
        return self._proba(self.features(images), category)

    def _proba(self, x: np.ndarray, category: str) -> np.ndarray:
        z = self._heads[category].logits(x)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
                ) -> list[dict[str, str]]:
        categories = [c.name for c in self.protocol.categories] if categories is None else list(categories)
        if not len(images):
            return []
        x = self.features(images)
        needed = self.protocol.with_parents(categories)
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
                 images: Mapping[str, Image.Image | bytes], round: int | None = None) -> ProbeAnnotator:
        """New annotator whose heads for the labelled categories are retrained on ``labels``.

        ``images`` maps every label's ``image_sha256`` to the image (or its bytes). Several labels for
        the same (image, category) are all used (disagreeing humans become soft targets).
        """
        if not labels:
            return self
        by_name = self.protocol.by_name
        shas, row = labelled_image_rows(labels, images)
        x = self.features([images[s] for s in shas], keys=shas)
        new_heads = dict(self._heads)
        by_cat: dict[str, list[LabelRecord]] = {}
        for lab in labels:
            if lab.category not in by_name:
                raise KeyError(f"label for unknown category {lab.category!r}")
            if lab.answer not in by_name[lab.category].answers:
                raise ValueError(f"{lab.category}={lab.answer!r} is not in its vocabulary")
            by_cat.setdefault(lab.category, []).append(lab)
        fits = [_HeadFit(name, np.array([row[lab.image_sha256] for lab in labs]),
                         np.array([by_name[name].answers.index(lab.answer) for lab in labs]),
                         len(by_name[name].answers), self.backbone.columns(name), self._heads.get(name))
                for name, labs in sorted(by_cat.items())]
        new_heads.update(_fit_heads(x, fits, self.l2, self.prior_l2))
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
        arrays.update({f"head/{k}/{part}": a for k, h in self._heads.items() for part, a in h.arrays().items()})
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
    def load(cls, src: str | Path | bytes, protocol: Protocol | None = None) -> ProbeAnnotator:
        data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            npz = np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False)
            arrays = {k: npz[k] for k in npz.files}
        if meta.get("kind") != cls.kind:
            raise ValueError(f"not a probe annotator: kind={meta.get('kind')!r}")
        parts: dict[str, dict[str, np.ndarray]] = {}
        for k, v in arrays.items():
            if k.startswith("head/"):
                _, name, part = k.split("/")
                parts.setdefault(name, {})[part] = v
        heads = {name: Head(**p) for name, p in parts.items()}
        ann = cls(heads, arrays["mean"], arrays["std"], meta["backbone"], lineage=meta["lineage"],
                  round=meta["round"], protocol=protocol, l2=meta["l2"], prior_l2=meta["prior_l2"])
        if ann.version != meta["version"]:
            raise ValueError(f"corrupt annotator: version {ann.version} != recorded {meta['version']}")
        return ann


def load_annotator(src: str | Path | bytes, protocol: Protocol | None = None) -> Annotator:
    """Load any saved annotator (dispatches on the ``kind`` recorded by ``save``). A VLM annotator loads
    onto the base model its record names (a local path or a staged hub id)."""
    data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        kind = json.loads(zf.read("meta.json")).get("kind")
    if kind == "vlm":
        from cosmicman.annotation.vlm import VLMAnnotator  # transformers + peft: heavy, only when needed

        return VLMAnnotator.load(data, protocol=protocol)
    return ProbeAnnotator.load(data, protocol=protocol)


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
                 source: Literal["oracle", "human", "implied"] = "oracle"):
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
def implied_labels(asked: Mapping[str, Sequence[str]], labels: Sequence[LabelRecord], round: int,
                   protocol: Protocol | None = None) -> list[LabelRecord]:
    """Labels of parent categories that the humans' answers to detail questions imply, at no cost.

    ``asked`` maps each image to the categories asked about it. A detail answered means its parents
    hold (the labelling UI shows a garment's colour only once the garment exists); a detail left
    unanswered means its one yes/no parent is "no" (unanswered details are those that do not apply).
    Parents the humans answered themselves are left to them. Implied labels have ``source="implied"``.
    """
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    answered: dict[str, dict[str, LabelRecord]] = {}
    for lab in labels:
        answered.setdefault(lab.image_sha256, {})[lab.category] = lab
    out: list[LabelRecord] = []
    for sha, cats in asked.items():
        got = answered.get(sha, {})
        implied: dict[str, str] = {}
        for name in cats:
            requires = by_name[name].requires
            if name in got:
                implied.update(requires)
            elif len(requires) == 1:
                (parent, value), = requires.items()
                if by_name[parent].answers == ("yes", "no") and value == "yes":
                    implied.setdefault(parent, "no")
        out += [LabelRecord(sha, k, v, "implied", round) for k, v in sorted(implied.items()) if k not in got]
    return out


def merge_human_answers(predicted: Mapping[str, str], human: Mapping[str, str],
                        protocol: Protocol | None = None) -> dict[str, str]:
    """An image's final answers: the humans' answers over the annotator's, kept consistent.

    A human who answered a detail (a hat's colour) saw its parent hold (the labelling UI shows the detail
    only then), so the parent answers it requires are implied; answers whose requirements then fail
    (the annotator's hat colour when a human said there is no hat) are dropped.
    """
    protocol = protocol or load_protocol()
    by_name = protocol.by_name
    merged = dict(predicted)
    stack = list(human.items())
    while stack:
        name, value = stack.pop()
        merged[name] = value
        stack.extend((k, v) for k, v in by_name[name].requires.items() if k not in human)
    out: dict[str, str] = {}
    for cat in protocol.categories:  # parents before children
        if cat.name in merged and cat.applies(out):
            out[cat.name] = merged[cat.name]
    return out


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
    # which categories apply depends only on the answers to the categories others require
    parents = sorted({name for cat in protocol.categories for name in cat.requires})
    applicable_by_parents: dict[tuple, int] = {}
    total = 0
    for item in pool_items:
        if item.attributes is None:
            total += len(protocol.categories)
            continue
        key = tuple(item.attributes.get(name) for name in parents)
        if key not in applicable_by_parents:
            applicable_by_parents[key] = len(protocol.applicable(item.attributes))
        total += applicable_by_parents[key]
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
                   prior_images: Mapping[str, Image.Image] | None = None,
                   already_asked: Iterable[str] = (),
                   accuracy_before: Mapping[str, float] | None = None
                   ) -> tuple[Annotator, HitlRoundResult, list[LabelRecord]]:
    """One Annotate Anyone round; returns ``(new_annotator, result, labels)`` (the humans' labels, then
    the parent labels they imply; only the humans' count as labels asked).

    Measure on I_e; send the categories under ``threshold`` to the oracle for a sample I_r of
    ``sample_size`` pool images (none of the pool ids in ``already_asked``); fine-tune on those labels
    (plus ``prior_labels`` of the same categories from earlier rounds, whose images are in
    ``prior_images`` by sha256); measure again.
    With no category under the threshold nothing is asked and the annotator is returned unchanged.
    Only the sampled pool items are decoded (or rendered, for :meth:`AnnotationItem.lazy` items).
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
    by_id = {it.pool_id: it for it in pool_items}
    asked = set(already_asked)
    sampled = select_round_sample([p for p in by_id if p not in asked], sample_size, seed=seed + rnd)
    sampled_items = [by_id[s] for s in sampled]
    materialize(sampled_items)
    labels = oracle.label(sampled_items, sent, round=rnd)
    implied = implied_labels({it.image_sha256: sent for it in sampled_items}, labels, rnd, protocol)
    trained = set(sent) | {lab.category for lab in implied}
    train = [lab for lab in prior_labels if lab.category in trained] + labels + implied
    images = {**(prior_images or {}), **{it.image_sha256: it.image for it in sampled_items}}
    new = annotator.finetune(train, images)
    acc_after = per_category_accuracy(new, eval_items, protocol=protocol)
    res = HitlRoundResult(rnd, annotator.version, new.version, acc_before, acc_after, tuple(sent),
                          tuple(sampled), len(labels), full, threshold)
    return new, res, labels + implied


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
    images: dict[str, Image.Image] = {}
    by_pool_id = {it.pool_id: it for it in pool_items}
    acc = None
    reason = "max rounds"
    for _ in range(max_rounds):
        new, res, labels = run_hitl_round(annotator, eval_items, pool_items, oracle, threshold,
                                          sample_size, seed, protocol=protocol, prior_labels=all_labels,
                                          prior_images=images, accuracy_before=acc,
                                          already_asked=[p for h in history for p in h.sampled_ids])
        history.append(res)
        stop, why = should_stop(history, min_gain)
        if why != "no gain":
            annotator, acc = new, res.accuracy_after
            all_labels.extend(labels)
            images.update({by_pool_id[p].image_sha256: by_pool_id[p].image for p in res.sampled_ids})
        if stop:
            reason = why
            break
    return annotator, history, reason
