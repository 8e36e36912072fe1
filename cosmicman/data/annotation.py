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
  silhouette profiles, background statistics) plus one part-aware, class-balanced softmax-regression
  head per category (each head reads only the feature groups of its part, ``_HEAD_INPUTS``). Its round 0 (:meth:`ProbeAnnotator.pretrained`) is
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
        out["frame"] = slice(i, i + 6)
        i += 6
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

    def _lab(self, img: Image.Image) -> np.ndarray:
        return _srgb_to_lab(np.asarray(img.convert("RGB").resize((self.width, self.height), Image.BILINEAR)))

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
        legs = fg[int(0.72 * H):int(0.97 * H), int(0.25 * W):int(0.75 * W)]
        cols = np.nonzero(legs)[1]
        cx = float(cols.mean()) + int(0.25 * W) if len(cols) else W / 2
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
        lab_full = self._lab(img)
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
                               fg.mean()], np.float32))
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


def _fit_head(x: np.ndarray, y: np.ndarray, n_classes: int, cols: np.ndarray, l2: float,
              prior: np.ndarray | None = None, prior_l2: float = 0.0) -> np.ndarray:
    """A part-aware head: softmax regression on the feature columns ``cols``, stored as a full
    ``[D+1, C]`` matrix whose other rows are zero (so inference and persistence stay uniform)."""
    rows = np.append(cols, x.shape[1])
    sub_prior = None if prior is None else prior[rows]
    # class-balanced weights (a rare "yes" must not be drowned by "no": its children depend on it)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sw = 1.0 / np.sqrt(np.maximum(counts[y], 1.0))
    w = _fit_softmax(x[:, cols], y, n_classes, l2, w0=sub_prior, prior=sub_prior,
                     prior_l2=prior_l2 if prior is not None else 0.0, sample_weight=sw)
    full = np.zeros((x.shape[1] + 1, n_classes), dtype=np.float32)
    full[rows] = w
    return full


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
            heads[cat.name] = _fit_head(x[idx], y, len(cat.answers), backbone.columns(cat.name), l2)
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
            new_heads[name] = _fit_head(x[idx], y, len(cat.answers), self.backbone.columns(name), self.l2,
                                        prior=prior, prior_l2=self.prior_l2)
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
