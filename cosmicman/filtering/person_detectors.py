"""Person count backends.

:class:`HogFacePersonDetector` (local): faces that look like heads, plus OpenCV's default people HOG for
bodies no face explains (HOG alone misses ~5-10% of rendered people: long dresses, raised arms, bold
stripes); :class:`HogPersonDetector` alone; production :class:`TransformersPersonDetector` (an
object-detection model id, COCO "person").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.filtering.backends import BackendUnavailable, PersonDetector
from cosmicman.filtering.boxes import Box, merge_columns, nms
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.pixels import gray


class HogPersonDetector:
    """OpenCV's default HOG people detector (Dalal-Triggs, 64x128 window, person ~96 px tall).

    The image is scaled to ``work_height`` and padded so that a person filling the frame still fits
    the window at some pyramid level; boxes are mapped back and NMS'd.
    """

    name = "hog"

    def __init__(
        self,
        work_height: int = 320,
        hit_threshold: float = 0.0,
        min_weight: float = 0.3,
        win_stride: int = 4,
        scale: float = 1.05,
    ) -> None:
        self.work_height, self.hit_threshold, self.min_weight = work_height, hit_threshold, min_weight
        self.win_stride, self.scale = win_stride, scale
        self._hog: cv2.HOGDescriptor | None = None

    def setup(self) -> None:
        self._descriptor()

    def _descriptor(self) -> cv2.HOGDescriptor:
        if self._hog is None:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
            self._hog = hog
        return self._hog

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        hog = self._descriptor()
        g = gray(img)
        sc = self.work_height / g.shape[0]
        g = cv2.resize(g, None, fx=sc, fy=sc, interpolation=cv2.INTER_AREA)
        pad = self.work_height // 10
        g = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        rects, found = hog.detectMultiScale(
            g,
            hitThreshold=self.hit_threshold,
            winStride=(self.win_stride, self.win_stride),
            padding=(8, 8),
            scale=self.scale,
        )
        weights = np.ravel(found) if len(found) else np.zeros(0)
        boxes: list[Box] = [
            ((x - pad) / sc, (y - pad) / sc, (x + w - pad) / sc, (y + h - pad) / sc) for (x, y, w, h) in rects
        ]
        sel = [i for i, wgt in enumerate(weights) if wgt >= self.min_weight]
        boxes, weights = [boxes[i] for i in sel], weights[sel]
        return merge_columns([(boxes[i], float(weights[i])) for i in nms(boxes, weights)])


def has_colour(rgb: np.ndarray, min_spread: float = 3.0) -> bool:
    """Whether an RGB image carries colour: the mean spread between its channels (max - min, on a
    subsampled grid) reaches ``min_spread`` grey levels. A grey photo stored as RGB (or as JPEG, whose
    chroma rounding leaves a spread of a level or two) has none, so no skin test can apply to it."""
    grid = rgb[::4, ::4].astype(np.int16)
    return float((grid.max(-1) - grid.min(-1)).mean()) >= min_spread


def skin_fraction(rgb: np.ndarray, box: Box) -> float:
    """Share of skin-coloured pixels (the classical YCrCb range, which spans light to dark skin) in the
    central half of ``box``: a Haar "face" on a dotted shirt or a picture frame has almost none."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = x1 - x0, y1 - y0
    patch = rgb[max(0, y0 + h // 4) : max(0, y1 - h // 4), max(0, x0 + w // 4) : max(0, x1 - w // 4)]
    if patch.size == 0:
        return 0.0
    ycc = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2YCrCb).astype(np.int16)
    cr, cb = ycc[..., 1], ycc[..., 2]
    return float(((cr >= 133) & (cr <= 180) & (cb >= 77) & (cb <= 130)).mean())


class HogFacePersonDetector:
    """People counted from heads first, bodies second.

    Measured on renders: HOG alone misses ~5-10% of people (long dresses, raised arms, bold stripes) and
    splits or invents bodies beside a person (wall pictures, half bodies); Haar fires on patterns. So a
    person is a skin-coloured face that is neither directly below another head (a face-like pattern on
    the same body) nor far larger than the heads already found; a confident HOG body adds a person only
    when no head lies in its column. With no head at all, the HOG bodies count. A grey photo has no skin
    colour, so there every face counts as a head (scikit-image's camera man: a profile face, no HOG body).
    """

    name = "face+hog"

    def __init__(
        self,
        hog: HogPersonDetector | None = None,
        faces: HaarFaceDetector | None = None,
        x_frac: float = 0.4,
        min_extra_weight: float = 0.6,
        min_body_weight: float = 1.0,
        min_skin: float = 0.4,
        max_face_ratio: float = 1.6,
    ) -> None:
        self.hog = hog or HogPersonDetector(min_weight=0.0)
        self.faces = faces or HaarFaceDetector(min_size=20)
        self.x_frac, self.min_extra_weight, self.min_body_weight = x_frac, min_extra_weight, min_body_weight
        self.min_skin, self.max_face_ratio = min_skin, max_face_ratio

    def setup(self) -> None:
        self.hog.setup()
        self.faces.setup()

    def heads(self, img: Image.Image) -> list[Box]:
        rgb = np.asarray(img.convert("RGB"))
        skin_test = has_colour(rgb)  # a grey photo (the camera man) has no skin colour to test
        heads: list[Box] = []
        for f in sorted(self.faces.detect(img), key=lambda b: b[1]):  # top first: heads sit above bodies
            if skin_test and skin_fraction(rgb, f) < self.min_skin:
                continue
            fc, fw = (f[0] + f[2]) / 2, f[2] - f[0]
            if any(abs(fc - (g[0] + g[2]) / 2) < g[2] - g[0] and f[1] > g[3] - 0.25 * (g[3] - g[1]) for g in heads):
                continue
            if heads and fw > self.max_face_ratio * max(g[2] - g[0] for g in heads):
                continue
            heads.append(f)
        return heads

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        bodies = merge_columns(self.hog.detect(img), self.x_frac)
        bodies = bodies[:1] + [d for d in bodies[1:] if d[1] >= self.min_extra_weight]
        heads = self.heads(img)
        if not heads:
            return bodies
        people: list[tuple[Box, float]] = []
        for f in heads:  # a nominal body box under each head, confidence 1
            fw = f[2] - f[0]
            people.append(((f[0] - fw, f[1], f[2] + fw, f[3] + 6 * fw), 1.0))
        for b, c in bodies:
            bc, bw = (b[0] + b[2]) / 2, b[2] - b[0]
            if c >= self.min_body_weight and all(abs(bc - (f[0] + f[2]) / 2) > 0.75 * bw for f in heads):
                people.append((b, c))
        return people


def evaluate_person_detector(
    det: PersonDetector, images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]
) -> dict[str, float]:
    """Count accuracy, and precision / recall of detections matched to true boxes (centre inside box)."""
    det.setup()
    tp = fp = fn = correct = 0
    for img, truth in zip(images, boxes):
        found = det.detect(img)
        used: set[int] = set()
        for b, _ in found:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            hit = next(
                (j for j, t in enumerate(truth) if j not in used and t[0] <= cx <= t[2] and t[1] <= cy <= t[3]), None
            )
            if hit is None:
                fp += 1
            else:
                used.add(hit)
                tp += 1
        fn += len(truth) - len(used)
        correct += len(found) == len(truth)
    return {
        "count_accuracy": correct / max(1, len(images)),
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


class TransformersPersonDetector:
    """Production person detector: a transformers object-detection model (``person`` class).

    Loads ``AutoModelForObjectDetection`` + ``AutoImageProcessor`` from a hub id or a local folder in
    ``setup()``; e.g. ``PekingU/rtdetr_r50vd_coco_o365`` or ``hustvl/yolos-small`` (COCO label "person").
    """

    name = "transformers_detector"

    def __init__(
        self,
        model_id: str = "PekingU/rtdetr_r50vd_coco_o365",
        threshold: float = 0.5,
        local_files_only: bool = False,
        device: str = "cpu",
    ) -> None:
        self.model_id, self.threshold = model_id, threshold
        self.local_files_only, self.device = local_files_only, device
        # transformers models and processors, loaded in setup()
        self._model: Any = None
        self._processor: Any = None
        self._person_ids: set[int] = set()

    def setup(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            self._processor = AutoImageProcessor.from_pretrained(self.model_id, local_files_only=self.local_files_only)
            self._model = (
                AutoModelForObjectDetection.from_pretrained(self.model_id, local_files_only=self.local_files_only)
                .to(self.device)
                .eval()
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with what is needed
            raise BackendUnavailable(
                f"TransformersPersonDetector needs object-detection weights for {self.model_id!r} "
                f"(a hub id reachable from this worker, or a local folder with config.json, the weights and "
                f"preprocessor_config.json; local_files_only={self.local_files_only}): {type(exc).__name__}: {exc}"
            ) from exc
        labels = self._model.config.id2label
        self._person_ids = {int(k) for k, v in labels.items() if str(v).lower() == "person"}
        if not self._person_ids:
            raise BackendUnavailable(f"{self.model_id!r} has no 'person' label in id2label")

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        import torch

        self.setup()
        inputs = self._processor(images=img, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self._model(**inputs)
        res = self._processor.post_process_object_detection(
            out, threshold=self.threshold, target_sizes=[(img.height, img.width)]
        )[0]
        dets: list[tuple[Box, float]] = [
            ((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(s))
            for b, s, lab in zip(res["boxes"], res["scores"], res["labels"])
            if int(lab) in self._person_ids
        ]
        keep = nms([d[0] for d in dets], [d[1] for d in dets], iou=0.5, contain=0.9)
        return [dets[i] for i in keep]
