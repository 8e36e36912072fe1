"""Pixel measurements shared by the detectors, the fake-person features and the quality scorer."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

# Immerkaer's noise operator: the difference of two Laplacians, blind to edges of constant slope.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def gray(img: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2GRAY)


def noise_sigma(g: np.ndarray) -> float:
    """Immerkaer's estimate of the Gaussian noise sigma of a grey image, in grey levels."""
    conv = cv2.filter2D(g.astype(np.float32), -1, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(conv).mean() / 6.0)
