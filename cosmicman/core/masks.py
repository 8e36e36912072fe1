"""Label maps (one ATR part index per pixel) as 8-bit grayscale PNGs: how every stage stores a mask."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def mask_png(mask: np.ndarray) -> bytes:
    """A label map as an 8-bit grayscale PNG (lossless, small for flat regions)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    """The label map a :func:`mask_png` PNG holds."""
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)
