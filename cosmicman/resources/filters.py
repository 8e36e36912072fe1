from __future__ import annotations

import json
import tempfile

import dagster as dg

from cosmicman.core.imageio import image_format_ext
from cosmicman.core.store import Store
from cosmicman.filtering import filters as F

FAKE_HEAD_KEY = "models/fake_person/head.npz"
# Real = photographic renders of every kind (the head must not learn "a person is present"),
# fake = flat cartoon people; counts per 100 training images.
FAKE_HEAD_MIX = {"kept": 20, "low_quality": 10, "no_person": 7, "many_people": 7, "small_face": 6, "fake_person": 50}
SYNTHETIC_HUMANART_PREFIX = "training/fake_person/synthetic_humanart"
QUALITY_BACKENDS = ("offline", "liqe", "hpsv2")


def synthetic_humanart_scenario(case: str) -> tuple[str, str]:
    """Where a render of ``case`` sits in the Human-Art layout: cartoons are 2D virtual humans, every
    photographic render (people or not) is real_human/<case>."""
    return ("2D_virtual_human", "cartoon") if case == "fake_person" else ("real_human", case)


class FilterResource(dg.ConfigurableResource):
    """Thresholds and backends of the filter chain.

    ``backend="local"``: detectors shipped in pip wheels and offline scorers, thresholds for the synthetic
    world's 320x640 renders. ``backend="production"``: a transformers person detector and a CLIP embedding
    (model ids below, weights from the hub or a local folder) with the paper's 640/1280/224 thresholds
    unless overridden.

    The fake-person head trains from ``fake_head_train_url``, a folder in the Human-Art layout (local path
    or fsspec URL). Without one (local backend only) a small Human-Art-layout folder of synthetic renders
    (``fake_head_train_size`` images, ``FAKE_HEAD_MIX``) is written into the object store once and the head
    trains from it through the same reader.

    ``quality_backend``: "offline" (:class:`~cosmicman.filtering.filters.OfflineQualityScorer`), "liqe" (pyiqa)
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
    fake_head_train_size: int = 200
    fake_head_seed: int = 40_000
    quality_backend: str = "offline"
    liqe_weights: str | None = None
    hpsv2_prompt: str = "a photo of a person"
    hpsv2_version: str = "v2.1"

    def config(self) -> F.FilterConfig:
        base = F.FilterConfig.production() if self.backend == "production" else F.FilterConfig()
        overrides = {k: v for k, v in self.thresholds(base).items() if getattr(self, k) is not None}
        return F.FilterConfig(**{**base.__dict__, **overrides})

    def thresholds(self, base: F.FilterConfig | None = None) -> dict:
        base = base or self.config()
        names = ("min_short_side", "min_long_side", "min_face_px", "max_fake_score", "min_quality")
        return {k: getattr(self, k) if getattr(self, k) is not None else getattr(base, k) for k in names}

    def chain_settings(self) -> dict:
        """Everything besides the head's weights that decides a decision: backends, models, thresholds
        (for lineage and for keying filtered tables)."""
        settings = {"backend": self.backend, "quality_backend": self.quality_backend,
                    "face_cascade": self.face_cascade, "face_profile_cascade": self.face_profile_cascade,
                    **self.thresholds()}
        if self.backend == "production":
            settings.update(person_detector_id=self.person_detector_id, clip_id=self.clip_id)
        if self.quality_backend == "liqe":
            settings["liqe_weights"] = self.liqe_weights
        elif self.quality_backend == "hpsv2":
            settings.update(hpsv2_prompt=self.hpsv2_prompt, hpsv2_version=self.hpsv2_version)
        return settings

    def embedder(self) -> F.Embedder:
        self._check_backend()
        return F.ClipImageEmbedder(self.clip_id, device=self.device) if self.backend == "production" \
            else F.OfflineImageFeatures()

    def synthetic_humanart_folder(self, store: Store) -> str:
        """Write the embedded default training folder into ``store`` once; its URL.

        Keyed by seed and size, and completed by a manifest written last: a folder with a manifest is
        reused as is, one without (an interrupted write) is rendered again over itself.
        """
        from cosmicman.simulation.world import SyntheticWorld

        prefix = f"{SYNTHETIC_HUMANART_PREFIX}/seed{self.fake_head_seed}-n{self.fake_head_train_size}"
        manifest = f"{prefix}/manifest.json"
        if not store.exists(manifest):
            world = SyntheticWorld(seed=self.fake_head_seed)
            cases = [c for c, n in FAKE_HEAD_MIX.items() for _ in range(n * self.fake_head_train_size // 100)]
            for i, case in enumerate(cases):
                group, scenario = synthetic_humanart_scenario(case)
                data = world.sample(i, case=case).image_bytes
                store.write_bytes(f"{prefix}/images/{group}/{scenario}/{i:012d}.{image_format_ext(data)}", data)
            store.write_bytes(manifest, json.dumps({"seed": self.fake_head_seed, "mix": FAKE_HEAD_MIX,
                                                    "images": len(cases)}, sort_keys=True).encode())
        return store.uri(prefix)

    def train_fake_person_head(self, store: Store | None = None) -> tuple[bytes, dict]:
        """Train the head from ``fake_head_train_url``, else from the synthetic folder in ``store``.

        Without a store the synthetic folder goes to a temporary directory and is rendered on every call.
        Metrics: held-out accuracy overall, per scenario group (``val_accuracy/real_human``, ...) and per
        scenario, and the folder the head trained from (``train_url``).
        """
        embedder = self.embedder()
        if self.fake_head_train_url:
            return self._train_from(self.fake_head_train_url, embedder)
        if self.backend == "production":
            raise ValueError("production heads train on labelled real/fake photos: set fake_head_train_url to a "
                             "folder in the Human-Art layout (images/real_human/<scenario>/..., "
                             "images/2D_virtual_human/<scenario>/..., images/3D_virtual_human/<scenario>/...)")
        if store is not None:
            return self._train_from(self.synthetic_humanart_folder(store), embedder, **store.storage_options)
        with tempfile.TemporaryDirectory(prefix="fake-head-") as tmp:
            return self._train_from(self.synthetic_humanart_folder(Store(tmp)), embedder)

    def _train_from(self, url: str, embedder: F.Embedder, **storage_options) -> tuple[bytes, dict]:
        head, metrics = F.train_fake_person_head_from_folder(F.HumanArtFolder(url, **storage_options), embedder)
        return head.to_bytes(), {**metrics, "train_url": url, "embedder": embedder.name}

    def face_detector(self, min_size: int) -> F.HaarFaceDetector:
        return F.HaarFaceDetector(self.face_cascade, self.face_profile_cascade, min_size=min_size)

    def quality_scorer(self) -> F.QualityScorer:
        if self.quality_backend == "offline":
            return F.OfflineQualityScorer()
        if self.quality_backend == "liqe":
            return F.PyiqaQualityScorer("liqe", device=self.device, pretrained_model_path=self.liqe_weights)
        if self.quality_backend == "hpsv2":
            return F.HpsV2Scorer(self.hpsv2_prompt, self.hpsv2_version)
        raise ValueError(f"unknown quality_backend {self.quality_backend!r}; use one of {QUALITY_BACKENDS}")

    def chain(self, store: Store) -> F.FilterChain:
        self._check_backend()
        if not store.exists(FAKE_HEAD_KEY):
            raise dg.Failure("the fake-person head is missing: materialize fake_person_classifier first")
        head = F.LogisticHead.from_bytes(store.read_bytes(FAKE_HEAD_KEY))
        if self.backend == "production":
            chain = F.production_chain(head, detector_id=self.person_detector_id, clip_id=self.clip_id,
                                       device=self.device, face_detector=self.face_detector(64),
                                       quality_scorer=self.quality_scorer())
            chain.config = self.config()
            return chain
        return F.local_chain(head, self.config(), face_detector=self.face_detector(20),
                             quality_scorer=self.quality_scorer())

    def _check_backend(self) -> None:
        if self.backend not in ("local", "production"):
            raise ValueError(f"unknown filter backend {self.backend!r}; use 'local' or 'production'")
