"""Files a web crawl serves in place of a plain photo, each with the outcome the pool expects.

Built in memory, deterministic, a few KB each: broken files (rejected with a reason code), valid but
unusual ones (normalized and kept, with the normalization reported), and decompression bombs that
declare far more pixels than they carry. ``tests/core/test_imageio.py`` asserts each outcome through
``cosmicman.core.imageio.check_image``; the image server tests may serve the same bytes over HTTP.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cosmicman.core import imageio


@dataclass(frozen=True)
class HostileFile:
    name: str
    filename: str  # as served: the extension its URL claims
    data: bytes
    reason: str | None  # the expected rejection reason; None: kept
    normalizations: tuple[str, ...] = ()  # expected in CheckedImage.detail when kept
    size: tuple[int, int] = (0, 0)  # expected (width, height) as stored
    ext: str = "bin"  # expected real extension

    @property
    def claimed_ext(self) -> str:
        return self.filename.rsplit(".", 1)[-1]


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random colour field with grain: photo-like enough for JPEG to behave as on a photo."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = rng.integers(-12, 13, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(field, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes, *extra: bytes) -> bytes:
    """A PNG from its parts: IHDR as declared (true or not), extra chunks, one IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_16bit_rgb(width: int, height: int) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one): a red ramp in the high bytes, noise in the low."""
    rng = np.random.default_rng(1)
    rows = np.zeros((height, width, 3), dtype=">u2")
    rows[..., 0] = np.linspace(0, 65535, width, dtype=np.uint16)[None, :]
    rows[..., 1] = rng.integers(0, 256, (height, width))  # below the high byte: gone after 16 -> 8 bits
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))
    return png(width, height, 16, 2, zlib.compress(raw))


def png_16bit_gray(width: int, height: int) -> bytes:
    ramp = np.tile(np.linspace(0, 65535, width).astype(np.uint16), (height, 1))
    return encoded(Image.fromarray(ramp), "PNG")


def png_with_corrupt_idat() -> bytes:
    """A small PNG whose image data fails its CRC (the file is complete: it ends with IEND)."""
    data = bytearray(encoded(photo(64, 48), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF
    return bytes(data)


def png_bomb(side: int) -> bytes:
    """A ~100-byte PNG declaring side x side 8-bit gray pixels (one zero row of data)."""
    return png(side, side, 8, 0, zlib.compress(b"\x00" * (side + 1)))


def png_text_bomb() -> bytes:
    """A valid 8x8 PNG with a zTXt chunk that inflates to 64 MB (Pillow caps text chunks at 1 MB)."""
    ztxt = b"Comment\x00\x00" + zlib.compress(b"\x00" * 64_000_000, 9)
    raw = b"".join(b"\x00" + b"\x80" * 8 for _ in range(8))
    return png(8, 8, 8, 0, zlib.compress(raw), png_chunk(b"zTXt", ztxt))


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and single frame declare width x height; the LZW data is a stub."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(encoded(photo(16, 16), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(img, "JPEG", quality=90, exif=exif.tobytes())


def animated(fmt: str, frames: int = 3) -> bytes:
    images = [photo(48, 32, seed=s).convert("P" if fmt == "GIF" else "RGB") for s in range(frames)]
    return encoded(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def palette_with_transparency() -> bytes:
    """A 2-colour palette PNG: index 0 (black) is fully transparent, index 1 is red."""
    img = Image.new("P", (40, 30), 0)
    img.putpalette([0, 0, 0, 255, 0, 0])
    img.paste(1, (20, 0, 40, 30))
    return encoded(img, "PNG", transparency=0)


def rgba_half_transparent() -> bytes:
    """Left half fully transparent black, right half opaque blue."""
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (20, 0, 40, 30))
    return encoded(img, "PNG")


SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- exported by a drawing tool -->
<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><rect width="640" height="480" fill="red"/></svg>
"""
HTML_ERROR_PAGE = b"""<!DOCTYPE html>
<html><head><title>403 Forbidden</title></head>
<body><h1>Forbidden</h1><p>You don't have permission to access this resource.</p></body></html>
"""
JSON_ERROR = b'{"error": {"code": 404, "message": "image not found"}}'


def hostile_files() -> list[HostileFile]:
    """The corpus, in a fixed order."""
    r = imageio
    jpeg = encoded(photo(320, 240), "JPEG", quality=90)
    portrait_source = photo(200, 100, seed=3)
    return [
        # Rejected.
        HostileFile("zero_bytes", "a.jpg", b"", r.EMPTY),
        HostileFile("whitespace_only", "a.jpg", b" \r\n\t \n", r.NOT_AN_IMAGE),
        HostileFile("html_as_image", "a.jpg", HTML_ERROR_PAGE, r.NOT_AN_IMAGE),
        HostileFile("json_as_image", "a.png", JSON_ERROR, r.NOT_AN_IMAGE),
        HostileFile("svg", "a.svg", SVG, r.SVG, ext="svg"),
        HostileFile(
            "heic", "a.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), r.UNSUPPORTED_FORMAT
        ),
        HostileFile("random_binary", "a.jpg", bytes(range(256)) * 4, r.UNSUPPORTED_FORMAT),
        HostileFile("truncated_jpeg", "a.jpg", jpeg[: len(jpeg) // 2], r.TRUNCATED, ext="jpg"),
        HostileFile("truncated_png", "a.png", encoded(photo(320, 240), "PNG")[:3000], r.TRUNCATED, ext="png"),
        HostileFile("jpeg_header_only", "a.jpg", jpeg[:40], r.TRUNCATED, ext="jpg"),
        HostileFile("png_bad_crc", "a.png", png_with_corrupt_idat(), r.CORRUPT, ext="png"),
        HostileFile("png_bomb_30000x30000", "a.png", png_bomb(30_000), r.DECOMPRESSION_BOMB, ext="png"),
        HostileFile("gif_bomb_9000x9000", "a.gif", gif_bomb(9_000, 9_000), r.DECOMPRESSION_BOMB, ext="gif"),
        HostileFile(
            "jpeg_declaring_65000x65000", "a.jpg", jpeg_declaring(65_000, 65_000), r.DECOMPRESSION_BOMB, ext="jpg"
        ),
        HostileFile("png_text_chunk_bomb", "a.png", png_text_bomb(), r.DECOMPRESSION_BOMB, ext="png"),
        HostileFile("animated_gif", "a.gif", animated("GIF"), r.ANIMATED, ext="gif"),
        HostileFile("animated_webp", "a.webp", animated("WEBP"), r.ANIMATED, ext="webp"),
        HostileFile("animated_png", "a.png", animated("PNG"), r.ANIMATED, ext="png"),
        # Kept, normalized.
        HostileFile("plain_jpeg", "a.jpg", jpeg, None, (), (320, 240), "jpg"),
        HostileFile(
            "cmyk_jpeg",
            "a.jpg",
            encoded(photo(120, 80).convert("CMYK"), "JPEG", quality=90),
            None,
            (r.CMYK_TO_RGB,),
            (120, 80),
            "jpg",
        ),
        HostileFile(
            "png_16bit_gray",
            "a.png",
            png_16bit_gray(64, 16),
            None,
            (r.SIXTEEN_BIT_TO_8, r.GRAY_TO_RGB),
            (64, 16),
            "png",
        ),
        HostileFile("png_16bit_rgb", "a.png", png_16bit_rgb(64, 16), None, (r.SIXTEEN_BIT_TO_8,), (64, 16), "png"),
        HostileFile(
            "exif_orientation_6",
            "a.jpg",
            jpeg_with_orientation(portrait_source, 6),
            None,
            (r.EXIF_ROTATED,),
            (100, 200),
            "jpg",
        ),
        HostileFile("png_named_jpg", "a.jpg", encoded(photo(90, 60), "PNG"), None, ("ext:jpg->png",), (90, 60), "png"),
        HostileFile(
            "palette_with_transparency",
            "a.png",
            palette_with_transparency(),
            None,
            (r.PALETTE_TO_RGB, r.ALPHA_TO_RGB),
            (40, 30),
            "png",
        ),
        HostileFile("rgba_png", "a.png", rgba_half_transparent(), None, (r.ALPHA_TO_RGB,), (40, 30), "png"),
        HostileFile(
            "grayscale_jpeg",
            "a.jpeg",
            encoded(photo(80, 60).convert("L"), "JPEG"),
            None,
            (r.GRAY_TO_RGB,),
            (80, 60),
            "jpg",
        ),
        HostileFile("webp_still", "a.webp", encoded(photo(80, 60), "WEBP"), None, (), (80, 60), "webp"),
    ]
