"""Detection boxes and how overlapping detections of one thing are reduced to one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]


def nms(
    boxes: Sequence[Box], scores: Sequence[float] | np.ndarray, iou: float = 0.3, contain: float = 0.6
) -> list[int]:
    """Greedy NMS; also drops a box mostly inside a stronger one (``contain`` of the smaller's area)."""
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores, float)):
        a = boxes[i]
        aa = max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))
        ok = True
        for j in keep:
            b = boxes[j]
            ba = max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            if inter / (aa + ba - inter) > iou or inter / min(aa, ba) > contain:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def merge_columns(dets: Sequence[tuple[Box, float]], x_frac: float = 0.4) -> list[tuple[Box, float]]:
    """Keep the strongest box per person: a weaker box whose centre x lies within ``x_frac`` of the wider
    box's width from a kept box is the same standing person (HOG fires at several scales / heights on
    one body; people side by side are further apart than that)."""
    keep: list[tuple[Box, float]] = []
    for b, c in sorted(dets, key=lambda d: -d[1]):
        cx = (b[0] + b[2]) / 2
        if any(abs(cx - (k[0] + k[2]) / 2) < x_frac * max(b[2] - b[0], k[2] - k[0]) for k, _ in keep):
            continue
        keep.append((b, c))
    return keep
