"""The chain's thresholds and its outcome for one image: a decision with its reason and every score.

Size rule. The paper says images "smaller than 640x1280" are removed, which does not say whether the
numbers bound width x height, the short x long side, or the pixel count. Our reading, for portrait and
landscape images alike: keep an image only if ``short side >= min_short_side`` AND ``long side >=
min_long_side`` (production 640 / 1280, i.e. at least a 1:2 portrait of 640x1280 or any rotation of it).
Both numbers are config.

Defaults. :class:`FilterConfig` defaults suit the synthetic world's 320x640 renders (size 256 / 512,
face 52 px); :meth:`FilterConfig.production` gives the paper's values (640 / 1280, largest face 224 px).
"""

from __future__ import annotations

from dataclasses import dataclass

DECISIONS = ("kept", "corrupt", "too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face")


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
