"""The offline filter chain: decode -> size -> fake person -> quality -> person count -> face size.

One interface for every backend (:mod:`cosmicman.filtering.backends`), an ordered chain, every score an
image reached stored, and one decision with its reason (``kept`` or the first rule it failed; the rules
are in :mod:`cosmicman.filtering.decisions`). The ``filtered_images`` asset builds a :class:`FilterChain`
once per worker (``setup()`` loads models once) and calls ``process``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from cosmicman.core.imageio import ImageDecodeError, decode_image
from cosmicman.filtering.backends import FaceDetector, PersonDetector, QualityScorer
from cosmicman.filtering.decisions import FilterConfig, FilterResult
from cosmicman.filtering.embedders import ClipImageEmbedder, OfflineImageFeatures
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.fake_person import FakePersonClassifier, LogisticHead
from cosmicman.filtering.person_detectors import HogFacePersonDetector, TransformersPersonDetector
from cosmicman.filtering.quality import OfflineQualityScorer


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
        scores: dict[str, float | None] = {
            "width": None,
            "height": None,
            "fake_score": None,
            "quality": None,
            "n_people": None,
            "max_face_px": None,
        }
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
            return FilterResult(
                "too_small",
                scores,
                f"{w}x{h}: short side {short} (min {cfg.min_short_side}), long side {long_} (min {cfg.min_long_side})",
            )
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


def local_chain(
    fake_head: LogisticHead,
    config: FilterConfig | None = None,
    *,
    face_detector: HaarFaceDetector | None = None,
    quality_scorer: QualityScorer | None = None,
) -> FilterChain:
    """The offline chain: HOG + face person count, Haar face size (one detector serves both steps),
    offline-feature fake head, offline quality unless another scorer is given."""
    faces = face_detector or HaarFaceDetector(min_size=20)
    return FilterChain(
        config or FilterConfig(),
        HogFacePersonDetector(faces=faces),
        faces,
        FakePersonClassifier(fake_head, OfflineImageFeatures()),
        quality_scorer or OfflineQualityScorer(),
    )


def production_chain(
    fake_head: LogisticHead,
    *,
    detector_id: str = "PekingU/rtdetr_r50vd_coco_o365",
    clip_id: str = "openai/clip-vit-large-patch14",
    local_files_only: bool = False,
    device: str = "cpu",
    face_detector: FaceDetector | None = None,
    quality_scorer: QualityScorer | None = None,
) -> FilterChain:
    """Production wiring: transformers person detector, Haar faces searched from 64 px (the rule is 224),
    CLIP + head, and the given quality scorer (LIQE or HPSv2 in production; offline when none is given)."""
    return FilterChain(
        FilterConfig.production(),
        TransformersPersonDetector(detector_id, local_files_only=local_files_only, device=device),
        face_detector or HaarFaceDetector(min_size=64),
        FakePersonClassifier(fake_head, ClipImageEmbedder(clip_id, local_files_only, device)),
        quality_scorer or OfflineQualityScorer(),
    )
