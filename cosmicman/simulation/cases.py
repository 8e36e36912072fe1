"""The cases the filter chain must reject, and how the world builds each so that the chain's pixel detectors
reject it for exactly that reason (the table is in :mod:`cosmicman.simulation.world`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.simulation.scene import to_pil

CASES = ("kept", "corrupt", "too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face")
NEGATIVE_CASES = CASES[1:]


def render_options(
    case: str, attrs: dict[str, str], rng: np.random.Generator, width: int, height: int
) -> dict[str, Any]:
    """The ``SyntheticWorld.render`` options that make a person image fail ``case``'s rule (``attrs`` may be
    changed to match: a person-less scene gets a background with texture)."""
    options: dict[str, Any] = {}
    if case == "too_small":
        f = rng.uniform(0.5, 0.72)
        options.update(width=int(width * f) // 2 * 2, height=int(height * f) // 2 * 2)
    elif case == "fake_person":
        options.update(style="cartoon")
    elif case == "no_person":
        if attrs["background"] == "plain":  # a featureless wall says nothing about sharpness
            attrs["background"] = ("indoor", "outdoor")[int(rng.integers(2))]
        options.update(person=False)
    elif case == "many_people":
        options.update(n_people=int(rng.integers(2, 4)))
    elif case == "small_face":
        options.update(scale=float(rng.uniform(0.40, 0.44)))
    return options


def corrupt_bytes(rng: np.random.Generator, render_jpeg: Callable[[], bytes]) -> bytes:
    """Undecodable bytes: a real JPEG (from ``render_jpeg``) cut short, random bytes or an empty file."""
    kind = int(rng.integers(3))
    if kind == 0:
        full = render_jpeg()
        return full[: int(len(full) * rng.uniform(0.2, 0.7))]
    if kind == 1:
        return rng.integers(0, 256, int(rng.integers(64, 4096)), dtype=np.uint8).tobytes()
    return b""


def degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy blur and / or severe exposure error, then sensor noise (so it still looks photographic)."""
    a: np.ndarray = np.asarray(img).astype(np.float32)
    mode = int(rng.integers(4))  # 0 blur, 1 under, 2 over, 3 blur + under/over
    if mode in (0, 3):
        a = cv2.GaussianBlur(a, (0, 0), rng.uniform(6.0, 9.0))
    if mode == 1 or (mode == 3 and rng.random() < 0.5):
        a = a * rng.uniform(0.1, 0.18)
    elif mode in (2, 3):
        a = a * rng.uniform(2.6, 3.6) + 40
    a = a + rng.standard_normal(a.shape, dtype=np.float32) * 2.5
    return to_pil(a)
