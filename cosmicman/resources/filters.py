from __future__ import annotations

import dagster as dg

from cosmicman.data import filters as F
from cosmicman.data.store import Store

FAKE_HEAD_KEY = "models/fake_person/head.npz"


class FilterResource(dg.ConfigurableResource):
    """Thresholds of the filter chain and the data the fake-person head is trained on.

    Local defaults suit the synthetic world's 320x640 renders; the paper's production values are
    ``min_short_side=640, min_long_side=1280, min_face_px=224``.
    """

    min_short_side: int = F.FilterConfig.min_short_side
    min_long_side: int = F.FilterConfig.min_long_side
    min_face_px: int = F.FilterConfig.min_face_px
    max_fake_score: float = F.FilterConfig.max_fake_score
    min_quality: float = F.FilterConfig.min_quality
    fake_head_train_size: int = 160
    fake_head_seed: int = 40_000

    def config(self) -> F.FilterConfig:
        return F.FilterConfig(min_short_side=self.min_short_side, min_long_side=self.min_long_side,
                              min_face_px=self.min_face_px, max_fake_score=self.max_fake_score,
                              min_quality=self.min_quality)

    def thresholds(self) -> dict:
        return {"min_short_side": self.min_short_side, "min_long_side": self.min_long_side,
                "min_face_px": self.min_face_px, "max_fake_score": self.max_fake_score,
                "min_quality": self.min_quality}

    def train_fake_person_head(self) -> tuple[bytes, dict]:
        """Train on held-out synthetic renders: real-looking people vs flat cartoon people."""
        from cosmicman.data.synthetic import SyntheticWorld
        from cosmicman.data.imageio import decode_image

        world = SyntheticWorld(seed=self.fake_head_seed)
        images, labels = [], []
        for i in range(self.fake_head_train_size):
            fake = i % 2 == 1
            s = world.sample(i, case="fake_person" if fake else "kept")
            images.append(decode_image(s.image_bytes))
            labels.append(int(fake))
        head, metrics = F.train_fake_person_head(images, labels)
        return head.to_bytes(), metrics

    def chain(self, store: Store) -> F.FilterChain:
        if not store.exists(FAKE_HEAD_KEY):
            raise dg.Failure("the fake-person head is missing: materialize fake_person_classifier first")
        head = F.FakePersonHead.from_bytes(store.read_bytes(FAKE_HEAD_KEY))
        return F.FilterChain.local(self.config(), head)
