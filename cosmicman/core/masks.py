"""Label maps (one ATR part index per pixel) as 8-bit grayscale PNGs: how every stage stores a mask."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

N_ATR_LABELS = 18  # ATR's 17 parts and the background
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mask_png(mask: np.ndarray) -> bytes:
    """A label map as an 8-bit grayscale PNG (lossless, small for flat regions). Every stored mask comes from
    here, so its values are checked here once: readers of stored masks check only the header."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_ATR_LABELS):
        raise ValueError(f"label map values must be in 0..{N_ATR_LABELS - 1}, got {arr.min()}..{arr.max()}")
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    """The label map a :func:`mask_png` PNG holds; ``ValueError`` for a PNG that is not single-channel."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"label map PNG has mode {img.mode}, expected L")
        return np.array(img, dtype=np.uint8)


def mask_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a :func:`mask_png` PNG from its header alone; ``ValueError`` for anything that is not
    an 8-bit grayscale PNG (the signature, then IHDR as the first chunk, as the PNG spec requires)."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("label map is not a PNG (no PNG signature and IHDR chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if (depth, colour) != (8, 0):
        raise ValueError(f"label map PNG has bit depth {depth} and colour type {colour}, expected 8-bit grayscale")
    return width, height
