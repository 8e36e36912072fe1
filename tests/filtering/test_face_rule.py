"""The face rule at its edge: the largest detected face's longer side must reach ``min_face_px`` (52 px on the
local renders, the paper's 224 in production); exactly at the limit passes, one pixel under fails, and the
largest face decides, never the smallest."""

from __future__ import annotations

import pytest
from PIL import Image

from cosmicman.filtering.chain import FilterChain
from cosmicman.filtering.decisions import FilterConfig


class Fixed:
    """A stand-in backend that answers the same for every image (the rule under test is the chain's)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def setup(self) -> None:
        pass

    def detect(self, img):
        return self.answer

    def score(self, img):
        return self.answer


def decide(faces: list[tuple[float, float, float, float]], config: FilterConfig) -> str:
    chain = FilterChain(
        config,
        person_detector=Fixed([((0, 0, 10, 10), 0.9)]),  # exactly one person
        face_detector=Fixed(faces),
        fake_person_classifier=Fixed(0.0),
        quality_scorer=Fixed({"quality": 1.0}),
    )
    size = (config.min_short_side, config.min_long_side)
    return chain.process_image(Image.new("RGB", size)).decision


def square(side: float) -> tuple[float, float, float, float]:
    return (10.0, 20.0, 10.0 + side, 20.0 + side / 2)  # longer side: the width


@pytest.mark.parametrize(("config", "limit"), [(FilterConfig(), 52), (FilterConfig.production(), 224)])
def test_the_largest_face_must_reach_the_limit(config, limit):
    assert decide([square(limit)], config) == "kept"
    assert decide([square(limit - 1)], config) == "small_face"
    # several faces: the largest decides, wherever it is in the detector's list
    assert decide([square(limit - 30), square(limit)], config) == "kept"
    assert decide([square(limit), square(limit - 30)], config) == "kept"
    assert decide([square(limit - 1), square(limit - 30)], config) == "small_face"
    assert decide([], config) == "small_face"
