"""Draws a face (eye sockets, eyes, facial hair, nostrils, lips, age lines) inside a person's head ellipse."""

from __future__ import annotations

import math

import cv2
import numpy as np

from cosmicman.simulation.canvas import (
    Canvas,
    _ellipse,
    _pt,
)
from cosmicman.simulation.palette import (
    FACE,
    LIPSTICK,
)


def draw_face(
    canvas: Canvas, attrs, hx, hy, h, skin, hair_rgb, cartoon: bool, woman: bool, mask: np.ndarray | None = None
) -> None:
    img = canvas.img
    dark = tuple(int(c * 0.72) for c in skin)
    ey = hy - 0.04 * h
    if not cartoon:  # eye sockets and the nose shadow
        for sx in (-1, 1):
            cv2.ellipse(
                img,
                _pt(hx + sx * 0.17 * h, ey - 0.01 * h),
                _pt(0.14 * h, 0.09 * h),
                0,
                0,
                360,
                tuple(int(c * 0.66) for c in skin),
                -1,
            )
        cv2.line(
            img, _pt(hx + 0.04 * h, ey + 0.02 * h), _pt(hx + 0.06 * h, hy + 0.17 * h), dark, max(1, int(0.035 * h))
        )
        cv2.ellipse(
            img,
            _pt(hx, hy + 0.06 * h),
            _pt(0.035 * h, 0.12 * h),
            0,
            0,
            360,
            tuple(min(255, int(c * 1.08)) for c in skin),
            -1,
        )
    brow_rgb = tuple(int(c * 0.6) for c in (hair_rgb or (70, 45, 30)))
    for sx in (-1, 1):
        exc = hx + sx * 0.17 * h
        # sclera dimmed towards the skin: in photos lids shade the eye, so the eye band stays darker
        # than the cheeks for every skin tone (the cue frontal-face detectors rely on)
        sclera = tuple(int(0.55 * 245 + 0.45 * c) for c in skin)
        cv2.ellipse(img, _pt(exc, ey), _pt(0.075 * h, 0.036 * h), 0, 0, 360, sclera, -1)
        cv2.circle(img, _pt(exc, ey), max(1, int(round(0.042 * h))), (60, 40, 28), -1)
        cv2.circle(img, _pt(exc, ey), max(1, int(round(0.02 * h))), (10, 10, 10), -1)
        cv2.line(
            img,
            _pt(exc - 0.1 * h, ey - 0.1 * h + sx * 0),
            _pt(exc + 0.1 * h, ey - 0.12 * h),
            brow_rgb,
            max(2, int(round((0.04 if not woman else 0.03) * h))),
        )
        if woman:
            cv2.line(
                img,
                _pt(exc - 0.09 * h, ey - 0.02 * h),
                _pt(exc + 0.09 * h, ey - 0.035 * h),
                (20, 20, 20),
                max(1, int(0.015 * h)),
            )
    facial_hair = attrs.get("facial_hair", "none")
    # the hair's colour, always darker than the skin (a blonde beard would light up a dark face)
    beard_rgb = tuple(int(min(0.45 * c + 0.4 * k, 0.65 * k)) for c, k in zip(hair_rgb or (66, 46, 34), skin))
    if facial_hair == "beard":  # chin and jaw below the mouth; cheeks stay bare for face detectors (Face)
        canvas.fill(_ellipse(hx, hy + 0.34 * h, 0.27 * h, 0.17 * h, 0, 0, 180), beard_rgb, FACE, mask=mask)
    # nostrils and mouth
    for sx in (-1, 1):
        cv2.circle(
            img, _pt(hx + sx * 0.045 * h, hy + 0.17 * h), max(1, int(0.022 * h)), tuple(int(c * 0.5) for c in skin), -1
        )
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
        cv2.line(
            img,
            _pt(hx - 0.12 * h, hy + 0.3 * h),
            _pt(hx + 0.12 * h, hy + 0.3 * h),
            (60, 20, 24),
            max(1, int(0.015 * h)),
        )
    if attrs["age"] == "elderly" and not cartoon:  # forehead and smile lines
        for k in range(2):
            y = hy - (0.27 + 0.06 * k) * h
            cv2.line(img, _pt(hx - 0.16 * h, y), _pt(hx + 0.16 * h, y), dark, 1)
        for sx in (-1, 1):
            cv2.line(img, _pt(hx + sx * 0.1 * h, hy + 0.14 * h), _pt(hx + sx * 0.16 * h, hy + 0.3 * h), dark, 1)
