"""The probe annotator's fixed, weight-free vision backbone (:class:`PersonRegionBackbone`): the person and
its anatomical landmarks located from pixels, part regions with colour-name histograms, Lab, pattern /
gradient, skin and garment statistics, vertical silhouette profiles, background statistics."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cosmicman.core.imageio import decode_image
from cosmicman.core.workers import map_in_workers

# Colour-name prototypes (sRGB): the protocol's 12 garment colours, three skin tones, the hair colours
# that are not already garment colours (blonde, auburn, hair brown, silver).
_PROTOTYPES = {
    "black": (25, 25, 28),
    "white": (242, 242, 240),
    "gray": (128, 128, 128),
    "red": (200, 30, 35),
    "orange": (240, 140, 30),
    "yellow": (240, 215, 40),
    "green": (45, 150, 60),
    "blue": (40, 75, 200),
    "purple": (125, 50, 160),
    "pink": (240, 150, 190),
    "brown": (115, 70, 35),
    "beige": (220, 200, 160),
    "skin_light": (240, 205, 180),
    "skin_medium": (198, 146, 106),
    "skin_dark": (134, 90, 62),
    "blonde": (225, 195, 115),
    "auburn": (168, 58, 24),
    "hair_brown": (92, 56, 30),
    "silver": (168, 168, 166),
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
_HEAD = [
    "crown",
    "brim",
    "hair_top",
    "hair_side",
    "hair_low",
    "hair_back",
    "eyes",
    "cheeks",
    "mouth",
    "forehead",
    "profile_head",
]
_TORSO = ["neck", "torso_r", "torso_c", "torso_l", "torso_ll"]
_ARMS = ["arm_up_r", "arm_up_l", "side_r", "side_l", "raised_r", "raised_l"]
_LOW = ["waist", "belt_hi", "belt_lo", "buckle", "hip", "thigh", "shin", "feet", "profile_body"]
_HEAD_INPUTS: dict[str, list[str]] = {
    "gender": [
        "mouth",
        "eyes",
        "forehead",
        "hair_side",
        "hair_low",
        "hair_back",
        "profile_head",
        "profile_body",
        "frame",
        "hip",
        "torso_r",
    ],
    "age": ["frame", "forehead", "cheeks", "eyes", "hair_top", "hair_side", "profile_head", "profile_body"],
    "body_shape": ["frame", "profile_body", "profile_head", "waist", "hip", "thigh", "torso_r", "torso_ll"],
    "skin_tone": ["cheeks", "eyes", "neck", "mouth"],
    "pose": _ARMS + ["profile_head", "profile_body", "frame"],
    "background": ["background", "frame"],
    "hair_exists": _HEAD + ["frame"],
    "hair_color": ["crown:colour", "hair_top:colour", "hair_side:colour", "hair_low:colour", "hair_back:colour"],
    "hair_length": _HEAD + ["neck", "frame"],
    "hat_exists": _HEAD[:5] + ["profile_head", "frame"],
    "hat_color": ["crown:colour", "brim:colour"],
    "hat_type": ["crown", "brim", "hair_top", "profile_head", "frame"],
    "sunglasses_exists": ["eyes", "cheeks", "forehead", "frame"],
    "top_exists": _TORSO + _LOW + ["frame"],
    "top_color": ["torso_r:hist", "torso_c:hist", "torso_ll:hist"],
    "top_pattern": ["torso_r", "torso_c", "torso_ll"],
    "sleeve_length": _TORSO + _ARMS + ["profile_body", "frame"],
    "dress_exists": _TORSO + _LOW + ["frame"],
    "dress_color": ["torso_r:hist", "torso_ll:hist", "hip:hist"],
    "dress_pattern": ["torso_r", "torso_ll", "hip"],
    "dress_length": _LOW + ["frame"],
    "skirt_exists": _LOW + ["torso_r", "frame"],
    "skirt_color": ["hip:hist", "thigh:hist"],
    "skirt_pattern": ["hip", "thigh"],
    "skirt_length": _LOW + ["frame"],
    "pants_exists": _LOW + ["torso_r", "frame"],
    "pants_color": ["hip:hist", "thigh:hist"],
    "pants_pattern": ["hip", "thigh"],
    "pants_length": _LOW + ["frame"],
    "belt_exists": ["waist", "belt_hi", "belt_lo", "buckle", "hip", "torso_r", "torso_ll", "frame"],
    "belt_color": ["belt_hi:colour", "belt_lo:colour", "waist:colour", "hip:colour", "torso_r:colour"],
    "shoes_exists": ["shin", "feet", "profile_body", "frame"],
    "shoes_color": ["feet:colour", "shin:colour"],
    "shoes_type": ["shin", "feet", "profile_body", "frame"],
    "bag_exists": _ARMS + ["scarf_end", "scarf_mirror", "torso_r", "torso_ll", "hip", "frame"],
    "bag_color": [
        "side_r:hist",
        "arm_up_r:hist",
        "raised_r:hist",
        "side_l:hist",
        "arm_up_l:hist",
        "torso_r:hist",
        "hip:hist",
    ],
    "bag_type": _ARMS + ["torso_r", "torso_ll", "hip", "frame"],
    "scarf_exists": ["neck", "scarf_end", "scarf_mirror", "torso_r", "torso_c", "torso_l", "torso_ll", "frame"],
    "scarf_color": ["neck:colour", "scarf_end:colour", "scarf_mirror:colour", "torso_l:colour"],
    "scarf_pattern": ["neck", "scarf_end", "scarf_mirror"],
    "background_color": ["background"],
    "lighting": ["frame", "background"],
    "person_position": ["frame"],
    "hat_pattern": ["crown", "brim"],
    "hair_bangs": ["forehead", "eyes", "hair_top", "crown", "profile_head"],
    "hair_style": _HEAD + ["neck"],
    "sunglasses_color": ["eyes:colour", "cheeks:colour"],
    "sunglasses_shape": ["eyes", "cheeks", "forehead"],
    "expression": ["mouth", "cheeks"],
    "lipstick": ["mouth"],
    "facial_hair": ["mouth", "cheeks", "neck", "profile_head"],
    "top_fit": _TORSO + ["waist", "profile_body", "frame"],
    "top_length": ["waist", "belt_hi", "belt_lo", "torso_r", "torso_c", "hip", "profile_body"],
    "dress_sleeve": _TORSO + _ARMS + ["profile_body", "frame"],
    "dress_fit": _LOW + ["frame"],
    "skirt_shape": _LOW + ["frame"],
    "pants_fit": _LOW + ["frame"],
    "belt_width": ["waist", "belt_hi", "belt_lo", "buckle", "hip"],
    "shoes_sole": ["feet", "shin"],
    "legs_exposed": ["thigh", "shin", "hip", "profile_body"],
    "stockings_exists": ["thigh", "shin", "profile_body"],
    "stockings_color": ["thigh:colour", "shin:colour"],
    "arms_exposed": _ARMS + _TORSO + ["profile_body"],
    "gloves_exists": _ARMS,
    "gloves_color": [f"{a}:colour" for a in _ARMS],
    "bag_pattern": _ARMS + ["torso_r", "torso_ll", "hip"],
    "bag_size": _ARMS + ["torso_r", "torso_ll", "hip", "frame"],
    "scarf_length": ["neck", "scarf_end", "scarf_mirror", "torso_c", "torso_l"],
    "neckline": ["neck", "torso_c", "torso_l", "torso_r"],
    "necklace_exists": ["neck", "torso_c", "torso_l"],
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

    def __init__(
        self,
        width: int = 128,
        height: int = 256,
        sigma: float = 10.0,
        edge: float = 0.06,
        fg_threshold: float = 16.0,
        kind: str = "person-parts",
    ):
        if kind != self.kind:
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.width, self.height, self.sigma = int(width), int(height), float(sigma)
        self.edge, self.fg_threshold = float(edge), float(fg_threshold)
        self.k = _N_PROTO

    @property
    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "sigma": self.sigma,
            "edge": self.edge,
            "fg_threshold": self.fg_threshold,
        }

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
            out.append(cols[1:13] if sub == "hist" else cols[1 : 1 + self.k + 3] if sub == "colour" else cols)
        return np.unique(np.concatenate(out))

    def _soft_hist(self, lab: np.ndarray) -> np.ndarray:
        lab = np.asarray(lab, np.float32)
        # |p - q|^2 = |p|^2 - 2 p.q + |q|^2, channel by channel (no BLAS thread pool per image)
        # lightness counts a quarter (shading near part borders darkens a colour, it does not change it)
        q = _PROTO_LAB * np.array([0.5, 1.0, 1.0], np.float32)
        lab = lab * np.array([0.5, 1.0, 1.0], np.float32)
        d2 = (q**2).sum(-1) - 2.0 * (lab[..., :1] * q[:, 0] + lab[..., 1:2] * q[:, 1] + lab[..., 2:3] * q[:, 2])
        d2 -= d2.min(-1, keepdims=True)
        w = np.exp(d2 * np.float32(-0.5 / self.sigma**2))
        return w / w.sum(-1, keepdims=True)

    def _rgb(self, img: Image.Image) -> tuple[np.ndarray, float]:
        """The working-size image with its exposure undone, and the gain that undid it.

        Auto-levels: the 99th percentile of the brightest channel is brought to 245 (gain 1 to 2), so a
        dim photo's garments keep their colour names; the gain itself is a feature (it says "dim")."""
        rgb = np.asarray(img.convert("RGB").resize((self.width, self.height), Image.Resampling.BILINEAR), np.float32)
        gain = float(np.clip(245.0 / max(np.percentile(rgb.max(-1), 99), 1.0), 1.0, 2.0))
        return np.minimum(rgb * gain, 255.0), gain

    def _lab(self, img: Image.Image) -> np.ndarray:
        return _srgb_to_lab(self._rgb(img)[0])

    def _fg(self, lab: np.ndarray) -> np.ndarray:
        e = max(2, int(round(self.edge * self.width)))
        left, right = (
            ((lab - np.median(side, axis=1, keepdims=True)) ** 2).sum(-1) for side in (lab[:, :e], lab[:, -e:])
        )
        return np.asarray(np.minimum(left, right) > self.fg_threshold**2)

    def foreground(self, img: Image.Image) -> np.ndarray:
        """Boolean ``[height, width]`` foreground estimate (see the class docstring)."""
        return self._fg(self._lab(img))

    def _frame(self, fg: np.ndarray) -> dict[str, float]:
        H, W = fg.shape
        # the legs' columns, over the whole width (people do not always stand in the middle)
        x0 = int(0.08 * W)
        legs = fg[int(0.72 * H) : int(0.97 * H), x0 : W - x0]
        cols = np.nonzero(legs)[1]
        cx = float(np.median(cols)) + x0 if len(cols) else W / 2
        ci = int(round(cx))
        wide = fg[:, max(0, ci - int(0.15 * W)) : ci + int(0.15 * W) + 1].sum(1)
        rows = np.flatnonzero(wide >= 2)
        if len(rows) < 8:
            b, first = H - 1, 0
        else:
            b, first = int(rows[-1]), int(rows[0])
        band = fg[:, max(0, ci - int(0.05 * W)) : ci + int(0.05 * W) + 1].sum(1) >= 2
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
        return {
            "cx": cx,
            "t": float(top),
            "b": float(b),
            "h": h,
            "r": r,
            "heads": heads,
            "hy": top + 0.5 * h,
            "sy": top + (1.2 if heads > 5.5 else 1.15) * h,
            "hip": hip,
            "waist": hip - 0.45 * h,
            "knee": top + h + 0.71 * body,
            "ankle": top + h + 0.955 * body,
        }

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
        stack[..., _CH_HIST : _CH_HIST + self.k] = hist * fgf[..., None]
        stack[..., _CH_LAB : _CH_LAB + 3] = lab * fgf[..., None]
        stack[..., _CH_GX : _CH_GY2 + 1] = grads[..., :4]
        Lh = lab[..., 0] / 10.0
        stack[..., _CH_L2] = Lh * Lh * fgf
        stack[..., _CH_SKIN] = (dsk < 15.0**2) * fgf
        stack[..., _CH_GAR] = (dga < 14.0**2) * fgf
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
            hh = s[_CH_HIST : _CH_HIST + self.k] / n
            out[1 : 1 + self.k] = hh
            mean_lab = s[_CH_LAB : _CH_LAB + 3] / n
            o = 1 + self.k
            out[o : o + 3] = mean_lab / np.array([100.0, 50.0, 50.0])
            out[o + 3 : o + 7] = s[[_CH_GX, _CH_GY, _CH_GX2, _CH_GY2]] / ni
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
                colp = np.asarray(rows.any(0))
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
        feats.append(
            np.array(
                [fr["r"], fr["heads"] / 7.0, h / H * 5.0, (cx - W / 2) / W, fr["t"] / H, fg.mean(), gain - 1.0],
                np.float32,
            )
        )
        # background: border columns per third
        e = max(2, int(round(self.edge * W)))
        bgf = []
        for k in range(3):
            sl = slice(k * H // 3, (k + 1) * H // 3)
            border = np.concatenate([lab[sl, :e], lab[sl, -e:]], axis=1)
            bgf.append(self._soft_hist(border).reshape(-1, self.k).mean(0))
            bl = border[..., 0] / 10.0
            bgf.append(
                np.array([np.abs(np.diff(bl, axis=1)).mean(), np.abs(np.diff(bl, axis=0)).mean(), bl.std()], np.float32)
            )
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
            decoded = [_as_image(img) for img in images]
            images = decoded
            cache_keys: list[tuple] = [(config, img.size, hashlib.sha1(img.tobytes()).digest()) for img in decoded]
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
