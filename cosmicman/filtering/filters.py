"""The offline filter chain: decode -> size -> fake person -> quality -> person count -> face size.

One interface for every backend, an ordered chain, every score an image reached stored, and one decision
with its reason (``kept`` or the first rule it failed). Dagster-free: the ``filtered_images`` asset
builds a :class:`FilterChain` once per worker (``setup()`` loads models once) and calls ``process``.

Size rule. The paper says images "smaller than 640x1280" are removed, which does not say whether the
numbers bound width x height, the short x long side, or the pixel count. Our reading, for portrait and
landscape images alike: keep an image only if ``short side >= min_short_side`` AND ``long side >=
min_long_side`` (production 640 / 1280, i.e. at least a 1:2 portrait of 640x1280 or any rotation of it).
Both numbers are config.

Defaults. :class:`FilterConfig` defaults suit the synthetic world's 320x640 renders (size 256 / 512,
face 52 px); :meth:`FilterConfig.production` gives the paper's values (640 / 1280, largest face 224 px).

Backends (local ones run offline on CPU with weights shipped in pip wheels; production ones load real
weights in ``setup()`` and raise :class:`BackendUnavailable` naming what they need when weights or
packages are missing):

* person count: :class:`HogFacePersonDetector`: faces (below) that look like heads, plus OpenCV's default
  people HOG for bodies no face explains (HOG alone misses ~5-10% of rendered people: long dresses,
  raised arms, bold stripes); :class:`HogPersonDetector` alone; production
  :class:`TransformersPersonDetector` (an object-detection model id, COCO "person").
* face size: :class:`HaarFaceDetector` (OpenCV frontal cascade on grey and gamma-brightened passes, then
  the profile cascade both ways round; cascades are config).
* fake person: an image embedding + :class:`LogisticHead`, trained from a folder in the Human-Art layout
  (:class:`HumanArtFolder`). Locally :class:`OfflineImageFeatures` (flatness / noise / outline / colour
  statistics); production :class:`ClipImageEmbedder`.
* quality: :class:`OfflineQualityScorer` (sharpness, exposure, noise; documented ranges and what the
  default threshold rejects); production :class:`PyiqaQualityScorer` (LIQE) or :class:`HpsV2Scorer`.
  Every scorer returns its raw components and ``quality`` in [0, 1]; the chain stores them all.
"""
from __future__ import annotations

import io
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cv2
import fsspec
import numpy as np
from PIL import Image

from cosmicman.core.imageio import ImageDecodeError, decode_image

DECISIONS = ("kept", "corrupt", "too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face")
Box = tuple[float, float, float, float]


class BackendUnavailable(RuntimeError):
    """A production backend cannot load its model; the message says what it needs."""


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the chain. Defaults: local (320x640 renders). ``production()``: the paper's values.

    - ``min_short_side`` / ``min_long_side``: size rule, see the module docstring for our reading.
    - ``max_fake_score``: reject as ``fake_person`` when P(fake) from the head exceeds it.
    - ``min_quality``: reject as ``low_quality`` below it (``OfflineQualityScorer`` score in [0, 1]).
    - exactly one person; ``min_face_px``: the largest detected face's longer side must reach it.
    """
    min_short_side: int = 256
    min_long_side: int = 512
    min_face_px: int = 52
    max_fake_score: float = 0.5
    min_quality: float = 0.5
    max_people: int = 1

    @classmethod
    def production(cls) -> FilterConfig:
        return cls(min_short_side=640, min_long_side=1280, min_face_px=224)


@dataclass
class FilterResult:
    decision: str
    scores: dict[str, float | None]
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.decision == "kept"


def _gray(img: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2GRAY)


# ============================================================================ backend interfaces


@runtime_checkable
class PersonDetector(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        """Person boxes (x0, y0, x1, y1) in image pixels with confidences, after NMS."""


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def setup(self) -> None: ...

    def detect(self, img: Image.Image) -> list[Box]: ...


@runtime_checkable
class Embedder(Protocol):
    name: str

    def setup(self) -> None: ...

    def embed(self, img: Image.Image) -> np.ndarray: ...


@runtime_checkable
class QualityScorer(Protocol):
    name: str

    def setup(self) -> None: ...

    def score(self, img: Image.Image) -> dict[str, float]:
        """Component scores plus ``quality`` in [0, 1]."""


def nms(boxes: Sequence[Box], scores: Sequence[float], iou: float = 0.3, contain: float = 0.6) -> list[int]:
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


# ================================================================================= person count


class HogPersonDetector:
    """OpenCV's default HOG people detector (Dalal-Triggs, 64x128 window, person ~96 px tall).

    The image is scaled to ``work_height`` and padded so that a person filling the frame still fits
    the window at some pyramid level; boxes are mapped back and NMS'd.
    """
    name = "hog"

    def __init__(self, work_height: int = 320, hit_threshold: float = 0.0, min_weight: float = 0.3,
                 win_stride: int = 4, scale: float = 1.05) -> None:
        self.work_height, self.hit_threshold, self.min_weight = work_height, hit_threshold, min_weight
        self.win_stride, self.scale = win_stride, scale
        self._hog: cv2.HOGDescriptor | None = None

    def setup(self) -> None:
        if self._hog is None:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
            self._hog = hog

    def detect(self, img: Image.Image) -> list[tuple[Box, float]]:
        self.setup()
        g = _gray(img)
        sc = self.work_height / g.shape[0]
        g = cv2.resize(g, None, fx=sc, fy=sc, interpolation=cv2.INTER_AREA)
        pad = self.work_height // 10
        g = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        rects, weights = self._hog.detectMultiScale(g, hitThreshold=self.hit_threshold,
                                                    winStride=(self.win_stride, self.win_stride),
                                                    padding=(8, 8), scale=self.scale)
        weights = np.ravel(weights) if len(weights) else np.zeros(0)
        boxes = [((x - pad) / sc, (y - pad) / sc, (x + w - pad) / sc, (y + h - pad) / sc)
                 for (x, y, w, h) in rects]
        sel = [i for i, wgt in enumerate(weights) if wgt >= self.min_weight]
        boxes, weights = [boxes[i] for i in sel], weights[sel]
        return merge_columns([(boxes[i], float(weights[i])) for i in nms(boxes, weights)])


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
    patch = rgb[max(0, y0 + h // 4):max(0, y1 - h // 4), max(0, x0 + w // 4):max(0, x1 - w // 4)]
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

    def __init__(self, hog: HogPersonDetector | None = None, faces: HaarFaceDetector | None = None,
                 x_frac: float = 0.4, min_extra_weight: float = 0.6, min_body_weight: float = 1.0,
                 min_skin: float = 0.4, max_face_ratio: float = 1.6) -> None:
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


def evaluate_person_detector(det: PersonDetector, images: Sequence[Image.Image],
                             boxes: Sequence[Sequence[Box]]) -> dict[str, float]:
    """Count accuracy, and precision / recall of detections matched to true boxes (centre inside box)."""
    det.setup()
    tp = fp = fn = correct = 0
    for img, truth in zip(images, boxes):
        found = det.detect(img)
        used: set[int] = set()
        for (b, _) in found:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            hit = next((j for j, t in enumerate(truth) if j not in used and t[0] <= cx <= t[2] and t[1] <= cy <= t[3]), None)
            if hit is None:
                fp += 1
            else:
                used.add(hit)
                tp += 1
        fn += len(truth) - len(used)
        correct += len(found) == len(truth)
    return {"count_accuracy": correct / max(1, len(images)), "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn), "tp": tp, "fp": fp, "fn": fn}


class TransformersPersonDetector:
    """Production person detector: a transformers object-detection model (``person`` class).

    Loads ``AutoModelForObjectDetection`` + ``AutoImageProcessor`` from a hub id or a local folder in
    ``setup()``; e.g. ``PekingU/rtdetr_r50vd_coco_o365`` or ``hustvl/yolos-small`` (COCO label "person").
    """
    name = "transformers_detector"

    def __init__(self, model_id: str = "PekingU/rtdetr_r50vd_coco_o365", threshold: float = 0.5,
                 local_files_only: bool = False, device: str = "cpu") -> None:
        self.model_id, self.threshold, self.local_files_only, self.device = model_id, threshold, local_files_only, device
        self._model = self._processor = None
        self._person_ids: set[int] = set()

    def setup(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import AutoImageProcessor, AutoModelForObjectDetection
            self._processor = AutoImageProcessor.from_pretrained(self.model_id, local_files_only=self.local_files_only)
            self._model = AutoModelForObjectDetection.from_pretrained(
                self.model_id, local_files_only=self.local_files_only).to(self.device).eval()
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
        res = self._processor.post_process_object_detection(out, threshold=self.threshold,
                                                            target_sizes=[(img.height, img.width)])[0]
        dets = [(tuple(float(v) for v in b), float(s)) for b, s, lab in
                zip(res["boxes"], res["scores"], res["labels"]) if int(lab) in self._person_ids]
        keep = nms([d[0] for d in dets], [d[1] for d in dets], iou=0.5, contain=0.9)
        return [dets[i] for i in keep]


# ==================================================================================== face size


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

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml",
                 profile_cascade: str | None = "haarcascade_profileface.xml", min_size: int = 28,
                 min_neighbors: int = 3, scale_factor: float = 1.1, gamma: float = 0.6,
                 max_side: int = 1280) -> None:
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
        for (x, y, w, h) in found:
            x0 = g.shape[1] - x - w if mirrored else x
            boxes.append((float(x0), float(y), float(x0 + w), float(y + h)))
        return boxes

    def _detect(self, img: Image.Image) -> list[Box]:
        self.setup()
        g = _gray(img)
        s = min(1.0, self.max_side / max(g.shape))
        if s < 1.0:
            g = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        ms = max(12, int(self.min_size * s))
        boxes = self._search(self._frontal, g, ms)
        if not boxes:
            boxes = self._search(self._frontal, cv2.LUT(g, self._lut), ms)
        if not boxes and self._profile is not None:
            boxes = self._search(self._profile, g, ms) + self._search(self._profile, g, ms, mirrored=True)
        boxes = [(x0 / s, y0 / s, x1 / s, y1 / s) for (x0, y0, x1, y1) in boxes]
        keep = nms(boxes, [(b[2] - b[0]) for b in boxes], iou=0.3, contain=0.6)
        return [boxes[i] for i in keep]


def load_cascade(name_or_path: str) -> cv2.CascadeClassifier:
    """A cascade shipped with OpenCV (by file name) or any cascade XML (by path)."""
    path = name_or_path if os.path.isfile(name_or_path) else os.path.join(cv2.data.haarcascades, name_or_path)
    clf = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
    if clf is None or clf.empty():
        raise BackendUnavailable(f"OpenCV cascade {name_or_path!r} is neither a file nor shipped in "
                                 f"{cv2.data.haarcascades}")
    return clf


# ================================================================================= fake person


class OfflineImageFeatures:
    """A hand-made image embedding standing in for CLIP locally (documented, 10 dims).

    Computed on the image capped to 640 px on its long side:
    0 flat fraction: unclipped pixels whose 3x3 grey neighbourhood is constant (cartoons ~0.8, photos ~0)
    1 noise sigma (Immerkaer's Laplacian-difference estimate), 2 log(1 + noise)
    3 unique-colour ratio (6-bit RGB codes / 4096), 4 dark-outline fraction (near-black pixels on edges)
    5 edge density (Canny), 6 mean saturation, 7 saturation std, 8 grey std / 64, 9 mean gradient / 32
    """
    name = "offline_features"
    dim = 10

    def setup(self) -> None:
        pass

    def embed(self, img: Image.Image) -> np.ndarray:
        a = np.asarray(img.convert("RGB"))
        s = min(1.0, 640 / max(a.shape[:2]))
        if s < 1.0:
            a = cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        g = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        k = np.ones((3, 3), np.uint8)
        rng = cv2.dilate(g, k).astype(np.int16) - cv2.erode(g, k).astype(np.int16)
        unclipped = (g > 3) & (g < 252)
        flat = float(((rng == 0) & unclipped).sum()) / max(1, int(unclipped.sum()))
        lap = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
        conv = cv2.filter2D(g.astype(np.float32), -1, lap)[1:-1, 1:-1]
        noise = float(math.sqrt(math.pi / 2) * np.abs(conv).mean() / 6.0)
        codes = ((a[..., 0] >> 2).astype(np.int32) << 12) | ((a[..., 1] >> 2).astype(np.int32) << 6) | (a[..., 2] >> 2)
        uniq = len(np.unique(codes)) / 4096.0
        edges = cv2.Canny(g, 60, 160) > 0
        dark = (g < 40)
        outline = float((cv2.dilate(edges.astype(np.uint8), k) > 0)[dark].mean()) if dark.any() else 0.0
        outline *= float(dark.mean()) * 10
        hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)
        sat = hsv[..., 1].astype(np.float32) / 255
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
        grad = float(np.sqrt(gx * gx + gy * gy).mean())
        return np.array([flat, noise, math.log1p(noise), uniq, outline, float(edges.mean()), float(sat.mean()),
                         float(sat.std()), float(g.std()) / 64, grad / 32], np.float32)


class ClipImageEmbedder:
    """Production embedding: a CLIP vision tower's image features (the paper fine-tunes Eva-CLIP)."""
    name = "clip"

    def __init__(self, model_id: str = "openai/clip-vit-large-patch14", local_files_only: bool = False,
                 device: str = "cpu") -> None:
        self.model_id, self.local_files_only, self.device = model_id, local_files_only, device
        self._model = self._processor = None

    def setup(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import CLIPImageProcessor, CLIPModel
            self._processor = CLIPImageProcessor.from_pretrained(self.model_id, local_files_only=self.local_files_only)
            self._model = CLIPModel.from_pretrained(self.model_id, local_files_only=self.local_files_only).to(self.device).eval()
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailable(
                f"ClipImageEmbedder needs CLIP weights for {self.model_id!r} (hub id or local folder with "
                f"config.json, weights and preprocessor_config.json; local_files_only={self.local_files_only}): "
                f"{type(exc).__name__}: {exc}") from exc

    def embed(self, img: Image.Image) -> np.ndarray:
        import torch
        self.setup()
        inputs = self._processor(images=img.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            f = self._model.get_image_features(**inputs)
        f = getattr(f, "pooler_output", f)
        f = f / f.norm(dim=-1, keepdim=True)
        return f[0].float().cpu().numpy()


@dataclass
class LogisticHead:
    """A linear head on standardised embeddings: P(fake) = sigmoid(w . (x - mean) / std + b)."""
    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    embedder: str = ""

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = ((np.atleast_2d(x) - self.mean) / self.std) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, weight=self.weight, bias=np.array([self.bias]), mean=self.mean, std=self.std,
                 embedder=np.array(self.embedder))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LogisticHead:
        d = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(d["weight"], float(d["bias"][0]), d["mean"], d["std"], str(d["embedder"]))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 300) -> LogisticHead:
    """L2-regularised logistic regression by Newton steps (small dims) on standardised features."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = np.hstack([(X - mean) / std, np.ones((len(X), 1))])
    w = np.zeros(Z.shape[1])
    reg = l2 * np.eye(Z.shape[1])
    reg[-1, -1] = 0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(Z @ w, -50, 50)))
        g = Z.T @ (p - y) / len(y) + reg @ w
        Hm = (Z * (p * (1 - p))[:, None]).T @ Z / len(y) + reg
        step = np.linalg.solve(Hm, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticHead(w[:-1].astype(np.float32), float(w[-1]), mean.astype(np.float32), std.astype(np.float32))


def held_out_split(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, stratified by group so every group of two or more images is measured."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    train, val = [], []
    for g in sorted(set(groups.tolist())):
        idx = rng.permutation(np.flatnonzero(groups == g))
        n_val = min(len(idx) - 1, max(1, int(round(len(idx) * val_fraction)))) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.asarray(train, int), np.asarray(val, int)


def fit_fake_person_head(X: np.ndarray, labels: Sequence[int], groups: Sequence[str] | None = None,
                         val_fraction: float = 0.25, seed: int = 0) -> tuple[LogisticHead, dict[str, float]]:
    """Fit the head (label 1 = fake) on embeddings ``X``; accuracy on a held-out split, then refit on all.

    ``groups`` are '/'-separated names (Human-Art: ``real_human/dance``); the split is stratified by
    group and held-out accuracy is reported for every prefix: ``val_accuracy/real_human`` (the scenario
    group) and ``val_accuracy/real_human/dance`` (the scenario), with ``n_val/...`` beside each.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(labels, int)
    if len(set(y.tolist())) < 2:
        raise ValueError("the fake-person head needs both real (0) and fake (1) images")
    names = list(groups) if groups is not None else [""] * len(y)
    tr, val = held_out_split(names, val_fraction, seed)
    head = fit_logistic(X[tr], y[tr])
    pv = head.prob(X[val])
    correct = (pv > 0.5).astype(int) == y[val]
    metrics: dict[str, float] = {
        "val_accuracy": float(correct.mean()), "n_train": int(len(tr)), "n_val": int(len(val)),
        "train_accuracy": float(((head.prob(X[tr]) > 0.5).astype(int) == y[tr]).mean()),
        "val_min_margin": float(np.min(np.where(y[val] == 1, pv - 0.5, 0.5 - pv)))}
    if groups is not None:
        per: dict[str, list[bool]] = {}
        for i, ok in zip(val, correct):
            parts = names[i].split("/")
            for k in range(1, len(parts) + 1):
                per.setdefault("/".join(parts[:k]), []).append(bool(ok))
        for name in sorted(per):
            metrics[f"val_accuracy/{name}"] = float(np.mean(per[name]))
            metrics[f"n_val/{name}"] = len(per[name])
    return fit_logistic(X, y), metrics


def train_fake_person_head(images: Sequence[Image.Image], labels: Sequence[int], embedder: Embedder | None = None,
                           val_fraction: float = 0.25, seed: int = 0,
                           groups: Sequence[str] | None = None) -> tuple[LogisticHead, dict[str, float]]:
    """Embed ``images`` and fit the head (label 1 = fake); see :func:`fit_fake_person_head` for metrics."""
    embedder = embedder or OfflineImageFeatures()
    embedder.setup()
    head, metrics = fit_fake_person_head(np.stack([embedder.embed(im) for im in images]), labels, groups,
                                         val_fraction, seed)
    head.embedder = embedder.name
    return head, metrics


# Human-Art (Ju et al., CVPR 2023) keeps natural and artificial people in separate trees:
# images/real_human/<scenario>/ (acrobatics, cosplay, dance, drama, movie) and
# images/2D_virtual_human/<scenario>/ (cartoon, oil_painting, sketch, ...) and
# images/3D_virtual_human/<scenario>/ (garage_kits, relief, sculpture). Label 1 = fake person.
HUMANART_GROUPS = {"real_human": 0, "2D_virtual_human": 1, "3D_virtual_human": 1}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class LabelledImage:
    path: str       # as the folder's filesystem names it
    group: str      # a HUMANART_GROUPS key
    scenario: str
    label: int      # 1 = fake person

    @property
    def stratum(self) -> str:
        return f"{self.group}/{self.scenario}"


class HumanArtFolder:
    """Labelled real / fake people in the Human-Art layout, at a local path or any fsspec URL.

    ``url`` is the dataset root (holding ``images/``) or the ``images`` folder itself. Every image file
    under ``<group>/<scenario>/`` (any depth below the scenario) is one example; files directly under a
    group, hidden files and other suffixes are ignored; a group that is absent is simply empty (the
    synthetic default has no 3D people). Annotation JSONs are not needed: the tree is the label.
    """

    def __init__(self, url: str, **storage_options) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        root = root.rstrip("/")
        self.root = posixpath.join(root, "images") if self.fs.isdir(posixpath.join(root, "images")) else root

    def entries(self) -> list[LabelledImage]:
        found: list[LabelledImage] = []
        for group, label in HUMANART_GROUPS.items():
            base = posixpath.join(self.root, group)
            if not self.fs.isdir(base):
                continue
            for path in sorted(self.fs.find(base)):
                parts = path[len(base):].strip("/").split("/")
                if (len(parts) < 2 or any(p.startswith(".") for p in parts)
                        or not parts[-1].lower().endswith(IMAGE_SUFFIXES)):
                    continue
                found.append(LabelledImage(path, group, parts[0], label))
        if not found:
            raise FileNotFoundError(
                f"no images in the Human-Art layout under {self.url!r}: expected images/real_human/<scenario>/*, "
                f"images/2D_virtual_human/<scenario>/* and/or images/3D_virtual_human/<scenario>/*")
        return found

    def read_bytes(self, entry: LabelledImage) -> bytes:
        return self.fs.cat_file(entry.path)


def train_fake_person_head_from_folder(folder: HumanArtFolder, embedder: Embedder | None = None,
                                       val_fraction: float = 0.25,
                                       seed: int = 0) -> tuple[LogisticHead, dict[str, float]]:
    """Train the head on a Human-Art-layout folder; held-out accuracy per scenario group and scenario.

    Images are embedded one at a time (memory holds embeddings, not pixels); undecodable files are
    counted in ``n_unreadable`` and skipped.
    """
    embedder = embedder or OfflineImageFeatures()
    embedder.setup()
    X, labels, strata, unreadable = [], [], [], 0
    for entry in folder.entries():
        try:
            img = decode_image(folder.read_bytes(entry))
        except ImageDecodeError:
            unreadable += 1
            continue
        X.append(embedder.embed(img))
        labels.append(entry.label)
        strata.append(entry.stratum)
    if len(set(labels)) < 2:
        raise ValueError(f"{folder.url!r} needs both real_human and 2D/3D_virtual_human images")
    head, metrics = fit_fake_person_head(np.stack(X), labels, strata, val_fraction, seed)
    head.embedder = embedder.name
    metrics.update(n_images=len(labels), n_fake=int(sum(labels)), n_unreadable=unreadable)
    return head, metrics


class FakePersonClassifier:
    """Embedding + trainable head -> P(fake person)."""
    name = "fake_person"

    def __init__(self, head: LogisticHead | None, embedder: Embedder | None = None) -> None:
        self.head = head
        self.embedder = embedder or OfflineImageFeatures()

    def setup(self) -> None:
        if self.head is None:
            raise BackendUnavailable("FakePersonClassifier has no head: train one with train_fake_person_head() "
                                     "or load saved bytes with LogisticHead.from_bytes()")
        if self.head.embedder and self.head.embedder != self.embedder.name:
            raise BackendUnavailable(f"head was trained on {self.head.embedder!r} embeddings, "
                                     f"not {self.embedder.name!r}")
        self.embedder.setup()

    def score(self, img: Image.Image) -> float:
        return float(self.head.prob(self.embedder.embed(img))[0])


# ===================================================================================== quality


class OfflineQualityScorer:
    """Offline no-reference quality from three measurements; each becomes a score in [0, 1] and
    ``quality`` is the lowest of the three (the weakest aspect decides). All are stored (``q_<name>``).

    - ``sharpness``: variance of the Laplacian of the grey image area-resized so its short side is
      ``norm_short`` px (downscaling first averages sensor noise away and makes the figure independent of
      image size). Range [0, inf): grey levels squared; scikit-image's astronaut and camera photos give
      ~3200 and ~2150, the world's sharp renders 150-3200, its blurred ones 2-30. ``sharpness_score`` is
      log-linear: 0 at ``sharp_lo`` (25), 1 at ``sharp_hi`` (50).
    - ``luminance``: mean grey level / 255 in [0, 1]; ``clipped``: share of pixels <= 4 or >= 251, in
      [0, 1]. ``exposure_score`` is 1 for a mean inside [``lum_lo``, ``lum_hi``] (0.22-0.85) and falls
      linearly to 0 at half of ``lum_lo`` or halfway from ``lum_hi`` to white; it is capped by a clipping
      score that falls from 1 at ``max_clipped`` (25 %) to 0 at twice that.
    - ``noise``: Immerkaer's estimate of Gaussian noise sigma of the full-size grey image, grey levels; range
      [0, ~100); the two photos give 2.4 and 3.6, renders 0.5-1.5. ``noise_score`` falls linearly from 1
      at ``noise_ok`` (8) to 0 at ``noise_bad`` (20).

    With the default ``min_quality`` 0.5 an image is rejected as ``low_quality`` when any of: sharpness
    below 35 (25 x sqrt 2, a clearly blurred or upscaled image); mean luminance below 0.165 or above 0.8875;
    more than 37.5 % of pixels clipped; noise sigma above 14 grey levels.
    """
    name = "offline_quality"

    def __init__(self, norm_short: int = 128, sharp_lo: float = 25.0, sharp_hi: float = 50.0,
                 lum_lo: float = 0.22, lum_hi: float = 0.85, max_clipped: float = 0.25,
                 noise_ok: float = 8.0, noise_bad: float = 20.0) -> None:
        self.norm_short, self.sharp_lo, self.sharp_hi = norm_short, sharp_lo, sharp_hi
        self.lum_lo, self.lum_hi, self.max_clipped = lum_lo, lum_hi, max_clipped
        self.noise_ok, self.noise_bad = noise_ok, noise_bad

    def setup(self) -> None:
        pass

    def score(self, img: Image.Image) -> dict[str, float]:
        g = _gray(img)
        s = self.norm_short / min(g.shape)
        small = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        lapvar = float(cv2.Laplacian(small.astype(np.float32), cv2.CV_32F).var())
        q_sharp = float(np.clip(math.log(max(lapvar, 1e-6) / self.sharp_lo) / math.log(self.sharp_hi / self.sharp_lo), 0, 1))
        lum = float(g.mean()) / 255
        clipped = float(((g <= 4) | (g >= 251)).mean())
        q_lum = 1.0
        if lum < self.lum_lo:
            q_lum = max(0.0, lum / self.lum_lo * 2 - 1)   # 0 at half the lower bound
        elif lum > self.lum_hi:
            q_lum = max(0.0, 1 - (lum - self.lum_hi) / ((1 - self.lum_hi) / 2))
        q_clip = float(np.clip(1 - (clipped - self.max_clipped) / self.max_clipped, 0, 1)) if clipped > self.max_clipped else 1.0
        lap = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
        conv = cv2.filter2D(g.astype(np.float32), -1, lap)[1:-1, 1:-1]
        noise = float(math.sqrt(math.pi / 2) * np.abs(conv).mean() / 6.0)
        q_noise = float(np.clip(1 - (noise - self.noise_ok) / (self.noise_bad - self.noise_ok), 0, 1))
        q_expo = min(q_lum, q_clip)
        return {"sharpness": lapvar, "sharpness_score": q_sharp, "luminance": lum, "clipped": clipped,
                "exposure_score": q_expo, "noise": noise, "noise_score": q_noise,
                "quality": min(q_sharp, q_expo, q_noise)}


class PyiqaQualityScorer:
    """Production no-reference quality: LIQE through pyiqa (``pyiqa.create_metric("liqe")``).

    LIQE (Zhang et al., CVPR 2023) scores CLIP ViT-B/32 crops against "a photo with {bad, poor, fair, good,
    perfect} quality" and returns the expected level, 1 to 5. Components: ``<metric>`` (the raw score,
    e.g. ``liqe``) and ``quality`` = (score - 1) / 4 clipped to [0, 1]; the default ``min_quality`` 0.5
    rejects images LIQE rates below "fair" (3.0). Images with a short side under 224 px are upscaled
    (LIQE's crops are 224 px and pyiqa refuses smaller inputs).

    Install ``pyiqa`` in the production image only: it depends on torchvision, which the local
    environment never installs. Weights: the LIQE checkpoint (``liqe_koniq.pt``, downloaded by pyiqa on
    first use, or a local copy passed as ``pretrained_model_path``) and OpenAI CLIP ViT-B/32 (clip's
    cache, ``~/.cache/clip/ViT-B-32.pt``).
    """
    name = "liqe"

    def __init__(self, metric: str = "liqe", device: str = "cpu", pretrained_model_path: str | None = None,
                 score_range: tuple[float, float] = (1.0, 5.0)) -> None:
        self.metric, self.device, self.pretrained_model_path = metric, device, pretrained_model_path
        self.score_range = score_range
        self._metric = None

    def setup(self) -> None:
        if self._metric is not None:
            return
        try:
            import pyiqa
        except ImportError as exc:
            raise BackendUnavailable(
                "PyiqaQualityScorer needs the pyiqa package (`pip install pyiqa`; it depends on torchvision, "
                "so install it in the production image only)") from exc
        options = {"as_loss": False, "device": self.device}
        if self.pretrained_model_path:
            options["pretrained_model_path"] = self.pretrained_model_path
        try:
            self._metric = pyiqa.create_metric(self.metric, **options)
        except Exception as exc:  # noqa: BLE001 - re-raised with what is needed
            raise BackendUnavailable(
                f"pyiqa could not build {self.metric!r}: it needs the LIQE checkpoint (liqe_koniq.pt from pyiqa's "
                f"release downloads, or a local file as pretrained_model_path={self.pretrained_model_path!r}) and "
                f"OpenAI CLIP ViT-B/32 weights in clip's cache (~/.cache/clip): {type(exc).__name__}: {exc}") from exc

    def score(self, img: Image.Image) -> dict[str, float]:
        import torch
        self.setup()
        a = np.asarray(img.convert("RGB"))
        short = min(a.shape[:2])
        if short < 224:
            f = 224 / short
            a = cv2.resize(a, (max(224, round(a.shape[1] * f)), max(224, round(a.shape[0] * f))),
                           interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(np.asarray(a, np.float32) / 255).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            raw = float(self._metric(x).reshape(-1)[0])
        lo, hi = self.score_range
        return {self.metric: raw, "quality": float(np.clip((raw - lo) / (hi - lo), 0, 1))}


class HpsV2Scorer:
    """Production quality as human preference: HPS v2 (the ``hpsv2`` package, an OpenCLIP ViT-H/14
    fine-tuned on human preference pairs), scoring the image against a fixed prompt.

    Prompt: ``prompt`` ("a photo of a person" by default), not the record's alt text. This step asks how
    good a photo of a person the image is; web alt text is noisy (file names, SEO strings, other
    languages) and would fold caption alignment into a quality score, and captions are rebuilt by
    annotation downstream anyway. It also keeps the scorer's interface image-only, like every other.
    ``hpsv2.score`` returns the cosine similarity of image and prompt embeddings: HPS v2 benchmark images
    score about 0.20-0.30. Components: ``hpsv2`` (raw) and ``quality``, mapped linearly from
    ``score_range`` (0.20 -> 0, 0.30 -> 1, clipped): a calibration, not a property of the model, so set it
    from the scores of a labelled sample of the pool; with it the default ``min_quality`` 0.5 rejects raw
    scores below 0.25.

    Install ``hpsv2`` in the production image only (it depends on torchvision). Weights: the HPS v2
    checkpoint (hub repo ``xswu/HPSv2``, ``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt``) and OpenCLIP
    ViT-H-14 ``laion2B-s32B-b79K``, downloaded on first use or read from the Hugging Face cache (set
    ``HF_HUB_OFFLINE=1`` on workers without network).
    """
    name = "hpsv2"

    def __init__(self, prompt: str = "a photo of a person", hps_version: str = "v2.1",
                 score_range: tuple[float, float] = (0.20, 0.30)) -> None:
        self.prompt, self.hps_version, self.score_range = prompt, hps_version, score_range
        self._hpsv2 = None

    def setup(self) -> None:
        if self._hpsv2 is not None:
            return
        try:
            import hpsv2
        except ImportError as exc:
            raise BackendUnavailable(
                "HpsV2Scorer needs the hpsv2 package (`pip install hpsv2`; it depends on torchvision, so install "
                "it in the production image only)") from exc
        # hpsv2 loads its model on the first score() call: score a blank image now, so missing weights fail
        # here, once per worker, rather than on the first record
        try:
            hpsv2.score(Image.new("RGB", (224, 224), (128, 128, 128)), self.prompt, hps_version=self.hps_version)
        except Exception as exc:  # noqa: BLE001 - re-raised with what is needed
            raise BackendUnavailable(
                f"hpsv2 could not score (hps_version={self.hps_version!r}): it needs the HPS v2 checkpoint from the "
                f"hub repo xswu/HPSv2 and OpenCLIP ViT-H-14 laion2B-s32B-b79K weights, downloaded or in the "
                f"Hugging Face cache: {type(exc).__name__}: {exc}") from exc
        self._hpsv2 = hpsv2

    def score(self, img: Image.Image) -> dict[str, float]:
        self.setup()
        raw = float(np.ravel(self._hpsv2.score(img.convert("RGB"), self.prompt, hps_version=self.hps_version))[0])
        lo, hi = self.score_range
        return {"hpsv2": raw, "quality": float(np.clip((raw - lo) / (hi - lo), 0, 1))}


# ======================================================================================= chain


@dataclass
class FilterChain:
    """decode -> size -> fake person -> quality -> person count -> face size; first failure decides."""
    config: FilterConfig
    person_detector: PersonDetector
    face_detector: FaceDetector
    fake_person_classifier: FakePersonClassifier
    quality_scorer: QualityScorer
    _ready: bool = field(default=False, init=False, repr=False)

    def setup(self) -> None:
        """Load every model once (per worker)."""
        if not self._ready:
            for b in (self.fake_person_classifier, self.quality_scorer, self.person_detector, self.face_detector):
                b.setup()
            self._ready = True

    def process(self, data: bytes) -> FilterResult:
        self.setup()
        scores: dict[str, float | None] = {"width": None, "height": None, "fake_score": None, "quality": None,
                                           "n_people": None, "max_face_px": None}
        try:
            img = decode_image(data)
        except ImageDecodeError as exc:
            return FilterResult("corrupt", scores, str(exc))
        return self.process_image(img, scores)

    def process_image(self, img: Image.Image, scores: dict[str, float | None] | None = None) -> FilterResult:
        self.setup()
        cfg = self.config
        scores = scores if scores is not None else {}
        w, h = img.size
        scores.update(width=float(w), height=float(h))
        short, long_ = min(w, h), max(w, h)
        if short < cfg.min_short_side or long_ < cfg.min_long_side:
            return FilterResult("too_small", scores, f"{w}x{h}: short side {short} (min {cfg.min_short_side}), "
                                                     f"long side {long_} (min {cfg.min_long_side})")
        fake = self.fake_person_classifier.score(img)
        scores["fake_score"] = fake
        if fake > cfg.max_fake_score:
            return FilterResult("fake_person", scores, f"P(fake)={fake:.3f} > {cfg.max_fake_score}")
        q = self.quality_scorer.score(img)
        scores.update({f"q_{k}" if k != "quality" else k: float(v) for k, v in q.items()})
        if q["quality"] < cfg.min_quality:
            return FilterResult("low_quality", scores, f"quality {q['quality']:.3f} < {cfg.min_quality}")
        people = self.person_detector.detect(img)
        scores["n_people"] = float(len(people))
        scores["person_conf"] = max((c for _, c in people), default=0.0)
        if not people:
            return FilterResult("no_person", scores, "no person detected")
        if len(people) > cfg.max_people:
            return FilterResult("many_people", scores, f"{len(people)} people detected")
        faces = self.face_detector.detect(img)
        side = max((max(b[2] - b[0], b[3] - b[1]) for b in faces), default=0.0)
        scores["n_faces"], scores["max_face_px"] = float(len(faces)), float(side)
        if side < cfg.min_face_px:
            return FilterResult("small_face", scores, f"largest face {side:.0f}px < {cfg.min_face_px}px")
        return FilterResult("kept", scores, "")


def local_chain(fake_head: LogisticHead, config: FilterConfig | None = None, *,
                face_detector: HaarFaceDetector | None = None,
                quality_scorer: QualityScorer | None = None) -> FilterChain:
    """The offline chain: HOG + face person count, Haar face size (one detector serves both steps),
    offline-feature fake head, offline quality unless another scorer is given."""
    faces = face_detector or HaarFaceDetector(min_size=20)
    return FilterChain(config or FilterConfig(), HogFacePersonDetector(faces=faces), faces,
                       FakePersonClassifier(fake_head, OfflineImageFeatures()),
                       quality_scorer or OfflineQualityScorer())


def production_chain(fake_head: LogisticHead, *, detector_id: str = "PekingU/rtdetr_r50vd_coco_o365",
                     clip_id: str = "openai/clip-vit-large-patch14", local_files_only: bool = False,
                     device: str = "cpu", face_detector: FaceDetector | None = None,
                     quality_scorer: QualityScorer | None = None) -> FilterChain:
    """Production wiring: transformers person detector, Haar faces searched from 64 px (the rule is 224),
    CLIP + head, and the given quality scorer (LIQE or HPSv2 in production; offline when none is given)."""
    return FilterChain(FilterConfig.production(),
                       TransformersPersonDetector(detector_id, local_files_only=local_files_only, device=device),
                       face_detector or HaarFaceDetector(min_size=64),
                       FakePersonClassifier(fake_head, ClipImageEmbedder(clip_id, local_files_only, device)),
                       quality_scorer or OfflineQualityScorer())


__all__ = [
    "DECISIONS", "BackendUnavailable", "FilterConfig", "FilterResult", "FilterChain", "PersonDetector",
    "FaceDetector", "Embedder", "QualityScorer", "HogPersonDetector", "HogFacePersonDetector",
    "TransformersPersonDetector", "HaarFaceDetector", "load_cascade", "OfflineImageFeatures", "ClipImageEmbedder",
    "LogisticHead", "FakePersonClassifier", "OfflineQualityScorer", "PyiqaQualityScorer", "HpsV2Scorer",
    "HUMANART_GROUPS", "HumanArtFolder", "LabelledImage", "merge_columns", "evaluate_person_detector",
    "train_fake_person_head", "train_fake_person_head_from_folder", "fit_fake_person_head", "held_out_split",
    "fit_logistic", "nms", "local_chain", "production_chain",
]
