"""Safe image decoding, classification of what cannot be decoded, and content hashing.

Every image entering the pool goes through ``decode_image`` (or ``check_image``, its per-file worker
form): a full decode (not just the header), a pixel budget checked on the header before any pixel is
allocated, EXIF orientation applied, and conversion to 8-bit RGB. ``check_image`` decodes a YCbCr JPEG to its
luma plane instead (or to YCbCr when it resizes): libjpeg still entropy-decodes every coefficient of every
component, so a truncated or corrupt file is rejected as in the RGB decode, but it skips the chroma's inverse DCT
and the colour conversion, which the ingest never looks at.

What fails gets a stable reason code (``ImageDecodeError.reason``, ``CheckedImage.reason``), one of
``REJECTION_REASONS``; the message keeps the detail. What is valid but unusual is normalized and kept,
and the normalization is reported (``CMYK_TO_RGB`` ...), so a source that serves odd files shows up in
the counts instead of silently.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import imagehash
import numpy as np
import scipy.fft
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

MAX_PIXELS = 64_000_000
# The formats a pool image may have. Image.open is restricted to these plugins: a hostile file is never
# handed to a parser we do not need (EPS would start Ghostscript, for one).
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
    "AVIF": "avif",
}
# Pillow names a JPEG that carries a Multi-Picture index (some phone and camera photos) "MPO" and opens
# it through the JPEG plugin; its first image is the photo, the others are previews or a stereo pair.
_OPENED_AS = {"MPO": "JPEG"}

# Rejection reasons.
EMPTY = "empty"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # text: an HTML error page, JSON, XML, plain text
SVG = "svg"  # a vector drawing, not a photo
UNSUPPORTED_FORMAT = "unsupported_format"  # binary in a format we do not take (HEIC, PDF, ICO, unknown)
TRUNCATED = "truncated"  # a supported format whose data ends before the image does
CORRUPT = "corrupt"  # a supported format whose header or data cannot be decoded
DECOMPRESSION_BOMB = "decompression_bomb"  # declares more pixels (or metadata) than the budget
# More than one frame. A policy choice: the pool keeps still photos only, and decoding the first frame
# would silently keep GIF loops, stickers and slideshows.
ANIMATED = "animated"
REJECTION_REASONS = (EMPTY, NOT_AN_IMAGE, SVG, UNSUPPORTED_FORMAT, TRUNCATED, CORRUPT, DECOMPRESSION_BOMB, ANIMATED)

# Normalizations, reported comma-separated in ``CheckedImage.detail``.
CMYK_TO_RGB = "cmyk->rgb"
SIXTEEN_BIT_TO_8 = "16bit->8bit"
EXIF_ROTATED = "exif-rotated"
PALETTE_TO_RGB = "palette->rgb"
ALPHA_TO_RGB = "alpha->rgb"  # composited on white
GRAY_TO_RGB = "gray->rgb"
FIRST_OF_MPO = "mpo-first-image"
RESIZED = "resized"  # resized:<w>x<h>-><w>x<h>
WRONG_EXTENSION = "ext"  # ext:<claimed>-><real>

RESIZE_JPEG_QUALITY = 95  # img2dataset's default encode_quality, so --resize-to compares like with like


class ImageDecodeError(ValueError):
    """The bytes are not a decodable raster still image within the pixel budget."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # 8-bit RGB, EXIF orientation applied; a YCbCr JPEG in the mode asked of decode_normalized
    format: str  # Pillow's format name of the bytes ("JPEG", "PNG", ...)
    normalizations: list[str]  # what was done to reach 8-bit RGB, in order
    size: tuple[int, int]  # (width, height) of the whole image after orientation; ``image`` may be DCT-reduced


@dataclass(frozen=True)
class CheckedImage:
    """One downloaded file's verdict: small and picklable, returned from ingest worker processes."""

    sha256: str  # of the downloaded bytes: the source's identity, also when resized
    ext: str  # of the blob to store: stored_bytes' when set, else the real format's
    width: int  # of the image as stored, after orientation (and resize); 0 when rejected
    height: int
    phash: str | None  # perceptual_hash of the decoded image (before any resize), under the pool's scheme
    reason: str | None  # one of REJECTION_REASONS, None when the image is good
    detail: str  # the error text, or the normalizations applied ("cmyk->rgb,exif-rotated")
    stored_bytes: bytes | None  # a re-encoded JPEG to store instead of the download (only with resize_to)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER_BINARY_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def signature_format(data: bytes) -> str | None:
    """The supported format whose magic bytes the data starts with, if any."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def _other_binary_format(data: bytes) -> str:
    for magic, fmt in _OTHER_BINARY_SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[4:8] == b"ftyp":
        return f"ISO media {data[8:12].decode('latin-1')!r}"  # HEIC ('heic', 'mif1'), MP4 ...
    return f"unknown, starting {data[:8].hex()}"


def _text_head(data: bytes) -> str | None:
    """The first KB as text when the bytes look like text (HTML, JSON, XML, SVG), else None."""
    head = data[:1024]
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return text if printable >= 0.95 * len(text) else None  # whitespace only ("") is text too


def _classify_unidentified(data: bytes) -> ImageDecodeError:
    supported = signature_format(data)
    if supported is not None:
        return ImageDecodeError(
            TRUNCATED if len(data) < 64 else CORRUPT,
            f"{supported} signature but no readable header ({len(data)} bytes)",
        )
    text = _text_head(data)
    if text is not None:
        # An SVG may open with an XML prolog, comments or a DOCTYPE before its <svg> element.
        if text.startswith("<") and b"<svg" in data[:65536].lower():
            return ImageDecodeError(SVG, "an SVG drawing, not a raster image")
        return ImageDecodeError(NOT_AN_IMAGE, f"text, starting {text[:60]!r}" if text else "whitespace only")
    return ImageDecodeError(UNSUPPORTED_FORMAT, _other_binary_format(data))


def _ends_early(data: bytes, fmt: str) -> bool:
    """Whether the file lacks its format's end marker: a failed decode is then a truncation."""
    if fmt == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in data[-16:]
    if fmt == "GIF":
        return not data.rstrip(b"\x00").endswith(b";")
    if fmt == "WEBP":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    return False


def _to_8bit_rgb(img: Image.Image, fmt: str, data: bytes, normalizations: list[str]) -> Image.Image:
    if fmt == "PNG" and len(data) > 24 and data[24] == 16:
        # Pillow reads 16-bit RGB(A) PNGs into 8-bit modes itself (high bytes); 16-bit gray stays I;16.
        normalizations.append(SIXTEEN_BIT_TO_8)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        normalizations.append(CMYK_TO_RGB)
        return img.convert("RGB")
    if mode.startswith("I;16"):
        # Pillow's I;16 -> L conversion clips at 255 (a 16-bit photo turns white); scale by 1/256 instead.
        if SIXTEEN_BIT_TO_8 not in normalizations:
            normalizations.append(SIXTEEN_BIT_TO_8)
        gray = np.asarray(img).astype(np.uint32) >> 8
        img, mode = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L"), "L"
    if mode == "P":
        normalizations.append(PALETTE_TO_RGB)
        if "transparency" not in img.info:
            return img.convert("RGB")
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # The colour under fully transparent pixels is arbitrary (often black); white is how a web page
        # shows it, and what img2dataset composites onto.
        normalizations.append(ALPHA_TO_RGB)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1"):
        normalizations.append(GRAY_TO_RGB)
    else:
        normalizations.append(f"{mode.lower()}->rgb")
    return img.convert("RGB")


def _is_ycbcr_jpeg(img: Image.Image) -> bool:
    """Whether libjpeg decodes ``img`` (opened, not loaded) from YCbCr. Its own rule for three components
    (libjpeg-turbo's default_decompress_parms): a JFIF APP0 says YCbCr; else an Adobe APP14's transform says
    (0 is RGB); else component ids 'R', 'G', 'B' say RGB; anything else is YCbCr. It must agree with libjpeg, not
    guess: asking for YCbCr output of an RGB JPEG fails the decode."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or img.mode != "RGB":
        return False
    if any(marker == "APP0" and len(s) >= 14 and s.startswith(b"JFIF\x00") for marker, s in img.applist):
        return True
    adobe = [s for marker, s in img.applist if marker == "APP14" and len(s) >= 12 and s.startswith(b"Adobe")]
    if adobe:
        return adobe[-1][11] != 0
    return [layer[0] for layer in img.layer] != [ord("R"), ord("G"), ord("B")]


def dct_reduction(width: int, height: int, min_side: int) -> int:
    """The largest of libjpeg's DCT reductions (8, 4, 2, 1) that leaves both sides at least ``min_side``."""
    return next(f for f in (8, 4, 2, 1) if min(width, height) >= f * min_side or f == 1)


def decode_normalized(
    data: bytes,
    max_pixels: int = MAX_PIXELS,
    ycbcr_jpeg_as: Literal["RGB", "L", "YCbCr"] = "RGB",
    reduction: Callable[[int, int], int] | None = None,
) -> DecodedImage:
    """Decode fully to 8-bit RGB with EXIF orientation applied, reporting each normalization; or raise
    ImageDecodeError with a reason code. Never raises anything else: Pillow's plugins answer hostile
    input with many exception types, and every one of them means "rejected".

    ``ycbcr_jpeg_as``: what a YCbCr JPEG is decoded to: "L" is libjpeg's own Y plane, "YCbCr" its planes as stored
    (chroma upsampled); every coefficient is entropy-decoded either way, so the verdict is the RGB decode's.
    ``reduction``: (width, height) -> 1, 2, 4 or 8: a YCbCr JPEG decoded to "L" or "YCbCr" comes out reduced by that
    factor, by libjpeg's scaled inverse DCT (every coefficient is still entropy-decoded, only fewer pixels made)."""
    if not data:
        raise ImageDecodeError(EMPTY, "zero bytes")
    fmt = signature_format(data) or "?"  # for the message when Pillow cannot even read the header
    try:
        with warnings.catch_warnings():
            # Pillow warns about each broken metadata tag of a hostile file; in ingest workers that is
            # stderr noise per file, and the outcome already says what matters.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=list(FORMAT_EXTENSIONS))
            except UnidentifiedImageError:
                raise _classify_unidentified(data) from None
            fmt = img.format or "?"
            # The budget first: seeking frames to count them may already decode pixels.
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(
                    DECOMPRESSION_BOMB, f"{fmt} declares {img.width}x{img.height}, over the {max_pixels} pixel budget"
                )
            normalizations: list[str] = []
            if fmt in _OPENED_AS:
                normalizations.append(FIRST_OF_MPO)
            elif getattr(img, "is_animated", False):
                raise ImageDecodeError(ANIMATED, f"{fmt} with {getattr(img, 'n_frames', '>1')} frames")
            drafted = ycbcr_jpeg_as != "RGB" and _is_ycbcr_jpeg(img)
            width, height = img.size
            if drafted:
                # before load: libjpeg's output colour space, at full size or DCT-reduced
                factor = reduction(width, height) if reduction else 1
                # Pillow's draft takes the largest factor (of 8, 4, 2, 1) at most min(width // w, height // h)
                img.draft(ycbcr_jpeg_as, (width // factor, height // factor) if factor > 1 else None)
            img.load()
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in range(2, 9):
                ImageOps.exif_transpose(img, in_place=True)
                normalizations.append(EXIF_ROTATED)
                if orientation in range(5, 9):  # the transposing ones
                    width, height = height, width
            if drafted:
                return DecodedImage(img, _OPENED_AS.get(fmt, fmt), normalizations, (width, height))
            rgb = _to_8bit_rgb(img, _OPENED_AS.get(fmt, fmt), data, normalizations)
            return DecodedImage(rgb, _OPENED_AS.get(fmt, fmt), normalizations, (width, height))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(DECOMPRESSION_BOMB, str(exc)) from exc
    except ValueError as exc:
        if "too large" in str(exc).lower():  # PNG text chunks over PngImagePlugin.MAX_TEXT_CHUNK/MEMORY
            raise ImageDecodeError(DECOMPRESSION_BOMB, f"{fmt}: {exc}") from exc
        raise ImageDecodeError(CORRUPT, f"{fmt}: ValueError: {exc}") from exc
    except Exception as exc:  # every other failure on hostile input (see the docstring)
        truncated = "truncated" in str(exc).lower() or isinstance(exc, EOFError) or _ends_early(data, fmt)
        raise ImageDecodeError(TRUNCATED if truncated else CORRUPT, f"{fmt}: {type(exc).__name__}: {exc}") from exc


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode fully to 8-bit RGB with EXIF orientation applied, or raise ImageDecodeError."""
    return decode_normalized(data, max_pixels).image


def image_format_ext(data: bytes) -> str:
    """File extension for a stored blob, from the bytes' real format ("svg", or "bin" when unknown)."""
    fmt = signature_format(data)
    if fmt is not None:
        return FORMAT_EXTENSIONS[fmt]
    text = _text_head(data)
    return "svg" if text is not None and text.startswith("<") and b"<svg" in data[:65536].lower() else "bin"


# How a pool's perceptual hashes are made; a pool keeps the scheme of its first batch (sourcing/dedup.py), so that
# every hash it compares was made the same way.
# - "full": imagehash.phash of the full decoded RGB image: Pillow's LANCZOS straight to 32x32, as costly as the
#   decode. Pools sourced before the scheme record existed.
# - "luma": the same DCT hash on 32x32 pixels of the image's luma, from Pillow's resize with reducing_gap 3 (an
#   integer box reduce to at least 3x the target, then LANCZOS). The luma of a YCbCr JPEG is the decoder's own Y
#   plane, so check_image decodes no chroma pixels for it; of every other image, Pillow's convert("L") of the
#   normalized RGB (the same bits libjpeg gives for an RGB JPEG). Measured on 200 of the benchmark's photos: 67 %
#   hash as under "full", 32 % 2 bits away, 1 % 4 bits, so the two never mix in one pool.
# - "luma-dct": "luma" of the luma first reduced by ``dct_reduction(width, height, 64)`` (8 for any image of 512
#   pixels a side or more). A YCbCr JPEG's reduced luma is libjpeg's scaled inverse DCT of the Y plane (an 8x
#   reduction is each block's DC term: the block's mean), so check_image reconstructs 1/64 of the luma pixels while
#   still entropy-decoding every coefficient; every other image's is Pillow's box ``reduce`` of its convert("L").
#   The hash only ever sees 32x32 pixels, so nothing it uses is lost: against half-size JPEG q70 copies of the
#   benchmark's photos it keeps within the near-duplicate radius as "luma" does (tests/core/test_phash_schemes.py).
#   The check of a YCbCr JPEG, sha256 and hash included, costs about 0.7 of a bare RGB decode.
PHASH_SCHEMES = ("full", "luma", "luma-dct")
DEFAULT_PHASH_SCHEME = "luma-dct"  # what a new pool uses
PHASH_REDUCING_GAP = 3.0
_PHASH_SIDE = 32  # imagehash.phash's hash_size 8 x highfreq_factor 4
DCT_HASH_SIDE = 128  # "luma-dct" reduces the luma while both its sides stay at least this


def hash_reduction(width: int, height: int) -> int:
    """How far "luma-dct" reduces an image's luma before hashing it."""
    return dct_reduction(width, height, DCT_HASH_SIDE)


def _luma(img: Image.Image) -> Image.Image:
    return img if img.mode == "L" else img.getchannel("Y") if img.mode == "YCbCr" else img.convert("L")


def _hash_of_luma(luma: Image.Image) -> str:
    gray = luma.resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=PHASH_REDUCING_GAP)
    # imagehash.phash's own steps on those 32x32 pixels: 2-D DCT-II, the 8x8 lowest frequencies against their median
    # (np.median's: the mean of the middle two), the bits row by row as 16 hex digits (str(ImageHash)). Spelled out
    # because np.median and ImageHash's formatting cost a tenth of the hash, which every pool image pays.
    dct = scipy.fft.dct(scipy.fft.dct(np.asarray(gray, dtype=np.float64), axis=0), axis=1)[:8, :8].ravel()
    middle = np.partition(dct, (31, 32))
    return np.packbits(dct > (middle[31] + middle[32]) / 2).tobytes().hex()


def perceptual_hash(img: Image.Image, scheme: str = DEFAULT_PHASH_SCHEME) -> str:
    """The 64-bit DCT hash of ``img`` (16 hex digits) under ``scheme`` (see PHASH_SCHEMES), ``img`` at its full
    size. For "luma" and "luma-dct", an "L" image is the luma itself and a "YCbCr" one gives its Y plane; a JPEG's
    hash as the pool has it is ``check_image``'s, from the decoder's Y plane, not this of its RGB decode."""
    if scheme == "full":
        return str(imagehash.phash(img))
    if scheme not in PHASH_SCHEMES:
        raise ValueError(f"unknown phash scheme {scheme!r}; the schemes are {', '.join(PHASH_SCHEMES)}")
    luma = _luma(img)
    if scheme == "luma-dct":
        luma = luma.reduce(hash_reduction(luma.width, luma.height))
    return _hash_of_luma(luma)


def keep_ratio_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """img2dataset's ``--resize_mode keep_ratio --image_size N`` geometry (albumentations'
    SmallestMaxSize): the smaller side becomes N, the other is scaled and rounded half to even."""
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized_jpeg(img: Image.Image, size: tuple[int, int]) -> bytes:
    # BOX is pixel-area averaging, img2dataset's default downscale interpolation (OpenCV's INTER_AREA). A JPEG
    # decoded as YCbCr is averaged and re-encoded in YCbCr: the average commutes with the affine colour conversion
    # (up to rounding), the encoder would convert RGB back to YCbCr, and Pillow's YCbCr -> RGB costs as much as the
    # resize and the encode together. ``img`` may be DCT-reduced already; ``size`` is from the whole image.
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.BOX).save(buf, format="JPEG", quality=RESIZE_JPEG_QUALITY)
    return buf.getvalue()


def check_image(
    data: bytes,
    resize_to: int | None = None,
    claimed_ext: str | None = None,
    phash_scheme: str = DEFAULT_PHASH_SCHEME,
) -> CheckedImage:
    """The ingest's per-file check: full decode, sha256, perceptual hash, and the verdict; never raises.
    Under the "luma" scheme a YCbCr JPEG is decoded to its Y plane (to YCbCr when ``resize_to`` is set, its
    Y plane hashed: the same bits), with the same verdict as the RGB decode (``decode_normalized``).

    ``resize_to``: the smaller side is brought down to this many pixels, aspect ratio kept, and the result
    re-encoded as a JPEG in ``stored_bytes`` (img2dataset's ``keep_ratio`` with ``--resize_only_if_bigger
    True``). An image already that small is never upscaled (that would invent pixels and let a too-small
    image pass the size filter); its original bytes are stored as they are (``stored_bytes`` None).
    ``claimed_ext``: the extension the URL or file name claims; a mismatch with the real format is
    reported as a normalization ("ext:jpg->png") and the blob is stored under the real one.
    ``phash_scheme``: the pool's (PHASH_SCHEMES).
    """
    sha256 = sha256_hex(data)
    dct = phash_scheme == "luma-dct"
    ycbcr_jpeg_as: Literal["RGB", "L", "YCbCr"] = (
        "RGB" if phash_scheme == "full" else "L" if resize_to is None or dct else "YCbCr"
    )
    try:
        decoded = decode_normalized(data, ycbcr_jpeg_as=ycbcr_jpeg_as, reduction=hash_reduction if dct else None)
        img, (width, height) = decoded.image, decoded.size
        # a DCT-reduced decode is hashed as it is; a whole image as the scheme says
        phash = _hash_of_luma(_luma(img)) if img.size != decoded.size else perceptual_hash(img, phash_scheme)
        stored_bytes = None
        if resize_to is not None and min(width, height) > resize_to:
            target = keep_ratio_size(width, height, resize_to)
            if img.mode == "L" and dct:  # a YCbCr JPEG's luma: decode its pixels, reduced as far as the target allows
                img = decode_normalized(
                    data, ycbcr_jpeg_as="YCbCr", reduction=lambda w, h: dct_reduction(w, h, resize_to)
                ).image
            stored_bytes = _resized_jpeg(img, target)
    except ImageDecodeError as exc:
        return CheckedImage(sha256, image_format_ext(data), 0, 0, None, exc.reason, exc.detail, None)
    ext, normalizations = FORMAT_EXTENSIONS[decoded.format], decoded.normalizations
    if claimed_ext is not None:
        claimed = claimed_ext.lower().lstrip(".")
        if (
            claimed != ext
            and not (ext == "jpg" and claimed in ("jpeg", "jpe", "jfif"))
            and not (ext == "tif" and claimed == "tiff")
        ):
            normalizations.append(f"{WRONG_EXTENSION}:{claimed}->{ext}")
    if stored_bytes is not None:
        normalizations.append(f"{RESIZED}:{width}x{height}->{target[0]}x{target[1]}")
        width, height, ext = *target, "jpg"
    return CheckedImage(sha256, ext, width, height, phash, None, ",".join(normalizations), stored_bytes)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
