"""The real-image side of an evaluation is scored once per I_e and scorer settings, and never reused stale."""

import numpy as np
from PIL import Image

from cosmicman.core.store import Store
from cosmicman.evaluation.reference_side import ReferenceSide, reference_digest, reference_side

SETTINGS = {"judge": ["local", "1"], "features": ["random_conv"], "device": "cpu", "prompt_set_version": "ps-1"}


def _real(shade: int = 10) -> list:
    return [
        (Image.new("RGB", (8, 8), (shade, 20, 30)), {"top": "red"}, "a person, red top"),
        (Image.new("RGB", (8, 8), (40, 50, 60)), {"top": "blue"}, "a person, blue top"),
    ]


def test_the_real_side_is_computed_once_and_read_back_the_same(tmp_path) -> None:
    store, calls, said = Store(str(tmp_path)), [], []

    def compute() -> ReferenceSide:
        calls.append(1)
        return ReferenceSide(ceiling={"acc_all": 0.9, "clip_score": 21.5}, features=np.arange(6.0).reshape(2, 3))

    first = reference_side(store, SETTINGS, _real(), compute, said.append)
    second = reference_side(store, SETTINGS, _real(), compute, said.append)
    assert len(calls) == 1
    assert second.ceiling == first.ceiling == {"acc_all": 0.9, "clip_score": 21.5}
    np.testing.assert_array_equal(second.features, first.features)
    assert "scored and kept" in said[0] and "reusing" in said[1]


def test_any_change_of_images_captions_or_scorers_names_another_reference() -> None:
    base = reference_digest(SETTINGS, _real())
    assert reference_digest(SETTINGS, _real()) == base
    assert reference_digest(SETTINGS, _real(shade=11)) != base  # one pixel value of one image
    relabelled = _real()
    relabelled[1] = (relabelled[1][0], {"top": "green"}, relabelled[1][2])
    assert reference_digest(SETTINGS, relabelled) != base
    assert reference_digest({**SETTINGS, "judge": ["local", "2"]}, _real()) != base
    assert reference_digest(SETTINGS, list(reversed(_real()))) != base  # features are matched by order
