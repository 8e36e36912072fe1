"""The synthetic human world: a deterministic renderer of people with exact ground truth.

Every sample is a pure function of ``(seed, index)`` (and the requested case): the image bytes, the
ATR parsing mask of the main person, the protocol attributes, the person / face boxes and keypoints.
The world also renders the cases the filter chain must reject, each built so that the chain's pixel
detectors reject it for exactly that reason (see ``cosmicman.filtering.filters`` for the chain order):

========== ===================================================================================
case       how it is rendered
========== ===================================================================================
kept       one photographic person (shading, sensor noise, slight optical blur), full size
corrupt    undecodable bytes: a truncated JPEG, random bytes or an empty file
too_small  a valid photographic person image, rendered on a canvas below the size rule
fake_person a flat cartoon person: flat colours, black outlines, no shading / noise / blur
low_quality a photographic person, then heavy blur and / or severe under- or over-exposure
no_person  a photographic scene (plain / indoor / outdoor) without anyone in it
many_people 2-3 photographic people side by side
small_face one photographic person drawn small (face side well below the face threshold)
========== ===================================================================================

Conventions: ATR label ids follow ``protocol.yaml`` (Background 0 ... Scarf 17). "Left" is the
person's left, which is the image's right for a person facing the camera (x larger than the body
centre). Keypoints use the same convention; ``person_position`` is the viewer's (image) left / right.
The mask is the exact per-pixel label of what was drawn: the image and the mask are painted from the
same rasterised regions (no anti-aliasing); the camera blur / noise applied afterwards changes pixels,
not labels. ATR has no class for exposed torso skin or jewellery: the neck, a neckline's skin, a bare
midriff, a necklace and facial hair are Face; gloves are arm labels, stockings leg labels.

Every protocol category the world answers is in the pixels: ``random_attributes`` answers exactly the
applicable categories, and ``draw_person`` / ``render`` draw each answer (``lighting`` scales the
whole image, ``person_position`` moves the person, ``legs_exposed`` / ``arms_exposed`` follow the
garments that are drawn). A person standing by the frame's edge may have a raised hand out of frame.

Filters look at pixels, never at this truth; it is only for tests, the simulated annotation oracle
and the evaluation set.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.core.imageio import encode_jpeg
from cosmicman.core.protocol import load_protocol

CASES = ("kept", "corrupt", "too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face")
NEGATIVE_CASES = CASES[1:]
KEYPOINT_NAMES = (
    "head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# ATR label ids (index in protocol.yaml ``parts``).
BG, HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT, LSHOE, RSHOE, FACE, LLEG, RLEG, LARM, RARM, BAG, SCARF = range(18)

# Clearly distinct RGB per protocol colour name.
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32), "white": (238, 238, 232), "gray": (128, 128, 128), "red": (200, 28, 36),
    "orange": (242, 132, 24), "yellow": (240, 214, 40), "green": (36, 146, 60), "blue": (30, 72, 196),
    "purple": (118, 48, 160), "pink": (240, 150, 190), "brown": (112, 70, 36), "beige": (218, 198, 158),
}
HAIR_COLORS = {"black": (24, 20, 20), "brown": (92, 56, 30), "blonde": (226, 194, 116), "red": (168, 58, 24),
               "gray": (168, 168, 166)}
SKIN_TONES = {"light": (240, 204, 178), "medium": (200, 148, 108), "dark": (134, 90, 62)}
# Plain studio backdrops by protocol colour name (muted, so that the exposure rule still holds when dim).
BACKDROPS = {"white": (222, 222, 218), "gray": (150, 152, 156), "beige": (212, 196, 168), "blue": (130, 164, 214),
             "green": (150, 196, 150), "pink": (232, 178, 198), "yellow": (236, 214, 110), "purple": (180, 156, 208)}
STOCKINGS = {"black": (34, 32, 36), "white": (236, 234, 228), "red": (178, 30, 40)}
SOLES = {"light": (236, 236, 232), "dark": (46, 42, 40)}
SUNGLASSES_TINTS = {"black": (20, 22, 26), "brown": (90, 50, 18), "blue": (22, 40, 120)}
LIPSTICK = (192, 30, 56)
NECKLACE = (224, 186, 72)
# Image brightness per ``lighting`` answer: the range a factor is drawn from.
LIGHTING = {"bright": (0.98, 1.04), "dim": (0.62, 0.7)}
# Horizontal placement per ``person_position`` answer (viewer's left / right): centre as a fraction of the width.
POSITIONS = {"left": 0.36, "center": 0.5, "right": 0.64}
PLAIN_BACKGROUNDS = ((176, 196, 214), (214, 206, 186), (190, 214, 196), (200, 190, 210), (160, 168, 176),
                     (226, 218, 200), (150, 176, 190))
WALLS = ((222, 214, 196), (196, 206, 214), (214, 198, 186), (206, 214, 196), (184, 184, 190))
FLOORS = ((132, 96, 64), (150, 144, 136), (108, 84, 66), (170, 150, 120))
GROUNDS = ((88, 140, 70), (140, 138, 132), (176, 160, 120), (74, 118, 62))

# Proportions per age: (head heights per body, person height as a fraction of the canvas height,
# shoulder half-width in head heights).
AGE_BODY = {"child": (5.0, 0.63, 0.8), "adult": (7.0, 0.84, 1.0), "elderly": (6.9, 0.81, 0.97)}
BODY_SHAPE = {"slim": 0.84, "average": 1.0, "heavy": 1.3}


@dataclass
class SyntheticSample:
    sample_id: str
    case: str
    image_bytes: bytes
    width: int
    height: int
    mask: np.ndarray | None
    attributes: dict[str, str] | None
    bbox: tuple[int, int, int, int] | None
    face_bbox: tuple[int, int, int, int] | None
    keypoints: dict[str, tuple[int, int]] | None
    n_people: int
    person_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # every person, main first


@dataclass
class PersonTruth:
    """What ``draw_person`` drew: boxes and keypoints in image pixels."""
    bbox: tuple[int, int, int, int]
    face_bbox: tuple[int, int, int, int]
    keypoints: dict[str, tuple[int, int]]


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A pattern colour that stands out against ``rgb`` (dark on light, light on dark)."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (30, 30, 36) if lum > 120 else (236, 236, 230)


class Canvas:
    """An RGB image and its label map painted together, region by region."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.img = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)
        self.scratch = np.zeros((height, width), np.uint8)

    def region(self, draw) -> np.ndarray:
        self.scratch.fill(0)
        draw(self.scratch)
        return self.scratch.astype(bool)

    def paint(self, region: np.ndarray, color, label: int | None, pattern: str = "solid",
              scale: float = 10.0, mask: np.ndarray | None = None) -> None:
        """Fill ``region`` with ``color`` (optionally patterned) and write ``label`` into the mask."""
        target = self.mask if mask is None else mask
        self.img[region] = color
        if pattern != "solid":  # evaluated on the region's pixels only (image coordinates)
            yy, xx = np.nonzero(region)
            p = max(4, int(round(scale)))
            if pattern == "striped":
                sel = (yy % p) < max(2, p // 3)
            elif pattern == "dotted":
                r = max(1.5, p * 0.22)
                sel = ((xx % p - p / 2) ** 2 + (yy % p - p / 2) ** 2) <= r * r
            elif pattern == "plaid":
                t = max(1, p // 5)
                sel = ((yy % p) < t) | ((xx % p) < t)
            else:
                raise ValueError(f"unknown pattern {pattern!r}")
            self.img[yy[sel], xx[sel]] = _contrast(color)
        if label is not None:
            target[region] = label

    def fill(self, draw, color, label: int | None, pattern: str = "solid", scale: float = 10.0,
             mask: np.ndarray | None = None) -> np.ndarray:
        reg = self.region(draw)
        self.paint(reg, color, label, pattern, scale, mask)
        return reg


def _poly(points):
    pts = np.array([_pt(*p) for p in points], np.int32)
    return lambda a: cv2.fillPoly(a, [pts], 1)


def _ellipse(cx, cy, ax, ay, angle=0.0, start=0, end=360):
    return lambda a: cv2.ellipse(a, _pt(cx, cy), _pt(max(ax, 1), max(ay, 1)), angle, start, end, 1, -1)


def _line(p0, p1, thickness):
    return lambda a: cv2.line(a, _pt(*p0), _pt(*p1), 1, max(1, int(round(thickness))))


def _circle(cx, cy, r):
    return lambda a: cv2.circle(a, _pt(cx, cy), max(1, int(round(r))), 1, -1)


def _union(*draws):
    def draw(a):
        for d in draws:
            d(a)
    return draw


def _lerp(p0, p1, t):
    return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


def _seg(p0, p1, thickness):
    """A band of ``thickness`` from p0 to p1 with flat ends (a hem), unlike ``_line``'s round caps."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = math.hypot(dx, dy) or 1.0
    ox, oy = -dy / n * thickness / 2, dx / n * thickness / 2
    return _poly([(p0[0] + ox, p0[1] + oy), (p1[0] + ox, p1[1] + oy), (p1[0] - ox, p1[1] - oy),
                  (p0[0] - ox, p0[1] - oy)])


def _arc(cx, cy, ax, ay, start, end, thickness):
    return lambda a: cv2.ellipse(a, _pt(cx, cy), _pt(max(ax, 1), max(ay, 1)), 0, start, end, 1,
                                 max(1, int(round(thickness))))


def _rect(x0, y0, x1, y1):
    return _poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _clip_y(points, y0, y1):
    """The part of the polygon ``points`` with y0 <= y <= y1 (Sutherland-Hodgman on two half-planes)."""
    def clip(pts, keep, cut):
        out = []
        for i, p in enumerate(pts):
            q = pts[i - 1]
            if keep(p):
                if not keep(q):
                    out.append(cut(q, p))
                out.append(p)
            elif keep(q):
                out.append(cut(q, p))
        return out

    def at(y):
        return lambda q, p: (q[0] + (p[0] - q[0]) * (y - q[1]) / (p[1] - q[1]), y)

    pts = clip(list(points), lambda p: p[1] >= y0, at(y0))
    return clip(pts, lambda p: p[1] <= y1, at(y1)) if pts else pts


# ----------------------------------------------------------------------------------------- scene


def draw_background(canvas: Canvas, kind: str, rng: np.random.Generator, cartoon: bool = False,
                    color: str | None = None) -> None:
    """Plain colour (``color``, a ``BACKDROPS`` name, else a random pastel), indoor (wall + floor, a frame
    or window) or outdoor (sky + ground, horizon)."""
    h, w = canvas.h, canvas.w
    img = canvas.img
    if kind == "plain":
        rgb = BACKDROPS[color] if color is not None else PLAIN_BACKGROUNDS[rng.integers(len(PLAIN_BACKGROUNDS))]
        base = np.array(rgb, np.float32)
        if cartoon:
            img[:] = base.astype(np.uint8)
        else:  # a soft vignette-like vertical light falloff
            ramp = np.linspace(1.04, 0.9, h, dtype=np.float32)[:, None, None]
            img[:] = np.clip(base[None, None] * ramp, 0, 255).astype(np.uint8)
    elif kind == "indoor":
        horizon = int(h * rng.uniform(0.70, 0.80))
        wall = np.array(WALLS[rng.integers(len(WALLS))], np.float32)
        floor = np.array(FLOORS[rng.integers(len(FLOORS))], np.float32)
        img[:horizon] = wall.astype(np.uint8)
        img[horizon:] = floor.astype(np.uint8)
        if not cartoon:
            ramp = np.linspace(0.88, 1.05, horizon, dtype=np.float32)[:, None, None]
            img[:horizon] = np.clip(wall[None, None] * ramp, 0, 255).astype(np.uint8)
            # floor boards
            for x in range(int(rng.integers(0, 24)), w, max(18, w // 8)):
                cv2.line(img, (x, horizon), (x + (x - w // 2) // 3, h), tuple(int(c * 0.8) for c in floor), 1)
        cv2.rectangle(img, (0, horizon - max(3, h // 90)), (w, horizon), tuple(int(c * 0.75) for c in wall), -1)
        # a picture frame or a window, away from the middle
        fw, fh = int(w * rng.uniform(0.16, 0.24)), int(h * rng.uniform(0.1, 0.16))
        fx = int(rng.uniform(0.02, 0.2) * w) if rng.random() < 0.5 else int(w - fw - rng.uniform(0.02, 0.2) * w)
        fy = int(h * rng.uniform(0.1, 0.3))
        frame = tuple(int(c) for c in (COLORS["brown"] if rng.random() < 0.5 else COLORS["white"]))
        inner = tuple(int(c) for c in (rng.integers(60, 200, 3)))
        cv2.rectangle(img, (fx, fy), (fx + fw, fy + fh), frame, -1)
        cv2.rectangle(img, (fx + 4, fy + 4), (fx + fw - 4, fy + fh - 4), inner, -1)
    elif kind == "outdoor":
        horizon = int(h * rng.uniform(0.55, 0.7))
        ground = np.array(GROUNDS[rng.integers(len(GROUNDS))], np.float32)
        sky_top, sky_bot = np.array((92, 150, 224), np.float32), np.array((190, 214, 236), np.float32)
        if cartoon:
            img[:horizon] = ((sky_top + sky_bot) / 2).astype(np.uint8)
            img[horizon:] = ground.astype(np.uint8)
        else:
            t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
            img[:horizon] = (sky_top * (1 - t) + sky_bot * t).astype(np.uint8)
            t = np.linspace(0.85, 1.08, h - horizon, dtype=np.float32)[:, None, None]
            img[horizon:] = np.clip(ground[None, None] * t, 0, 255).astype(np.uint8)
        # clouds and distant bushes
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0, w), rng.uniform(0.05, 0.3) * h
            for k in range(3):
                cv2.ellipse(img, _pt(cx + (k - 1) * w * 0.07, cy + (k % 2) * 4), _pt(w * 0.08, h * 0.02), 0, 0, 360,
                            (244, 246, 250), -1)
        for _ in range(int(rng.integers(2, 5))):
            bx = rng.uniform(0, w)
            bw = w * rng.uniform(0.06, 0.14)
            cv2.ellipse(img, _pt(bx, horizon), _pt(bw, bw * 0.6), 0, 180, 360, (52, 96, 48), -1)
    else:
        raise ValueError(f"unknown background {kind!r}")


# ---------------------------------------------------------------------------------------- person


def draw_person(canvas: Canvas, attrs: Mapping[str, str], rng: np.random.Generator, cx: float, top: float,
                height_px: float, cartoon: bool = False, mask: np.ndarray | None = None) -> PersonTruth:
    """Draw one standing, front-facing person whose body spans ``height_px`` from ``top`` (head top).

    Painter's order, back to front; every region writes its ATR label into ``mask`` (the canvas mask by
    default, so secondary people can be drawn into a throw-away mask). Exposed skin of the neck and torso
    (neckline, bare midriff) is labelled Face, accessories take the label of what they sit on: gloves the
    arm labels, stockings the leg labels, a necklace and facial hair Face. Attributes a person lacks
    (partial answer sets) fall back to the plainest rendering.
    """
    m = canvas.mask if mask is None else mask
    g = attrs.get
    heads, _, sw_heads = AGE_BODY[attrs["age"]]
    bf = BODY_SHAPE[attrs["body_shape"]]
    woman = attrs["gender"] == "woman"
    h = height_px / heads                      # head height in pixels
    body = height_px - h
    skin = SKIN_TONES[attrs["skin_tone"]]
    neck_rgb = tuple(int(c * 0.88) for c in skin)
    jit = lambda s=0.03: rng.uniform(-s, s) * h  # noqa: E731

    hx, hy = cx + jit(0.02), top + 0.5 * h
    neck = (cx, top + 1.02 * h)
    sy = top + h * (1.2 if attrs["age"] != "child" else 1.15)
    sw = h * sw_heads * (0.9 if woman else 1.05) * (0.75 + 0.25 * bf)
    hip_y = top + h + 0.42 * body
    hw = h * (0.62 if woman else 0.55) * bf
    knee_y = top + h + 0.71 * body
    ankle_y = top + h + 0.955 * body
    ls, rs = (cx + sw, sy), (cx - sw, sy)
    lh, rh = (cx + hw * 0.55, hip_y), (cx - hw * 0.55, hip_y)
    spread = h * rng.uniform(0.0, 0.12)
    lk, rk = (cx + hw * 0.5 + spread * 0.5, knee_y), (cx - hw * 0.5 - spread * 0.5, knee_y)
    la, ra = (cx + hw * 0.45 + spread, ankle_y), (cx - hw * 0.45 - spread, ankle_y)
    pose = attrs["pose"]
    if pose == "arms down":
        le, re = (cx + sw + 0.2 * h, sy + 0.26 * body), (cx - sw - 0.2 * h, sy + 0.26 * body)
        lw, rw = (cx + sw + 0.3 * h, sy + 0.47 * body), (cx - sw - 0.3 * h, sy + 0.47 * body)
    elif pose == "arms raised":
        le, re = (cx + sw + 0.55 * h, sy - 0.7 * h), (cx - sw - 0.55 * h, sy - 0.7 * h)
        lw, rw = (cx + sw + 0.8 * h, sy - 1.75 * h), (cx - sw - 0.8 * h, sy - 1.75 * h)
    elif pose == "hands on hips":
        le, re = (cx + sw + 0.7 * h, sy + 0.2 * body), (cx - sw - 0.7 * h, sy + 0.2 * body)
        lw, rw = (cx + hw + 0.05 * h, hip_y - 0.25 * h), (cx - hw - 0.05 * h, hip_y - 0.25 * h)
    else:
        raise ValueError(f"unknown pose {pose!r}")
    arms = ((ls, le, lw, LARM), (rs, re, rw, RARM))
    arm_t, fore_t = 0.4 * h * (0.8 + 0.2 * bf), 0.32 * h * (0.8 + 0.2 * bf)
    leg_t = 0.55 * h * (0.75 + 0.25 * bf)
    waist_hw = hw * (0.82 if woman else 0.95)
    waist_y = hip_y - 0.45 * h

    def paint(draw, color, label, pattern="solid", scale=0.24):
        return canvas.fill(draw, color, label, pattern, scale=scale * h, mask=m)

    # -- long hair behind the shoulders
    hair = g("hair_exists") == "yes"
    hair_rgb = HAIR_COLORS[attrs["hair_color"]] if hair else None
    if hair and attrs["hair_length"] == "long":
        paint(_union(_ellipse(hx, hy, 0.5 * h, 0.56 * h),
                     _poly([(hx - 0.5 * h, hy), (hx + 0.5 * h, hy), (hx + 0.56 * h, sy + 0.9 * h),
                            (hx - 0.56 * h, sy + 0.9 * h)])), hair_rgb, HAIR)

    # -- legs (skin, or opaque stockings / tights); bare feet are part of the leg
    leg_rgb = STOCKINGS[attrs["stockings_color"]] if g("stockings_exists") == "yes" else skin
    for (hp, kp, ap, lab) in ((lh, lk, la, LLEG), (rh, rk, ra, RLEG)):
        out = 1 if lab == LLEG else -1
        paint(_union(_line(hp, kp, leg_t), _line(kp, ap, leg_t * 0.76), _circle(*kp, leg_t * 0.42),
                     _ellipse(ap[0] + out * 0.08 * h, ap[1] + 0.12 * h, 0.17 * h, 0.09 * h)), leg_rgb, lab)

    # -- shoes (boots have a shaft up the shin, cut flat); every shoe has a light or dark sole
    if g("shoes_exists") == "yes":
        shoe_rgb = COLORS[attrs["shoes_color"]]
        sole_rgb = SOLES[g("shoes_sole", "light" if sum(shoe_rgb) < 500 else "dark")]
        for ap, kp, lab in ((la, lk, LSHOE), (ra, rk, RSHOE)):
            out = 1 if lab == LSHOE else -1
            foot = _ellipse(ap[0] + out * 0.1 * h, ap[1] + 0.12 * h, 0.21 * h, 0.11 * h)
            if attrs["shoes_type"] == "boots":
                foot = _union(foot, _seg(_lerp(ap, kp, 0.4), ap, leg_t * 0.95), _circle(*ap, leg_t * 0.475))
            paint(foot, shoe_rgb, lab)
            paint(_ellipse(ap[0] + out * 0.1 * h, ap[1] + 0.18 * h, 0.215 * h, 0.055 * h), sole_rgb, lab)

    # -- torso outline (tight fit) and what the top covers
    torso = [(cx - 0.2 * h, sy - 0.06 * h), (cx + 0.2 * h, sy - 0.06 * h), (ls[0], sy + 0.02 * h),
             (ls[0] - 0.05 * h, sy + 0.35 * h), (cx + waist_hw, waist_y), (cx + hw, hip_y + 0.08 * h),
             (cx - hw, hip_y + 0.08 * h), (cx - waist_hw, waist_y), (rs[0] + 0.05 * h, sy + 0.35 * h),
             (rs[0], sy + 0.02 * h)]
    top = g("top_exists") == "yes"
    dress = g("dress_exists") == "yes"
    cropped = top and g("top_length") == "cropped"
    hem_y = waist_y - 0.28 * h
    if cropped:  # bare midriff between the cropped top and the waistband (drawn under pants / skirt)
        paint(_poly(_clip_y(torso, hem_y - 0.05 * h, waist_y)), skin, FACE)

    # -- pants (flat hems; skinny / regular / wide legs, wide ones flaring outwards)
    if g("pants_exists") == "yes":
        frac = {"shorts": 0.4, "cropped": 0.72, "long": 1.06}[attrs["pants_length"]]
        wt, ws, kr = {"skinny": (1.04, 0.84, 0.52), "regular": (1.22, 1.05, 0.58),
                      "wide": (1.5, 1.5, 0.75)}[g("pants_fit", "regular")]
        # widths in leg_t, kept >= 3 px wider than the skin they cover (no skin slivers on small people)
        wt, ws, kr = max(wt, 1 + 3 / leg_t), max(ws, 0.76 + 3 / leg_t), max(kr, 0.5 + 1.5 / leg_t)
        draws = [_poly([(cx - waist_hw, waist_y), (cx + waist_hw, waist_y), (cx + hw, hip_y + 0.3 * h),
                        (cx - hw, hip_y + 0.3 * h)])]
        for hp, kp, ap, out in ((lh, lk, la, 1), (rh, rk, ra, -1)):
            dt = out * max(0.0, wt - 1.22) / 2 * leg_t   # wide legs keep the inner edge, widen outwards
            ds = out * max(0.0, ws - 1.05) / 2 * leg_t
            hp2, kp_t, kp_s = (hp[0] + dt, hp[1]), (kp[0] + dt, kp[1]), (kp[0] + ds, kp[1])
            t_knee = (kp[1] - hp[1]) / (ap[1] - hp[1])
            draws.append(_circle(*hp, min(wt, 1.22) * leg_t / 2 + 1))
            if frac <= t_knee:
                draws.append(_seg(hp2, _lerp(hp2, kp_t, frac / t_knee), wt * leg_t))
            else:
                ap_s = (ap[0] + ds, ap[1])
                draws += [_seg(hp2, kp_t, wt * leg_t), _circle(*kp_s, kr * leg_t),
                          _seg(kp_s, _lerp(kp_s, ap_s, (frac - t_knee) / (1 - t_knee)), ws * leg_t)]
        paint(_union(*draws), COLORS[attrs["pants_color"]], PANTS, attrs["pants_pattern"])

    # -- skirt / dress below the waist: covers the hips and thighs, straight (fitted) or flared
    def lower(bottom, flared):
        hip_half = max(hw + 0.05 * h, hw * 0.55 + 0.5 * leg_t + 0.06 * h)
        bot = hip_half + (0.2 if flared else 0.03) * (bottom - hip_y)
        return [(cx + waist_hw, waist_y), (cx + hip_half, hip_y + 0.05 * h), (cx + bot, bottom),
                (cx - bot, bottom), (cx - hip_half, hip_y + 0.05 * h), (cx - waist_hw, waist_y)]

    if g("skirt_exists") == "yes":
        bottom = {"mini": hip_y + 0.7 * h, "knee": knee_y + 0.1 * h, "long": ankle_y - 0.03 * h}[attrs["skirt_length"]]
        paint(_poly(lower(bottom, g("skirt_shape", "flared") == "flared")), COLORS[attrs["skirt_color"]], SKIRT,
              attrs["skirt_pattern"])

    # -- neck (skin, labelled Face as head skin)
    paint(_poly([(cx - 0.14 * h, hy + 0.3 * h), (cx + 0.14 * h, hy + 0.3 * h), (cx + 0.17 * h, sy + 0.05 * h),
                 (cx - 0.17 * h, sy + 0.05 * h)]), neck_rgb, FACE)

    # -- arms (skin), upper arm + forearm + hand; gloves over the hands and wrists
    gloves_rgb = COLORS[attrs["gloves_color"]] if g("gloves_exists") == "yes" else None

    def hand(ep, wp, lab):
        hand_c = _lerp(ep, wp, 1.12)
        if gloves_rgb is None:
            paint(_circle(*hand_c, 0.17 * h), skin, lab)
        else:
            paint(_union(_circle(*hand_c, 0.17 * h), _seg(_lerp(ep, wp, 0.86), hand_c, fore_t * 1.08)), gloves_rgb, lab)

    for sp, ep, wp, lab in arms:
        paint(_union(_line(sp, ep, arm_t), _circle(*ep, arm_t * 0.5), _line(ep, wp, fore_t),
                     _circle(*_lerp(ep, wp, 1.12), 0.17 * h)), skin, lab)

    def sleeves(kind, k=1.0):
        draws = []
        for sp, ep, wp, _ in arms:
            if kind == "short":
                draws.append(_line(sp, _lerp(sp, ep, 0.5), arm_t * 1.25 * k))
            elif kind == "long":
                draws += [_line(sp, ep, arm_t * 1.2 * k), _circle(*ep, arm_t * 0.6 * k), _line(ep, wp, fore_t * 1.25 * k)]
        return draws

    # -- dress (bodice + skirt part, with sleeves)
    garment = None  # (colour, label, pattern, sleeve kind, sleeve width factor) of the torso garment
    if dress:
        bottom = {"short": hip_y + 0.75 * h, "knee": knee_y + 0.1 * h, "long": ankle_y - 0.03 * h}[attrs["dress_length"]]
        garment = (COLORS[attrs["dress_color"]], DRESS, attrs["dress_pattern"], g("dress_sleeve", "sleeveless"), 1.0)
        body_pts = torso[:4] + lower(bottom, g("dress_fit", "flared") == "flared") + torso[-2:]
        paint(_union(_poly(body_pts), *sleeves(garment[3])), garment[0], DRESS, garment[2])
    # -- top (torso + sleeves): tight or loose, cropped or regular length
    if top:
        loose = g("top_fit") == "loose"
        garment = (COLORS[attrs["top_color"]], UPPER, attrs["top_pattern"], attrs["sleeve_length"], 1.15 if loose else 1.0)
        shape = torso
        if loose:
            shape = torso[:3] + [(ls[0], sy + 0.35 * h), (cx + hw + 0.12 * h, waist_y),
                                 (cx + hw + 0.16 * h, hip_y + 0.12 * h), (cx - hw - 0.16 * h, hip_y + 0.12 * h),
                                 (cx - hw - 0.12 * h, waist_y), (rs[0], sy + 0.35 * h), torso[-1]]
        if cropped:
            shape = _clip_y(shape, -1e9, hem_y)
        top_region = paint(_union(_poly(shape), *sleeves(garment[3], garment[4])), garment[0], UPPER, garment[2])
        if g("scarf_exists") != "yes":  # the neckline, cut out of the top: a round scoop or a V of chest skin (Face)
            if g("neckline", "round") == "v-neck":
                cut = _poly([(cx - 0.21 * h, sy - 0.07 * h), (cx + 0.21 * h, sy - 0.07 * h), (cx, sy + 0.45 * h)])
            else:
                cut = _ellipse(cx, sy - 0.07 * h, 0.27 * h, 0.18 * h, 0, 0, 180)
            canvas.paint(canvas.region(cut) & top_region, neck_rgb, FACE, mask=m)
    if garment is not None and pose == "hands on hips":  # forearms and hands rest in front of the garment
        rgb, lab_g, pattern, kind, k = garment
        for sp, ep, wp, lab in arms:
            if kind == "long":
                paint(_union(_circle(*ep, arm_t * 0.6 * k), _line(ep, wp, fore_t * 1.25 * k)), rgb, lab_g, pattern)
            else:
                paint(_line(ep, wp, fore_t), skin, lab)
            hand(ep, wp, lab)
    elif gloves_rgb is not None or (garment is not None and garment[3] == "long"):  # hands out of the cuffs
        for sp, ep, wp, lab in arms:
            hand(ep, wp, lab)

    # -- belt (thin or wide, gold buckle)
    if g("belt_exists") == "yes":
        by = hip_y - 0.02 * h if top else waist_y + 0.02 * h
        bw = hw if top else waist_hw
        bh = 0.1 * h if g("belt_width") == "wide" else 0.045 * h
        paint(_rect(cx - bw - 0.03 * h, by - bh, cx + bw + 0.03 * h, by + bh), COLORS[attrs["belt_color"]], BELT)
        paint(_rect(cx - 0.08 * h, by - 0.9 * bh, cx + 0.08 * h, by + 0.9 * bh), (200, 180, 90), BELT)

    # -- scarf (around the neck, one end hanging short or long)
    if g("scarf_exists") == "yes":
        end = sy + (0.5 if g("scarf_length") == "short" else 1.4) * h
        paint(_union(_ellipse(cx, sy - 0.02 * h, 0.32 * h, 0.14 * h),
                     _poly([(cx + 0.05 * h, sy), (cx + 0.26 * h, sy), (cx + 0.24 * h, end), (cx + 0.04 * h, end)])),
              COLORS[attrs["scarf_color"]], SCARF, attrs["scarf_pattern"])
    # -- necklace: a gold chain with a pendant (Face, like the neck it sits on)
    elif g("necklace_exists") == "yes":
        paint(_union(_arc(cx, sy - 0.12 * h, 0.19 * h, 0.28 * h, 15, 165, 0.045 * h),
                     _circle(cx, sy + 0.17 * h, 0.06 * h)), NECKLACE, FACE)

    # -- head: ears, face, features
    face_region = paint(_union(_ellipse(hx, hy, 0.39 * h, 0.5 * h), _ellipse(hx - 0.39 * h, hy + 0.02 * h, 0.07 * h, 0.11 * h),
                               _ellipse(hx + 0.39 * h, hy + 0.02 * h, 0.07 * h, 0.11 * h)), skin, FACE)
    if not cartoon:  # face shading: darker towards the sides and the chin, light nose bridge
        ys, xs = np.nonzero(face_region)
        r2 = ((xs - hx) / (0.42 * h)) ** 2 + ((ys - hy + 0.1 * h) / (0.6 * h)) ** 2
        gain = 1.2 if attrs["skin_tone"] == "dark" else 1.08
        shade = np.clip(gain - 0.36 * r2, 0.6, 1.25)
        canvas.img[ys, xs] = np.clip(canvas.img[ys, xs] * shade[:, None], 0, 255).astype(np.uint8)
    _draw_face(canvas, attrs, hx, hy, h, skin, hair_rgb, cartoon, woman, m)

    # -- hair on the head (not covering the eyes): cap, side locks, bangs, bun
    if hair:
        length = attrs["hair_length"]
        cap = canvas.region(_ellipse(hx, hy - 0.02 * h, 0.45 * h, 0.55 * h, 0, 180, 360))
        # keep rows above hy - 0.3h, and the sides (|x - hx| > 0.34h) down to hy - 0.1h: the face shows
        x0, x1 = max(0, int(math.ceil(hx - 0.34 * h))), max(0, int(math.floor(hx + 0.34 * h)) + 1)
        cap[max(0, int(math.ceil(hy - 0.3 * h))):, x0:x1] = False
        cap[max(0, int(math.ceil(hy - 0.1 * h))):] = False
        canvas.paint(cap, hair_rgb, HAIR, mask=m)
        draws = []
        if length in ("medium", "long"):
            end = hy + (0.3 if length == "medium" else 0.55) * h
            draws += [_poly([(hx - 0.46 * h, hy - 0.25 * h), (hx - 0.36 * h, hy - 0.25 * h), (hx - 0.37 * h, end),
                             (hx - 0.5 * h, end)]),
                      _poly([(hx + 0.46 * h, hy - 0.25 * h), (hx + 0.36 * h, hy - 0.25 * h), (hx + 0.37 * h, end),
                             (hx + 0.5 * h, end)])]
        if g("hair_bangs") == "yes":  # a side-swept fringe, deepest over the left brow (image right)
            draws.append(_poly([(hx - 0.4 * h, hy - 0.36 * h), (hx + 0.4 * h, hy - 0.36 * h), (hx + 0.38 * h, hy - 0.16 * h),
                                (hx - 0.1 * h, hy - 0.27 * h), (hx - 0.4 * h, hy - 0.27 * h)]))
        if g("hair_style") == "bun":
            draws.append(_circle(hx, hy - 0.64 * h, 0.19 * h))
        if draws:
            paint(_union(*draws), hair_rgb, HAIR)

    # -- hat: the pattern on the crown only; brim, visor and cuff stay plain (a pattern right over the
    # eyes breaks frontal-face detectors on small faces)
    if g("hat_exists") == "yes":
        hat_rgb = COLORS[attrs["hat_color"]]
        hat_pattern = g("hat_pattern", "solid")
        kind = attrs["hat_type"]
        if kind == "cap":
            side = 1 if rng.random() < 0.5 else -1
            crown = _ellipse(hx, hy - 0.32 * h, 0.44 * h, 0.32 * h, 0, 180, 360)
            brim = _ellipse(hx + side * 0.3 * h, hy - 0.34 * h, 0.42 * h, 0.06 * h)
        elif kind == "beanie":  # a folded cuff in a darker shade of the hat's colour
            crown = _ellipse(hx, hy - 0.3 * h, 0.45 * h, 0.4 * h, 0, 180, 360)
            brim = _rect(hx - 0.46 * h, hy - 0.38 * h, hx + 0.46 * h, hy - 0.27 * h)
        elif kind == "wide brim":
            crown = _poly([(hx - 0.36 * h, hy - 0.36 * h), (hx + 0.36 * h, hy - 0.36 * h), (hx + 0.32 * h, hy - 0.8 * h),
                           (hx - 0.32 * h, hy - 0.8 * h)])
            brim = _ellipse(hx, hy - 0.37 * h, 0.8 * h, 0.08 * h)
        else:
            raise ValueError(f"unknown hat type {kind!r}")
        region = paint(crown, hat_rgb, HAT)
        if hat_pattern != "solid":
            region[max(0, int(hy - 0.5 * h)):] = False
            canvas.paint(region, hat_rgb, HAT, hat_pattern, scale=0.16 * h, mask=m)
        paint(brim, tuple(int(c * 0.72) for c in hat_rgb) if kind == "beanie" else hat_rgb, HAT)

    # -- sunglasses: round or square lenses, tinted
    if g("sunglasses_exists") == "yes":
        ey = hy - 0.04 * h
        rgb = SUNGLASSES_TINTS[g("sunglasses_color", "black")]
        if g("sunglasses_shape") == "square":
            lenses = [_rect(hx + s * 0.165 * h - 0.115 * h, ey - 0.07 * h, hx + s * 0.165 * h + 0.115 * h, ey + 0.075 * h)
                      for s in (-1, 1)]
        else:
            lenses = [_circle(hx + s * 0.165 * h, ey, 0.1 * h) for s in (-1, 1)]
        bridge = _line((hx - 0.05 * h, ey - 0.03 * h), (hx + 0.05 * h, ey - 0.03 * h), 0.03 * h)
        paint(_union(*lenses, bridge), rgb, SUNGLASSES)

    # -- bag (small or large, patterned)
    if g("bag_exists") == "yes":
        bag_rgb = COLORS[attrs["bag_color"]]
        bag_pattern = g("bag_pattern", "solid")
        k = {"small": 0.72, "large": 1.3}.get(g("bag_size", ""), 1.0)
        if attrs["bag_type"] == "handbag":
            hand_b = _lerp(re, rw, 1.15)
            bw2, bh2, top_y = 0.3 * h * k, 0.45 * h * k, hand_b[1] + 0.12 * h
            paint(_union(_ellipse(hand_b[0], top_y, 0.16 * h * k, 0.14 * h, 0, 180, 360),
                         _poly([(hand_b[0] - bw2, top_y), (hand_b[0] + bw2, top_y), (hand_b[0] + bw2 * 1.1, top_y + bh2),
                                (hand_b[0] - bw2 * 1.1, top_y + bh2)])), bag_rgb, BAG, bag_pattern, 0.16)
        else:  # shoulder bag: strap across the chest, bag at the right hip
            bag_c = (rh[0] - hw * 0.7, hip_y)
            paint(_union(_line((ls[0] - 0.15 * h, sy - 0.02 * h), bag_c, 0.08 * h),
                         _rect(bag_c[0] - 0.35 * h * k, bag_c[1] - 0.1 * h,
                               bag_c[0] + 0.3 * h * k, bag_c[1] + (0.55 * k - 0.1) * h)),
                  bag_rgb, BAG, bag_pattern, 0.16)

    kp = {"head": _pt(hx, hy), "neck": _pt(*neck), "left_shoulder": _pt(*ls), "right_shoulder": _pt(*rs),
          "left_elbow": _pt(*le), "right_elbow": _pt(*re), "left_wrist": _pt(*lw), "right_wrist": _pt(*rw),
          "left_hip": _pt(*lh), "right_hip": _pt(*rh), "left_knee": _pt(*lk), "right_knee": _pt(*rk),
          "left_ankle": _pt(*la), "right_ankle": _pt(*ra)}
    ys, xs = np.nonzero(m)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    fbox = (int(hx - 0.39 * h), int(hy - 0.5 * h), int(math.ceil(hx + 0.39 * h)), int(math.ceil(hy + 0.5 * h)))
    return PersonTruth(bbox, fbox, kp)


def _draw_face(canvas: Canvas, attrs, hx, hy, h, skin, hair_rgb, cartoon: bool, woman: bool,
               mask: np.ndarray | None = None) -> None:
    img = canvas.img
    dark = tuple(int(c * 0.72) for c in skin)
    ey = hy - 0.04 * h
    if not cartoon:  # eye sockets and the nose shadow
        for sx in (-1, 1):
            cv2.ellipse(img, _pt(hx + sx * 0.17 * h, ey - 0.01 * h), _pt(0.14 * h, 0.09 * h), 0, 0, 360,
                        tuple(int(c * 0.66) for c in skin), -1)
        cv2.line(img, _pt(hx + 0.04 * h, ey + 0.02 * h), _pt(hx + 0.06 * h, hy + 0.17 * h), dark, max(1, int(0.035 * h)))
        cv2.ellipse(img, _pt(hx, hy + 0.06 * h), _pt(0.035 * h, 0.12 * h), 0, 0, 360,
                    tuple(min(255, int(c * 1.08)) for c in skin), -1)
    brow_rgb = tuple(int(c * 0.6) for c in (hair_rgb or (70, 45, 30)))
    for sx in (-1, 1):
        exc = hx + sx * 0.17 * h
        # sclera dimmed towards the skin: in photos lids shade the eye, so the eye band stays darker
        # than the cheeks for every skin tone (the cue frontal-face detectors rely on)
        sclera = tuple(int(0.55 * 245 + 0.45 * c) for c in skin)
        cv2.ellipse(img, _pt(exc, ey), _pt(0.075 * h, 0.036 * h), 0, 0, 360, sclera, -1)
        cv2.circle(img, _pt(exc, ey), max(1, int(round(0.042 * h))), (60, 40, 28), -1)
        cv2.circle(img, _pt(exc, ey), max(1, int(round(0.02 * h))), (10, 10, 10), -1)
        cv2.line(img, _pt(exc - 0.1 * h, ey - 0.1 * h + sx * 0), _pt(exc + 0.1 * h, ey - 0.12 * h), brow_rgb,
                 max(2, int(round((0.04 if not woman else 0.03) * h))))
        if woman:
            cv2.line(img, _pt(exc - 0.09 * h, ey - 0.02 * h), _pt(exc + 0.09 * h, ey - 0.035 * h), (20, 20, 20),
                     max(1, int(0.015 * h)))
    facial_hair = attrs.get("facial_hair", "none")
    # the hair's colour, always darker than the skin (a blonde beard would light up a dark face)
    beard_rgb = tuple(int(min(0.45 * c + 0.4 * k, 0.65 * k)) for c, k in zip(hair_rgb or (66, 46, 34), skin))
    if facial_hair == "beard":  # chin and jaw below the mouth; cheeks stay bare for face detectors (Face)
        canvas.fill(_ellipse(hx, hy + 0.34 * h, 0.27 * h, 0.17 * h, 0, 0, 180), beard_rgb, FACE, mask=mask)
    # nostrils and mouth
    for sx in (-1, 1):
        cv2.circle(img, _pt(hx + sx * 0.045 * h, hy + 0.17 * h), max(1, int(0.022 * h)), tuple(int(c * 0.5) for c in skin), -1)
    if facial_hair in ("beard", "mustache"):
        cv2.ellipse(img, _pt(hx, hy + 0.235 * h), _pt(0.16 * h, 0.045 * h), 0, 0, 360, beard_rgb, -1)
    lip = LIPSTICK if attrs.get("lipstick") == "yes" else (int(skin[0] * 0.8), int(skin[1] * 0.55), int(skin[2] * 0.55))
    if attrs.get("expression") == "smiling":  # closed lips curved up into a crescent, corners raised (no
        # bright teeth, no wide dark line: on small dark faces those break frontal-face detectors)
        my, ax = hy + 0.24 * h, 0.155 * h
        ts = np.linspace(0, np.pi, 13)
        lower = [(hx + ax * math.cos(t), my + 0.085 * h * math.sin(t)) for t in ts]
        upper = [(hx + ax * math.cos(t), my + 0.035 * h * math.sin(t)) for t in ts]
        cv2.fillPoly(img, [np.array([_pt(*p) for p in lower + upper[::-1]], np.int32)], lip)
        cv2.polylines(img, [np.array([_pt(*p) for p in upper], np.int32)], False, (60, 20, 24), max(1, int(0.015 * h)))
    else:
        cv2.ellipse(img, _pt(hx, hy + 0.3 * h), _pt(0.12 * h, 0.04 * h), 0, 0, 360, lip, -1)
        cv2.line(img, _pt(hx - 0.12 * h, hy + 0.3 * h), _pt(hx + 0.12 * h, hy + 0.3 * h), (60, 20, 24), max(1, int(0.015 * h)))
    if attrs["age"] == "elderly" and not cartoon:  # forehead and smile lines
        for k in range(2):
            y = hy - (0.27 + 0.06 * k) * h
            cv2.line(img, _pt(hx - 0.16 * h, y), _pt(hx + 0.16 * h, y), dark, 1)
        for sx in (-1, 1):
            cv2.line(img, _pt(hx + sx * 0.1 * h, hy + 0.14 * h), _pt(hx + sx * 0.16 * h, hy + 0.3 * h), dark, 1)


# ---------------------------------------------------------------------------------- finishing


def _photo_finish(canvas: Canvas, rng: np.random.Generator, noise: np.ndarray, fg: np.ndarray | None,
                  person_h: float, brightness: float = 1.0) -> np.ndarray:
    """Shading near part borders, a directional light, optical blur, the scene's ``brightness``
    and sensor noise -> float image."""
    img = canvas.img.astype(np.float32)
    if fg is not None:
        lab = fg.astype(np.int16)
        border = np.zeros(lab.shape, np.float32)
        border[:, 1:] += lab[:, 1:] != lab[:, :-1]
        border[1:, :] += lab[1:, :] != lab[:-1, :]
        sigma = max(1.0, person_h * 0.008)
        occl = cv2.GaussianBlur(np.minimum(border, 1.0), (0, 0), sigma)
        shade = 1.0 - np.clip(occl * 1.8, 0, 0.35)
        light = 1.0 + 0.1 * np.linspace(-1, 1, canvas.w, dtype=np.float32)[None, :] * (1 if rng.random() < 0.5 else -1)
        shade = np.where(fg > 0, shade * light, 1.0).astype(np.float32)
        img *= shade[:, :, None]
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.55, 0.8))
    gain = rng.uniform(0.94, 1.06) * brightness
    img = img * gain + _noise_patch(noise, canvas.h, canvas.w, rng) * rng.uniform(2.0, 3.5)
    return img


def _noise_patch(noise: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    nh, nw = noise.shape[:2]
    if nh < h or nw < w:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(0, nh - h + 1)), int(rng.integers(0, nw - w + 1))
    return noise[y:y + h, x:x + w]


def _cartoon_finish(canvas: Canvas, fg: np.ndarray) -> np.ndarray:
    """Black outlines on every label border of the person; flat colours otherwise."""
    lab = fg.astype(np.int16)
    edge = np.zeros(lab.shape, np.uint8)
    edge[:, 1:] |= (lab[:, 1:] != lab[:, :-1])
    edge[1:, :] |= (lab[1:, :] != lab[:-1, :])
    edge = cv2.dilate(edge, np.ones((2, 2), np.uint8))
    img = canvas.img.copy()
    img[edge > 0] = (16, 16, 16)
    return img.astype(np.float32)


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------- world


class SyntheticWorld:
    """Deterministic people from ``(seed, index)``; see the module docstring for the cases."""

    def __init__(self, seed: int = 0, width: int = 320, height: int = 640, negative_fraction: float = 0.3) -> None:
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        self.negative_fraction = negative_fraction
        self.protocol = load_protocol()
        nrng = np.random.default_rng([self.seed, 0x5EED])
        self._noise = nrng.standard_normal((self.height + 64, self.width + 64, 3), dtype=np.float32)

    # -- attributes -------------------------------------------------------------------------
    def random_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        """A consistent answer set, answered exactly where the protocol's ``requires`` hold.

        Exactly one of top / dress; with a top exactly one of skirt / pants. Derived answers follow what
        is drawn: ``legs_exposed`` from the lower garment's length (shorts, cropped pants, mini / knee
        skirts, short / knee dresses leave the shins bare), ``arms_exposed`` from the sleeves. A bun is
        worn up, so its visible length is short or medium; children have no facial hair.
        """
        def pick(options, p=None):
            return str(options[rng.choice(len(options), p=p)])

        colors = self.protocol.by_name["top_color"].answers
        patterns = self.protocol.by_name["top_pattern"].answers
        pattern_p = (0.55, 0.15, 0.15, 0.15)
        a: dict[str, str] = {}
        a["gender"] = pick(("man", "woman"))
        a["age"] = pick(("child", "adult", "elderly"), (0.2, 0.6, 0.2))
        a["body_shape"] = pick(("slim", "average", "heavy"))
        a["skin_tone"] = pick(("light", "medium", "dark"))
        a["pose"] = pick(("arms down", "arms raised", "hands on hips"), (0.5, 0.25, 0.25))
        a["background"] = pick(("plain", "indoor", "outdoor"))
        if a["background"] == "plain":
            a["background_color"] = pick(tuple(BACKDROPS))
        a["lighting"] = pick(("bright", "dim"), (0.75, 0.25))
        a["person_position"] = pick(("left", "center", "right"), (0.25, 0.5, 0.25))
        woman, child = a["gender"] == "woman", a["age"] == "child"
        a["hair_exists"] = pick(("yes", "no"), (0.9, 0.1))
        hat = rng.random() < 0.3
        if a["hair_exists"] == "yes":
            a["hair_color"] = pick(("black", "brown", "blonde", "red", "gray"), (0.3, 0.3, 0.2, 0.1, 0.1))
            bun = (not hat) and rng.random() < (0.3 if woman else 0.06)
            if bun:
                a["hair_length"] = pick(("short", "medium"), (0.6, 0.4))
            else:
                a["hair_length"] = pick(("short", "medium", "long"), (0.45, 0.25, 0.3) if woman else (0.7, 0.2, 0.1))
        a["hat_exists"] = "yes" if hat else "no"
        if hat:
            a["hat_color"] = pick(colors)
            a["hat_type"] = pick(("cap", "beanie", "wide brim"))
            a["hat_pattern"] = pick(patterns, pattern_p)
        elif a["hair_exists"] == "yes":  # the forehead and the crown show
            a["hair_bangs"] = pick(("yes", "no"), (0.35, 0.65) if woman else (0.15, 0.85))
            a["hair_style"] = "bun" if bun else "loose"
        a["sunglasses_exists"] = pick(("yes", "no"), (0.2, 0.8))
        if a["sunglasses_exists"] == "yes":
            a["sunglasses_color"] = pick(("black", "brown", "blue"), (0.5, 0.25, 0.25))
            a["sunglasses_shape"] = pick(("round", "square"))
        a["expression"] = pick(("smiling", "neutral"), (0.45, 0.55))
        p_lip = (0.08 if child else 0.55) if woman else 0.03
        a["lipstick"] = pick(("yes", "no"), (p_lip, 1 - p_lip))
        if not woman:
            a["facial_hair"] = "none" if child else pick(("none", "beard", "mustache"), (0.62, 0.22, 0.16))
        dress = rng.random() < (0.35 if woman else 0.04)
        a["top_exists"] = "no" if dress else "yes"
        if not dress:
            a["top_color"], a["top_pattern"] = pick(colors), pick(patterns, pattern_p)
            a["sleeve_length"] = pick(("sleeveless", "short", "long"))
            a["top_fit"] = pick(("tight", "loose"), (0.55, 0.45))
            a["top_length"] = pick(("cropped", "regular"), (0.25, 0.75) if woman else (0.05, 0.95))
        a["dress_exists"] = "yes" if dress else "no"
        if dress:
            a["dress_color"], a["dress_pattern"] = pick(colors), pick(patterns, pattern_p)
            a["dress_length"] = pick(("short", "knee", "long"))
            a["dress_sleeve"] = pick(("sleeveless", "short", "long"), (0.4, 0.35, 0.25))
            a["dress_fit"] = pick(("fitted", "flared"), (0.45, 0.55))
        skirt = (not dress) and rng.random() < (0.35 if woman else 0.04)
        a["skirt_exists"] = "yes" if skirt else "no"
        if skirt:
            a["skirt_color"], a["skirt_pattern"] = pick(colors), pick(patterns, pattern_p)
            a["skirt_length"] = pick(("mini", "knee", "long"))
            a["skirt_shape"] = pick(("straight", "flared"))
        a["pants_exists"] = "yes" if not (dress or skirt) else "no"
        if a["pants_exists"] == "yes":
            a["pants_color"], a["pants_pattern"] = pick(colors), pick(patterns, (0.7, 0.1, 0.1, 0.1))
            a["pants_length"] = pick(("shorts", "cropped", "long"))
            a["pants_fit"] = pick(("skinny", "regular", "wide"), (0.25, 0.5, 0.25))
        a["belt_exists"] = pick(("yes", "no"), (0.3, 0.7))
        if a["belt_exists"] == "yes":
            a["belt_color"] = pick(colors)
            a["belt_width"] = pick(("thin", "wide"), (0.6, 0.4))
        a["shoes_exists"] = pick(("yes", "no"), (0.9, 0.1))
        if a["shoes_exists"] == "yes":
            a["shoes_color"] = pick(colors)
            a["shoes_type"] = pick(("sneakers", "boots"))
            a["shoes_sole"] = pick(("light", "dark"), (0.55, 0.45))
        long_lower = (a.get("pants_length") == "long" or a.get("skirt_length") == "long"
                      or a.get("dress_length") == "long")
        a["legs_exposed"] = "no" if long_lower else "yes"
        if a["legs_exposed"] == "yes":
            p_st = (0.4 if (dress or skirt) else 0.1) if woman else 0.02
            a["stockings_exists"] = pick(("yes", "no"), (p_st, 1 - p_st))
            if a["stockings_exists"] == "yes":
                a["stockings_color"] = pick(("black", "white", "red"), (0.5, 0.25, 0.25))
        sleeves = a.get("sleeve_length", a.get("dress_sleeve"))
        a["arms_exposed"] = "no" if sleeves == "long" else "yes"
        a["gloves_exists"] = pick(("yes", "no"), (0.15, 0.85))
        if a["gloves_exists"] == "yes":
            a["gloves_color"] = pick(self.protocol.by_name["gloves_color"].answers)
        a["bag_exists"] = pick(("yes", "no"), (0.3, 0.7))
        if a["bag_exists"] == "yes":
            a["bag_color"] = pick(colors)
            a["bag_type"] = pick(("handbag", "shoulder bag"))
            a["bag_pattern"] = pick(patterns, pattern_p)
            a["bag_size"] = pick(("small", "large"))
        a["scarf_exists"] = pick(("yes", "no"), (0.2, 0.8))
        if a["scarf_exists"] == "yes":
            a["scarf_color"], a["scarf_pattern"] = pick(colors), pick(patterns, pattern_p)
            a["scarf_length"] = pick(("short", "long"))
        else:
            if a["top_exists"] == "yes":
                a["neckline"] = pick(("round", "v-neck"), (0.6, 0.4))
            a["necklace_exists"] = pick(("yes", "no"), (0.35, 0.65) if woman else (0.1, 0.9))
        return a

    # -- rendering --------------------------------------------------------------------------
    def render(self, attributes: Mapping[str, str], rng: np.random.Generator, *, width: int | None = None,
               height: int | None = None, style: str = "photo", scale: float = 1.0, n_people: int = 1,
               person: bool = True) -> tuple[Image.Image, np.ndarray | None, dict[str, Any]]:
        """Render ``attributes`` (the main person) on its background.

        ``scale`` multiplies the person's height (small people for ``small_face``); ``n_people`` > 1
        adds people with random attributes beside the main one (drawn into a throw-away mask);
        ``person=False`` renders the background only. Returns (image, main-person mask or None, truth)
        where truth holds ``bbox``, ``face_bbox``, ``keypoints`` (None without a person), ``n_people`` and
        ``boxes`` (every person's box, main person first).
        """
        if style not in ("photo", "cartoon"):
            raise ValueError(f"unknown style {style!r}")
        w, h = width or self.width, height or self.height
        cartoon = style == "cartoon"
        canvas = Canvas(w, h)
        kind = attributes["background"]
        draw_background(canvas, kind, rng, cartoon=cartoon,
                        color=attributes.get("background_color") if kind == "plain" else None)
        # the scene's brightness (a person-less scene is not a sample of the protocol: its lighting is unset)
        light = float(rng.uniform(*LIGHTING[attributes.get("lighting", "bright") if person else "bright"]))
        truth: dict[str, Any] = {"bbox": None, "face_bbox": None, "keypoints": None, "n_people": 0, "boxes": []}
        if not person:
            img = self._finish(canvas, rng, None, h * 0.8, cartoon, light)
            return _to_pil(img), None, truth
        heads, frac, _ = AGE_BODY[attributes["age"]]
        people: list[Mapping[str, str]] = [attributes]
        if n_people > 1:
            slot_w = w / n_people
            main_i = int(rng.integers(n_people))
            people = [attributes if i == main_i else self.random_attributes(rng) for i in range(n_people)]
            centres = [slot_w * (i + 0.5) + rng.uniform(-0.06, 0.06) * slot_w for i in range(n_people)]
            size = (0.5, 0.6) if n_people == 2 else (0.4, 0.46)
            person_h = [h * rng.uniform(*size) * AGE_BODY[p["age"]][1] / 0.83 for p in people]
        else:
            main_i = 0
            centres = [w * POSITIONS[attributes.get("person_position", "center")] + rng.uniform(-0.03, 0.03) * w]
            person_h = [h * frac * scale * rng.uniform(0.96, 1.02)]
        full = np.zeros((h, w), np.uint8)  # union of every person's labels, for shading / outlines
        for i in range(n_people):
            attrs = people[i]
            ph = person_h[i]
            hh = ph / AGE_BODY[attrs["age"]][0]
            raised = attrs["pose"] == "arms raised"
            top_min = (0.9 * hh if raised else 0.1 * hh) + 0.03 * h
            bottom = h * rng.uniform(0.955, 0.975) if n_people == 1 and scale >= 0.9 else h * rng.uniform(0.8, 0.95)
            top = max(top_min, bottom - ph)
            if i == main_i:
                pt = draw_person(canvas, attrs, rng, centres[i], top, ph, cartoon)
                truth.update(bbox=pt.bbox, face_bbox=pt.face_bbox, keypoints=pt.keypoints)
                truth["boxes"].insert(0, pt.bbox)
                full = np.where(canvas.mask > 0, canvas.mask, full)
            else:
                own = np.zeros((h, w), np.uint8)
                other = draw_person(canvas, attrs, rng, centres[i], top, ph, cartoon, mask=own)
                truth["boxes"].append(other.bbox)
                full = np.where(own > 0, own + 20, full)  # distinct ids so borders between people shade
                canvas.mask[own > 0] = 0  # another person may cover the main one's pixels
        truth["n_people"] = n_people
        mask = canvas.mask.copy()
        img = self._finish(canvas, rng, full, person_h[main_i], cartoon, light)
        return _to_pil(img), mask, truth

    def _finish(self, canvas, rng, fg, person_h, cartoon, light=1.0):
        if cartoon:
            return _cartoon_finish(canvas, fg if fg is not None else canvas.mask) * np.float32(light)
        return _photo_finish(canvas, rng, self._noise, fg, person_h, light)

    # -- samples ----------------------------------------------------------------------------
    def case_of(self, index: int, negative_fraction: float | None = None) -> str:
        """The world's case mix: ``kept`` with probability 1 - negative_fraction, else a uniform negative."""
        nf = self.negative_fraction if negative_fraction is None else negative_fraction
        u = float(np.random.default_rng([self.seed, int(index), 1]).random())
        if u >= nf:
            return "kept"
        return NEGATIVE_CASES[min(int(u / nf * len(NEGATIVE_CASES)), len(NEGATIVE_CASES) - 1)]

    def _rng(self, index: int, case: str) -> np.random.Generator:
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
        return np.random.default_rng([self.seed, int(index), 0, CASES.index(case)])

    def attributes(self, index: int, case: str = "kept") -> dict[str, str]:
        """The attributes ``sample(index, case)`` draws, without rendering (a large pool's truth)."""
        return self.random_attributes(self._rng(index, case))

    def sample(self, index: int, case: str | None = None) -> SyntheticSample:
        case = self.case_of(index) if case is None else case
        rng = self._rng(index, case)
        sid = f"synth-{self.seed}-{index}"
        attrs = self.random_attributes(rng)
        w, h = self.width, self.height
        if case == "corrupt":
            return self._corrupt(sid, attrs, rng)
        kwargs: dict[str, Any] = {}
        if case == "too_small":
            f = rng.uniform(0.5, 0.72)
            kwargs.update(width=int(w * f) // 2 * 2, height=int(h * f) // 2 * 2)
        elif case == "fake_person":
            kwargs.update(style="cartoon")
        elif case == "no_person":
            if attrs["background"] == "plain":  # a featureless wall says nothing about sharpness
                attrs["background"] = ("indoor", "outdoor")[int(rng.integers(2))]
            kwargs.update(person=False)
        elif case == "many_people":
            kwargs.update(n_people=int(rng.integers(2, 4)))
        elif case == "small_face":
            kwargs.update(scale=float(rng.uniform(0.40, 0.44)))
        img, mask, truth = self.render(attrs, rng, **kwargs)
        if case == "many_people":  # the main person stands in its slot, not where person_position said
            x = truth["keypoints"]["neck"][0] / img.width
            attrs["person_position"] = "left" if x < 0.4 else "right" if x > 0.6 else "center"
        if case == "low_quality":
            img = _degrade(img, rng)
        data = encode_jpeg(img, quality=92)
        return SyntheticSample(sid, case, data, img.width, img.height, mask, None if case == "no_person" else attrs,
                               truth["bbox"], truth["face_bbox"], truth["keypoints"], truth["n_people"],
                               list(truth["boxes"]))

    def _corrupt(self, sid: str, attrs, rng: np.random.Generator) -> SyntheticSample:
        kind = int(rng.integers(3))
        if kind == 0:  # a real JPEG cut short
            img, _, _ = self.render(attrs, rng)
            full = encode_jpeg(img, quality=92)
            data = full[: int(len(full) * rng.uniform(0.2, 0.7))]
        elif kind == 1:
            data = rng.integers(0, 256, int(rng.integers(64, 4096)), dtype=np.uint8).tobytes()
        else:
            data = b""
        return SyntheticSample(sid, "corrupt", data, 0, 0, None, None, None, None, None, 0)

    def batch(self, start: int, count: int, negative_fraction: float = 0.3) -> list[SyntheticSample]:
        return [self.sample(i, self.case_of(i, negative_fraction)) for i in range(start, start + count)]


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy blur and / or severe exposure error, then sensor noise (so it still looks photographic)."""
    a = np.asarray(img).astype(np.float32)
    mode = int(rng.integers(4))  # 0 blur, 1 under, 2 over, 3 blur + under/over
    if mode in (0, 3):
        a = cv2.GaussianBlur(a, (0, 0), rng.uniform(6.0, 9.0))
    if mode == 1 or (mode == 3 and rng.random() < 0.5):
        a = a * rng.uniform(0.1, 0.18)
    elif mode in (2, 3):
        a = a * rng.uniform(2.6, 3.6) + 40
    a = a + rng.standard_normal(a.shape, dtype=np.float32) * 2.5
    return _to_pil(a)
