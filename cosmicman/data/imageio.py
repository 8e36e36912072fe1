"""Safe image decoding and content hashing.

Every image entering the pool goes through ``inspect_image``: a full decode (not just the header), a
pixel budget against decompression bombs, EXIF orientation applied, and conversion to 8-bit RGB.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image, ImageOps

MAX_PIXELS = 64_000_000
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


class ImageDecodeError(ValueError):
    """The bytes are not a decodable raster image within the pixel budget."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    ext: str
    width: int
    height: int
    phash: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode fully to RGB with EXIF orientation applied, or raise ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in FORMAT_EXTENSIONS:
                raise ImageDecodeError(f"unsupported format {img.format!r}")
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(f"{img.width}x{img.height} exceeds the {max_pixels} pixel budget")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
            return img
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc


def image_format_ext(data: bytes) -> str:
    """File extension for the stored blob, from the bytes' real format ("bin" when undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return FORMAT_EXTENSIONS.get(img.format or "", "bin")
    except Exception:  # noqa: BLE001 - any parse failure means "not an image we know"
        return "bin"


def inspect_image(data: bytes) -> tuple[ImageInfo, Image.Image]:
    """Decode and hash: the record fields every pool entry carries, plus the decoded image."""
    img = decode_image(data)
    return ImageInfo(sha256_hex(data), image_format_ext(data), img.width, img.height,
                     str(imagehash.phash(img))), img


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
