"""Backgrounds, and the camera finish (shading, blur, sensor noise, exposure) or the flat cartoon finish."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from cosmicman.simulation.canvas import Canvas, _pt
from cosmicman.simulation.palette import BACKDROPS, COLORS, FLOORS, GROUNDS, PLAIN_BACKGROUNDS, WALLS


def draw_background(
    canvas: Canvas, kind: str, rng: np.random.Generator, cartoon: bool = False, color: str | None = None
) -> None:
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
                cv2.ellipse(
                    img,
                    _pt(cx + (k - 1) * w * 0.07, cy + (k % 2) * 4),
                    _pt(w * 0.08, h * 0.02),
                    0,
                    0,
                    360,
                    (244, 246, 250),
                    -1,
                )
        for _ in range(int(rng.integers(2, 5))):
            bx = rng.uniform(0, w)
            bw = w * rng.uniform(0.06, 0.14)
            cv2.ellipse(img, _pt(bx, horizon), _pt(bw, bw * 0.6), 0, 180, 360, (52, 96, 48), -1)
    else:
        raise ValueError(f"unknown background {kind!r}")


def photo_finish(
    canvas: Canvas,
    rng: np.random.Generator,
    noise: np.ndarray,
    fg: np.ndarray | None,
    person_h: float,
    brightness: float = 1.0,
) -> np.ndarray:
    """Shading near part borders, a directional light, optical blur, the scene's ``brightness``
    and sensor noise -> float image."""
    img: np.ndarray = canvas.img.astype(np.float32)
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
    return noise[y : y + h, x : x + w]


def cartoon_finish(canvas: Canvas, fg: np.ndarray) -> np.ndarray:
    """Black outlines on every label border of the person; flat colours otherwise."""
    lab = fg.astype(np.int16)
    edge: np.ndarray = np.zeros(lab.shape, np.uint8)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge = cv2.dilate(edge, np.ones((2, 2), np.uint8))
    img = canvas.img.copy()
    img[edge > 0] = (16, 16, 16)
    return img.astype(np.float32)


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
