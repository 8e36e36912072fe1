"""The simulated human labeller: answers from the synthetic world's ground truth with a set error rate."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from cosmicman.annotation.accuracy import full_manual_label_count
from cosmicman.annotation.items import AnnotationItem, LabelRecord, LabelSource
from cosmicman.core.protocol import Protocol, load_protocol


class SimulatedOracle:
    """A human labeller simulated from ground truth: wrong with probability ``error_rate``.

    A wrong answer is drawn uniformly from the category's other answers. Only categories that apply to
    the image by truth are answered (the labelling UI shows a garment's colour question only when the
    garment exists). Deterministic in ``seed`` and the (image, category, round) asked.
    """

    def __init__(
        self, error_rate: float = 0.05, seed: int = 0, protocol: Protocol | None = None, source: LabelSource = "oracle"
    ):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be in [0, 1]")
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        self.protocol = protocol or load_protocol()
        self.source = source

    def _rng(self, sha: str, category: str, round: int) -> np.random.Generator:
        key = hashlib.sha256(f"{self.seed}:{sha}:{category}:{round}".encode()).digest()
        return np.random.default_rng(int.from_bytes(key[:8], "little"))

    def answer(self, sha: str, attributes: Mapping[str, str], category: str, round: int = 0) -> str | None:
        cat = self.protocol.by_name[category]
        if not cat.applies(attributes) or category not in attributes:
            return None
        truth = attributes[category]
        rng = self._rng(sha, category, round)
        if len(cat.answers) > 1 and rng.random() < self.error_rate:
            others = [a for a in cat.answers if a != truth]
            return others[int(rng.integers(len(others)))]
        return truth

    def can_label(self, item: AnnotationItem) -> bool:
        return item.attributes is not None

    def applicable_category_count(self, items: Sequence[AnnotationItem]) -> int:
        """Questions a full manual pass over ``items`` asks: exact, from their truth."""
        return full_manual_label_count([it.attributes for it in items], self.protocol)

    def label(self, items: Sequence[AnnotationItem], categories: Sequence[str], round: int = 0) -> list[LabelRecord]:
        out = []
        for item in items:
            if item.attributes is None:
                raise ValueError(f"the simulated oracle needs ground truth for {item.image_sha256}")
            for name in categories:
                ans = self.answer(item.image_sha256, item.attributes, name, round)
                if ans is not None:
                    out.append(LabelRecord(item.image_sha256, name, ans, self.source, round))
        return out
