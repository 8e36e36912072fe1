"""What the sourcing log says about an image the decode check rejected: a fixed short description per
reason code, the format its magic bytes name and its size, never anything quoted from the file.

The decode check's own message (``CheckedImage.detail``) may quote the file (the opening text of a page,
the first bytes of an unknown binary, a chunk name a parser choked on); the sourcing log is read by
people and tools that were never meant to see a dataset's or a download's content, so it is not copied.
"""

from __future__ import annotations

from cosmicman.core.imageio import (
    ANIMATED,
    CORRUPT,
    DECOMPRESSION_BOMB,
    EMPTY,
    NOT_AN_IMAGE,
    SVG,
    TRUNCATED,
    UNSUPPORTED_FORMAT,
)

REJECTION_DESCRIPTIONS = {
    EMPTY: "zero bytes",
    NOT_AN_IMAGE: "text (an HTML page, JSON, plain text), not an image",
    SVG: "an SVG drawing, not a raster image",
    UNSUPPORTED_FORMAT: "a binary format the pool does not take",
    TRUNCATED: "its data ends before the image does",
    CORRUPT: "its header or data cannot be decoded",
    DECOMPRESSION_BOMB: "declares more pixels or metadata than the budget",
    ANIMATED: "more than one frame; the pool keeps still images",
}


def rejection_detail(reason: str, sniffed_ext: str, n_bytes: int) -> str:
    """``"corrupt: its header or data cannot be decoded (jpg signature, 1234 bytes)"``."""
    described = REJECTION_DESCRIPTIONS.get(reason, "rejected by the decode check")
    signature = "no known signature" if sniffed_ext == "bin" else f"{sniffed_ext} signature"
    return f"{reason}: {described} ({signature}, {n_bytes} bytes)"
