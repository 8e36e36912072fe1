"""An image and its ATR label map painted together, and the shapes the painters fill."""

from __future__ import annotations

import math

import cv2
import numpy as np


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

    def paint(
        self,
        region: np.ndarray,
        color,
        label: int | None,
        pattern: str = "solid",
        scale: float = 10.0,
        mask: np.ndarray | None = None,
    ) -> None:
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

    def fill(
        self,
        draw,
        color,
        label: int | None,
        pattern: str = "solid",
        scale: float = 10.0,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
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


def _lerp(p0: tuple[float, float], p1: tuple[float, float], t: float) -> tuple[float, float]:
    return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


def _seg(p0, p1, thickness):
    """A band of ``thickness`` from p0 to p1 with flat ends (a hem), unlike ``_line``'s round caps."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = math.hypot(dx, dy) or 1.0
    ox, oy = -dy / n * thickness / 2, dx / n * thickness / 2
    return _poly(
        [(p0[0] + ox, p0[1] + oy), (p1[0] + ox, p1[1] + oy), (p1[0] - ox, p1[1] - oy), (p0[0] - ox, p0[1] - oy)]
    )


def _arc(cx, cy, ax, ay, start, end, thickness):
    return lambda a: cv2.ellipse(
        a, _pt(cx, cy), _pt(max(ax, 1), max(ay, 1)), 0, start, end, 1, max(1, int(round(thickness)))
    )


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
