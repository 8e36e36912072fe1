from __future__ import annotations

import dagster as dg

from cosmicman.core.keys import FAKE_HEAD_KEY
from cosmicman.core.store import Store
from cosmicman.filtering.backends import Embedder, QualityScorer
from cosmicman.filtering.chain import FilterChain, local_chain, production_chain
from cosmicman.filtering.decisions import FilterConfig
from cosmicman.filtering.embedders import ClipImageEmbedder, OfflineImageFeatures
from cosmicman.filtering.face_detector import HaarFaceDetector
from cosmicman.filtering.fake_person import LogisticHead, train_fake_person_head_from_folder
from cosmicman.filtering.humanart import HumanArtFolder
from cosmicman.filtering.quality import HpsV2Scorer, OfflineQualityScorer, PyiqaQualityScorer

QUALITY_BACKENDS = ("offline", "liqe", "hpsv2")


class FilterResource(dg.ConfigurableResource):
    """Thresholds and backends of the filter chain.

    ``backend="local"``: detectors shipped in pip wheels and offline scorers, thresholds for the synthetic
    world's 320x640 renders. ``backend="production"``: a transformers person detector and a CLIP embedding
    (model ids below, weights from the hub or a local folder) with the paper's 640/1280/224 thresholds
    unless overridden.

    The fake-person head trains from ``fake_head_train_url``, a folder in the Human-Art layout (local path
    or fsspec URL): images/real_human/<scenario>/..., images/2D_virtual_human/<scenario>/...,
    images/3D_virtual_human/<scenario>/....

    ``quality_backend``: "offline" (:class:`~cosmicman.filtering.quality.OfflineQualityScorer`), "liqe" (pyiqa)
    or "hpsv2"; the last two need packages and weights that only production images have.
    """

    backend: str = "local"
    min_short_side: int | None = None
    min_long_side: int | None = None
    min_face_px: int | None = None
    max_fake_score: float | None = None
    min_quality: float | None = None
    person_detector_id: str = "PekingU/rtdetr_r50vd_coco_o365"
    clip_id: str = "openai/clip-vit-large-patch14"
    device: str = "cpu"
    face_cascade: str = "haarcascade_frontalface_alt2.xml"
    face_profile_cascade: str | None = "haarcascade_profileface.xml"
    fake_head_train_url: str | None = None
    quality_backend: str = "offline"
    liqe_weights: str | None = None
    hpsv2_prompt: str = "a photo of a person"
    hpsv2_version: str = "v2.1"

    def config(self) -> FilterConfig:
        base = FilterConfig.production() if self.backend == "production" else FilterConfig()
        overrides = {k: v for k, v in self.thresholds(base).items() if getattr(self, k) is not None}
        return FilterConfig(**{**base.__dict__, **overrides})

    def thresholds(self, base: FilterConfig | None = None) -> dict:
        base = base or self.config()
        names = ("min_short_side", "min_long_side", "min_face_px", "max_fake_score", "min_quality")
        return {k: getattr(self, k) if getattr(self, k) is not None else getattr(base, k) for k in names}

    def chain_settings(self) -> dict:
        """Everything besides the head's weights that decides a decision: backends, models, thresholds
        (for lineage and for keying filtered tables)."""
        settings = {
            "backend": self.backend,
            "quality_backend": self.quality_backend,
            "face_cascade": self.face_cascade,
            "face_profile_cascade": self.face_profile_cascade,
            **self.thresholds(),
        }
        if self.backend == "production":
            settings.update(person_detector_id=self.person_detector_id, clip_id=self.clip_id)
        if self.quality_backend == "liqe":
            settings["liqe_weights"] = self.liqe_weights
        elif self.quality_backend == "hpsv2":
            settings.update(hpsv2_prompt=self.hpsv2_prompt, hpsv2_version=self.hpsv2_version)
        return settings

    def embedder(self) -> Embedder:
        self._check_backend()
        return (
            ClipImageEmbedder(self.clip_id, device=self.device)
            if self.backend == "production"
            else OfflineImageFeatures()
        )

    def train_fake_person_head(self, store: Store | None = None) -> tuple[bytes, dict]:
        """Train the head from ``fake_head_train_url`` (``store``: where a subclass may keep its own folder).

        Metrics: held-out accuracy overall, per scenario group (``val_accuracy/real_human``, ...) and per
        scenario, and the folder the head trained from (``train_url``).
        """
        if not self.fake_head_train_url:
            raise ValueError(
                "FilterResource.fake_head_train_url is not set: the fake-person head trains on a "
                "folder of labelled real/fake people in the Human-Art layout"
            )
        return self._train_from(self.fake_head_train_url, self.embedder())

    def _train_from(self, url: str, embedder: Embedder, **storage_options) -> tuple[bytes, dict]:
        head, metrics = train_fake_person_head_from_folder(HumanArtFolder(url, **storage_options), embedder)
        return head.to_bytes(), {**metrics, "train_url": url, "embedder": embedder.name}

    def face_detector(self, min_size: int) -> HaarFaceDetector:
        return HaarFaceDetector(self.face_cascade, self.face_profile_cascade, min_size=min_size)

    def quality_scorer(self) -> QualityScorer:
        if self.quality_backend == "offline":
            return OfflineQualityScorer()
        if self.quality_backend == "liqe":
            return PyiqaQualityScorer("liqe", device=self.device, pretrained_model_path=self.liqe_weights)
        if self.quality_backend == "hpsv2":
            return HpsV2Scorer(self.hpsv2_prompt, self.hpsv2_version)
        raise ValueError(f"unknown quality_backend {self.quality_backend!r}; use one of {QUALITY_BACKENDS}")

    def chain(self, store: Store) -> FilterChain:
        self._check_backend()
        if not store.exists(FAKE_HEAD_KEY):
            raise dg.Failure("the fake-person head is missing: materialize fake_person_classifier first")
        head = LogisticHead.from_bytes(store.read_bytes(FAKE_HEAD_KEY))
        if self.backend == "production":
            chain = production_chain(
                head,
                detector_id=self.person_detector_id,
                clip_id=self.clip_id,
                device=self.device,
                face_detector=self.face_detector(64),
                quality_scorer=self.quality_scorer(),
            )
            chain.config = self.config()
            return chain
        return local_chain(
            head, self.config(), face_detector=self.face_detector(20), quality_scorer=self.quality_scorer()
        )

    def _check_backend(self) -> None:
        if self.backend not in ("local", "production"):
            raise ValueError(f"unknown filter backend {self.backend!r}; use 'local' or 'production'")
