from __future__ import annotations

from typing import Optional

import dagster as dg

from cosmicman.data import filters as F
from cosmicman.data.store import Store

FAKE_HEAD_KEY = "models/fake_person/head.npz"
# Real = photographic renders of every kind (the head must not learn "a person is present"),
# fake = flat cartoon people; counts per 100 training images.
FAKE_HEAD_MIX = {"kept": 20, "low_quality": 10, "no_person": 7, "many_people": 7, "small_face": 6, "fake_person": 50}


class FilterResource(dg.ConfigurableResource):
    """Thresholds and backends of the filter chain.

    ``backend="local"``: detectors shipped in pip wheels and offline scorers, thresholds for the synthetic
    world's 320x640 renders. ``backend="production"``: a transformers person detector and a CLIP embedding
    (model ids below, weights from the hub or a local folder) with the paper's 640/1280/224 thresholds
    unless overridden.
    """

    backend: str = "local"
    min_short_side: Optional[int] = None
    min_long_side: Optional[int] = None
    min_face_px: Optional[int] = None
    max_fake_score: Optional[float] = None
    min_quality: Optional[float] = None
    person_detector_id: str = "PekingU/rtdetr_r50vd_coco_o365"
    clip_id: str = "openai/clip-vit-large-patch14"
    fake_head_train_size: int = 200
    fake_head_seed: int = 40_000

    def config(self) -> F.FilterConfig:
        base = F.FilterConfig.production() if self.backend == "production" else F.FilterConfig()
        overrides = {k: v for k, v in self.thresholds(base).items() if getattr(self, k) is not None}
        return F.FilterConfig(**{**base.__dict__, **overrides})

    def thresholds(self, base: F.FilterConfig | None = None) -> dict:
        base = base or self.config()
        names = ("min_short_side", "min_long_side", "min_face_px", "max_fake_score", "min_quality")
        return {k: getattr(self, k) if getattr(self, k) is not None else getattr(base, k) for k in names}

    def train_fake_person_head(self) -> tuple[bytes, dict]:
        """Train on held-out synthetic renders (seed distinct from every pool seed)."""
        from cosmicman.data.imageio import decode_image
        from cosmicman.data.synthetic import SyntheticWorld

        if self.backend != "local":
            raise ValueError("production heads train on labelled real/fake folders (Human-Art layout), not renders")
        world = SyntheticWorld(seed=self.fake_head_seed)
        cases = [c for c, n in FAKE_HEAD_MIX.items() for _ in range(n * self.fake_head_train_size // 100)]
        images = [decode_image(world.sample(i, case=c).image_bytes) for i, c in enumerate(cases)]
        head, metrics = F.train_fake_person_head(images, [int(c == "fake_person") for c in cases])
        return head.to_bytes(), metrics

    def chain(self, store: Store) -> F.FilterChain:
        if not store.exists(FAKE_HEAD_KEY):
            raise dg.Failure("the fake-person head is missing: materialize fake_person_classifier first")
        head = F.LogisticHead.from_bytes(store.read_bytes(FAKE_HEAD_KEY))
        if self.backend == "production":
            chain = F.production_chain(head, detector_id=self.person_detector_id, clip_id=self.clip_id)
            chain.config = self.config()
            return chain
        if self.backend != "local":
            raise ValueError(f"unknown filter backend {self.backend!r}; use 'local' or 'production'")
        return F.local_chain(head, self.config())
