"""Face size backend: OpenCV Haar cascades (frontal on grey and gamma-brightened passes, then the profile
cascade both ways round; cascades are config)."""

from __future__ import annotations

import os

import cv2
import cv2.data
import numpy as np
from PIL import Image

from cosmicman.filtering.backends import BackendUnavailable
from cosmicman.filtering.boxes import Box, nms
from cosmicman.filtering.pixels import gray

# The folder of the cascades shipped in the OpenCV wheel.
OPENCV_CASCADES: str = cv2.data.haarcascades


class HaarFaceDetector:
    """OpenCV Haar cascades (shipped in the wheel), in passes; the first pass that finds a face decides:

    1. the frontal cascade (``alt2``) on the grey image;
    2. the same on a gamma-brightened copy (dark skin in shadow);
    3. the profile cascade on the grey image and on its mirror (the cascade is trained on faces turned
       one way; the mirror finds the other): a face in profile or partly hidden, as in scikit-image's
       camera-man photo, where no frontal pass fires.

    Later passes run only when the earlier ones found nothing, so frontal faces are never displaced by a
    profile box, and an image costs one pass when its face is frontal. Boxes from all orientations are
    NMS'd. Faces below ``min_size`` px are not searched (keep it a little under the size rule so the score
    still says how small a face was). ``cascade`` / ``profile_cascade`` name a file shipped with OpenCV or
    a path to any cascade XML; ``profile_cascade=None`` drops pass 3.
    """

    name = "haar_face"

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        profile_cascade: str | None = "haarcascade_profileface.xml",
        min_size: int = 28,
        min_neighbors: int = 3,
        scale_factor: float = 1.1,
        gamma: float = 0.6,
        max_side: int = 1280,
    ) -> None:
        self.cascade, self.profile_cascade, self.min_size = cascade, profile_cascade, min_size
        self.min_neighbors, self.scale_factor, self.gamma, self.max_side = min_neighbors, scale_factor, gamma, max_side
        self._frontal: cv2.CascadeClassifier | None = None
        self._profile: cv2.CascadeClassifier | None = None
        self._lut = np.array([255 * (i / 255) ** gamma for i in range(256)], np.uint8)
        self._memo: tuple[Image.Image, list[Box]] | None = None

    def setup(self) -> None:
        if self._frontal is None:
            self._frontal = load_cascade(self.cascade)
            self._profile = load_cascade(self.profile_cascade) if self.profile_cascade else None

    def detect(self, img: Image.Image) -> list[Box]:
        if self._memo is not None and self._memo[0] is img:  # the person and face steps share one pass
            return list(self._memo[1])
        boxes = self._detect(img)
        self._memo = (img, boxes)
        return list(boxes)

    def _search(self, clf: cv2.CascadeClassifier, g: np.ndarray, ms: int, mirrored: bool = False) -> list[Box]:
        gg = np.ascontiguousarray(g[:, ::-1]) if mirrored else g
        found = clf.detectMultiScale(gg, self.scale_factor, self.min_neighbors, minSize=(ms, ms))
        boxes: list[Box] = []
        for x, y, w, h in found:
            x0 = g.shape[1] - x - w if mirrored else x
            boxes.append((float(x0), float(y), float(x0 + w), float(y + h)))
        return boxes

    def _detect(self, img: Image.Image) -> list[Box]:
        self.setup()
        frontal = self._frontal
        assert frontal is not None  # setup() loaded it
        g = gray(img)
        s = min(1.0, self.max_side / max(g.shape))
        if s < 1.0:
            g = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        ms = max(12, int(self.min_size * s))
        boxes = self._search(frontal, g, ms)
        if not boxes:
            boxes = self._search(frontal, cv2.LUT(g, self._lut), ms)
        if not boxes and self._profile is not None:
            boxes = self._search(self._profile, g, ms) + self._search(self._profile, g, ms, mirrored=True)
        boxes = [(x0 / s, y0 / s, x1 / s, y1 / s) for (x0, y0, x1, y1) in boxes]
        keep = nms(boxes, [(b[2] - b[0]) for b in boxes], iou=0.3, contain=0.6)
        return [boxes[i] for i in keep]


def load_cascade(name_or_path: str) -> cv2.CascadeClassifier:
    """A cascade shipped with OpenCV (by file name) or any cascade XML (by path)."""
    path = name_or_path if os.path.isfile(name_or_path) else os.path.join(OPENCV_CASCADES, name_or_path)
    clf = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
    if clf is None or clf.empty():
        raise BackendUnavailable(f"OpenCV cascade {name_or_path!r} is neither a file nor shipped in {OPENCV_CASCADES}")
    return clf
