"""imageio against hostile files: each gets its recorded outcome, nothing raises anything else, bombs
are refused before their pixels exist, and --resize-to follows img2dataset's keep_ratio geometry."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from cosmicman.core import imageio
from cosmicman.core.imageio import (
    REJECTION_REASONS,
    CheckedImage,
    ImageDecodeError,
    check_image,
    decode_image,
    keep_ratio_size,
    perceptual_hash,
)
from tests.support.hostile_files import (
    HostileFile,
    encoded,
    hostile_files,
    jpeg_with_orientation,
    photo,
    png_16bit_gray,
    png_16bit_rgb,
)

CORPUS = hostile_files()


def luma_plane(data: bytes) -> Image.Image:
    """An image's luma as the "luma" scheme defines it, by Pillow alone: a (JFIF, so YCbCr) JPEG's own Y plane,
    upright; any other image's convert("L") of its normalized RGB."""
    img = Image.open(io.BytesIO(data))
    if img.format in ("JPEG", "MPO") and img.mode == "RGB" and "jfif" in img.info:
        img.draft("L", None)
        return ImageOps.exif_transpose(img)
    return decode_image(data).convert("L")


def luma_phash(data: bytes) -> str:
    """The "luma" scheme by imagehash itself: phash of the 32x32 pixels Pillow's reducing_gap 3 resize gives of
    the luma (imagehash's own resize of a 32x32 image to 32x32 is a copy)."""
    return str(imagehash.phash(luma_plane(data).resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)))


def dct_luma(data: bytes) -> Image.Image:
    """An image's luma as the "luma-dct" scheme defines it, by Pillow alone: a (JFIF, so YCbCr) JPEG's Y plane at
    libjpeg's DCT reduction, upright; any other image's convert("L"), box-reduced by the same factor."""
    img = Image.open(io.BytesIO(data))
    factor = imageio.hash_reduction(img.width, img.height)
    if img.format in ("JPEG", "MPO") and img.mode == "RGB" and "jfif" in img.info:
        img.draft("L", (img.width // factor, img.height // factor) if factor > 1 else None)
        return ImageOps.exif_transpose(img)
    return decode_image(data).convert("L").reduce(factor)


def dct_phash(data: bytes) -> str:
    """The "luma-dct" scheme (the default) by imagehash itself, on the reduced luma."""
    return str(imagehash.phash(dct_luma(data).resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)))


def bits_apart(a: str, b: str) -> int:
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


BOMBS = [h for h in CORPUS if h.reason == imageio.DECOMPRESSION_BOMB]


def test_the_corpus_covers_every_rejection_reason_and_normalization():
    assert {h.reason for h in CORPUS} - {None} == set(REJECTION_REASONS)
    kept = {n for h in CORPUS for n in h.normalizations}
    assert {
        imageio.CMYK_TO_RGB,
        imageio.SIXTEEN_BIT_TO_8,
        imageio.EXIF_ROTATED,
        imageio.PALETTE_TO_RGB,
        imageio.ALPHA_TO_RGB,
        imageio.GRAY_TO_RGB,
        "ext:jpg->png",
    } <= kept
    assert len({h.name for h in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("hostile", CORPUS, ids=lambda h: h.name)
def test_each_hostile_file_gets_its_outcome(hostile: HostileFile):
    checked = check_image(hostile.data, claimed_ext=hostile.claimed_ext)
    assert checked.reason == hostile.reason, checked.detail
    assert checked.ext == hostile.ext
    assert checked.sha256 == imageio.sha256_hex(hostile.data)
    assert checked.stored_bytes is None
    if hostile.reason is not None:
        assert (checked.width, checked.height, checked.phash) == (0, 0, None)
        assert checked.detail  # the error text is kept
        with pytest.raises(ImageDecodeError) as err:
            decode_image(hostile.data)
        assert err.value.reason == hostile.reason and str(err.value).startswith(f"{hostile.reason}: ")
        return
    assert (checked.width, checked.height) == hostile.size
    assert checked.detail.split(",") == list(hostile.normalizations) if hostile.normalizations else checked.detail == ""
    img = decode_image(hostile.data)
    assert img.mode == "RGB" and img.size == hostile.size
    assert checked.phash == dct_phash(hostile.data)


def test_normalized_pixels_are_right():
    gray16 = np.asarray(decode_image(png_16bit_gray(64, 16)))
    # The 16-bit ramp is scaled to 8 bits, not clipped at 255 (Pillow's own I;16 -> L would make it white).
    assert gray16[0, 0].tolist() == [0, 0, 0] and gray16[0, -1].tolist() == [255, 255, 255]
    assert 120 <= gray16[0, 32, 0] <= 135
    rgb16 = np.asarray(decode_image(png_16bit_rgb(64, 16)))
    assert rgb16[0, 0].tolist() == [0, 0, 0] and rgb16[0, -1].tolist() == [255, 0, 0]  # low bytes dropped
    by_name = {h.name: h for h in CORPUS}
    palette = np.asarray(decode_image(by_name["palette_with_transparency"].data))
    assert palette[0, 0].tolist() == [255, 255, 255] and palette[0, -1].tolist() == [255, 0, 0]
    rgba = np.asarray(decode_image(by_name["rgba_png"].data))
    assert rgba[0, 0].tolist() == [255, 255, 255] and rgba[0, -1].tolist() == [0, 0, 255]
    # CMYK round trip: within JPEG's error of the RGB it came from.
    cmyk = np.asarray(decode_image(by_name["cmyk_jpeg"].data), dtype=np.int16)
    assert np.abs(cmyk - np.asarray(photo(120, 80), dtype=np.int16)).mean() < 6


def test_exif_orientation_6_turns_the_photo_upright():
    source = photo(200, 100, seed=3)
    upright = np.asarray(decode_image(jpeg_with_orientation(source, 6)), dtype=np.int16)
    expected = np.asarray(source.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert upright.shape == expected.shape == (200, 100, 3)
    assert np.abs(upright - expected).mean() < 4
    assert np.abs(upright - np.asarray(source.transpose(Image.Transpose.ROTATE_90), dtype=np.int16)).mean() > 20


def _mutations(seed: int, count: int) -> list[bytes]:
    """Truncations, byte flips and spliced headers of valid files of every supported format."""
    rng = np.random.default_rng(seed)
    sources = [encoded(photo(64, 48), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")]
    sources += [h.data for h in CORPUS if h.data]
    out = []
    for i in range(count):
        data = bytearray(sources[i % len(sources)])
        kind = i % 3
        if kind == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
        else:
            other = sources[int(rng.integers(0, len(sources)))]
            cut = int(rng.integers(0, min(len(data), 64)))
            data = data[:cut] + other[cut:]
        out.append(bytes(data))
    return out


def test_nothing_raises_anything_but_the_recorded_rejection():
    outcomes: dict[str | None, int] = {}
    for data in _mutations(seed=5, count=600):
        checked = check_image(data, resize_to=32)
        assert checked.reason in REJECTION_REASONS or checked.reason is None
        assert check_image(data).reason == checked.reason  # a JPEG's luma decode, its YCbCr decode above
        outcomes[checked.reason] = outcomes.get(checked.reason, 0) + 1
        try:
            img = decode_image(data)
        except ImageDecodeError as exc:
            assert exc.reason == checked.reason
        else:
            assert checked.reason is None and img.mode == "RGB"
    # The mutations reach the decoders, not only the sniffing: several outcomes occur, kept files included.
    assert outcomes.get(None, 0) > 30 and outcomes.get(imageio.TRUNCATED, 0) > 30 and len(outcomes) >= 5, outcomes


def test_bombs_are_refused_before_their_pixels_are_allocated():
    """In a fresh interpreter (its peak RSS is this check's alone): every bomb is rejected without Pillow ever
    starting to decode its pixels, and the process's peak memory barely moves (the smallest bomb would need 81 MB)."""
    script = textwrap.dedent("""
        import json, resource
        from PIL import ImageFile
        from cosmicman.core.imageio import check_image
        from tests.support.hostile_files import hostile_files
        bombs = [h for h in hostile_files() if h.reason == "decompression_bomb"]
        check_image(bombs[0].data)  # imports and first-call setup out of the figures
        decodes = {"started": 0}
        load = ImageFile.ImageFile.load
        def counted_load(self, *args, **kwargs):
            decodes["started"] += 1
            return load(self, *args, **kwargs)
        ImageFile.ImageFile.load = counted_load
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcomes = {}
        for h in bombs:
            decodes["started"] = 0
            outcomes[h.name] = (check_image(h.data).reason, decodes["started"])
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"outcomes": outcomes, "grown_kb": grown_kb}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["outcomes"] == {h.name: ["decompression_bomb", 0] for h in BOMBS}
    assert figures["grown_kb"] < 20_000, figures


def test_keep_ratio_geometry_is_img2datasets():
    # albumentations' SmallestMaxSize, which img2dataset's keep_ratio uses: scale = N / short side, each
    # side rounded half to even (Python's round).
    assert keep_ratio_size(800, 600, 512) == (683, 512)
    assert keep_ratio_size(600, 800, 512) == (512, 683)
    assert keep_ratio_size(1025, 1024, 512) == (512, 512)  # 512.5 rounds to even
    assert keep_ratio_size(3000, 1000, 512) == (1536, 512)
    assert keep_ratio_size(10_000, 10, 5) == (5000, 5)


def test_resize_to_downscales_the_smaller_side_and_stores_a_jpeg():
    data = encoded(photo(800, 600, seed=7), "PNG")
    checked = check_image(data, resize_to=512)
    assert (checked.width, checked.height, checked.ext, checked.reason) == (683, 512, "jpg", None)
    assert checked.detail == "resized:800x600->683x512"
    assert checked.sha256 == imageio.sha256_hex(data)  # the download's identity, not the re-encode's
    assert checked.phash == dct_phash(data) == check_image(data).phash  # hashed before the resize
    stored = Image.open(io.BytesIO(checked.stored_bytes))
    assert (stored.format, stored.size, stored.mode) == ("JPEG", (683, 512), "RGB")
    reference = np.asarray(photo(800, 600, seed=7).resize((683, 512), Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(np.asarray(stored, dtype=np.int16) - reference).mean() < 3


def test_resize_to_never_upscales_and_keeps_small_originals_as_they_are():
    for size in ((640, 480), (512, 900)):
        data = encoded(photo(*size), "JPEG")
        checked = check_image(data, resize_to=512)
        assert checked.stored_bytes is None and (checked.width, checked.height) == size and checked.detail == ""


def test_resize_to_applies_exif_orientation_and_normalizations_before_resizing():
    data = jpeg_with_orientation(photo(1200, 700, seed=2).convert("CMYK"), 6)
    checked = check_image(data, resize_to=350)
    assert checked.detail == "exif-rotated,cmyk->rgb,resized:700x1200->350x600"
    stored = Image.open(io.BytesIO(checked.stored_bytes))
    assert stored.size == (350, 600) and stored.getexif().get(0x0112) is None


def test_checked_images_and_errors_cross_process_boundaries():
    checked = check_image(encoded(photo(900, 700), "JPEG"), resize_to=512)
    assert pickle.loads(pickle.dumps(checked)) == checked
    assert isinstance(checked, CheckedImage) and len(pickle.dumps(check_image(b""))) < 400
    err = pickle.loads(pickle.dumps(ImageDecodeError(imageio.TRUNCATED, "JPEG: cut")))
    assert (err.reason, err.detail, str(err)) == ("truncated", "JPEG: cut", "truncated: JPEG: cut")


def test_each_phash_scheme_is_imagehash_on_its_own_32x32_pixels():
    data = encoded(photo(900, 600, seed=3), "JPEG", quality=90)
    img = decode_image(data)
    assert perceptual_hash(img, "full") == str(imagehash.phash(img)) == check_image(data, phash_scheme="full").phash
    assert check_image(data, phash_scheme="luma").phash == luma_phash(data)  # of the decoder's Y plane
    assert perceptual_hash(luma_plane(data), "luma") == luma_phash(data)
    # the default, "luma-dct": of the decoder's Y plane at 1/4 scale (600 px a side is under 8 x 128)
    assert imageio.hash_reduction(900, 600) == 4 and dct_luma(data).size == (225, 150)
    assert check_image(data).phash == dct_phash(data)
    png = encoded(img, "PNG")
    assert perceptual_hash(img, "luma") == luma_phash(png) == check_image(png, phash_scheme="luma").phash
    # convert("L") of the RGB, box-reduced
    assert perceptual_hash(img, "luma-dct") == dct_phash(png) == check_image(png).phash == perceptual_hash(img)
    with pytest.raises(ValueError, match="the schemes are full, luma, luma-dct"):
        perceptual_hash(img, "reduced")


def test_a_jpeg_hashes_the_same_bits_with_and_without_a_resize():
    """Decoded to its Y plane without a resize, to YCbCr with one: the pool compares the two."""
    source = scene(4, 1200, 900)
    cases = {
        "baseline 4:2:0": encoded(source, "JPEG", quality=90),
        "progressive": encoded(source, "JPEG", quality=80, progressive=True),
        "4:4:4": encoded(source, "JPEG", quality=80, subsampling=0),
        "exif-rotated": jpeg_with_orientation(source, 6),
        "rgb colour space": encoded(source, "JPEG", quality=90, keep_rgb=True),  # Adobe transform 0: no Y plane
        "grayscale": encoded(source.convert("L"), "JPEG", quality=90),
    }
    for name, data in cases.items():
        for scheme, reference_hash in (("luma", luma_phash), ("luma-dct", dct_phash)):
            plain, resized = check_image(data, phash_scheme=scheme), check_image(data, 512, phash_scheme=scheme)
            assert plain.reason is None and resized.reason is None and resized.stored_bytes is not None, name
            assert plain.phash == resized.phash == reference_hash(data), (name, scheme)
        stored = Image.open(io.BytesIO(resized.stored_bytes))
        assert (stored.format, stored.size) == ("JPEG", (resized.width, resized.height)), name
        upright = {"exif-rotated": source.transpose(Image.Transpose.ROTATE_270), "grayscale": source.convert("L")}
        reference = upright.get(name, source).resize(stored.size, Image.Resampling.BOX).convert("RGB")
        assert np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).mean() < 3, name
    # An RGB-colour-space JPEG's luma is libjpeg's from its RGB: the same bits as Pillow's convert("L").
    rgb_space = cases["rgb colour space"]
    assert check_image(rgb_space, phash_scheme="luma").phash == perceptual_hash(decode_image(rgb_space), "luma")
    assert check_image(rgb_space).phash == perceptual_hash(decode_image(rgb_space), "luma-dct")


def test_the_luma_decode_reports_what_the_rgb_decode_reports():
    rotated = check_image(jpeg_with_orientation(photo(200, 100, seed=3), 6), resize_to=None, claimed_ext="png")
    assert (rotated.width, rotated.height, rotated.ext, rotated.detail) == (
        100,
        200,
        "jpg",
        "exif-rotated,ext:png->jpg",
    )
    buf = io.BytesIO()
    photo(300, 200).save(buf, "MPO", save_all=True, append_images=[photo(300, 200, seed=2)])
    mpo = check_image(buf.getvalue())
    assert (mpo.reason, mpo.width, mpo.height, mpo.ext, mpo.detail) == (None, 300, 200, "jpg", "mpo-first-image")
    assert mpo.phash == check_image(buf.getvalue(), resize_to=150).phash
    gray = check_image(encoded(photo(80, 60).convert("L"), "JPEG"))
    assert (gray.reason, gray.detail) == (None, "gray->rgb")


def test_the_luma_decode_still_finds_truncated_and_corrupt_scan_data():
    """libjpeg entropy-decodes every component's coefficients for a Y-plane output too: a cut or a broken marker in
    the scan is found as in the RGB decode. (It only warns about a bad Huffman code, in either decode, so a flipped
    byte that keeps the stream parseable is kept by both.)"""
    data = encoded(photo(640, 480, seed=4), "JPEG", quality=90)
    scan = data.index(b"\xff\xda")
    middle = (scan + len(data)) // 2
    assert check_image(data).reason is None
    for cut in (len(data) - 1, middle, scan + 20):  # one byte short (the end marker's second byte) is a cut too
        assert check_image(data[:cut]).reason == imageio.TRUNCATED, cut
    for marker in (b"\xff\xc0", b"\xff\xd8", b"\xff\xda"):  # a frame header, an image start, a scan header
        broken = data[:middle] + marker + data[middle + 2 :]
        assert check_image(broken).reason == check_image(broken, resize_to=256).reason == imageio.CORRUPT, marker
        with pytest.raises(ImageDecodeError, match="^corrupt: "):
            decode_image(broken)
    # The verdict is the RGB decode's for any damage in the scan, chroma included.
    rng = np.random.default_rng(11)
    outcomes: dict[str | None, int] = {}
    for i in range(300):
        damaged = bytearray(data)
        if i % 3 == 0:
            damaged = damaged[: int(rng.integers(scan, len(data)))]
        else:
            for pos in rng.integers(scan + 12, len(data) - 2, size=int(rng.integers(1, 6))):
                damaged[pos] = 0xFF if i % 3 == 1 else int(rng.integers(0, 256))
        luma = check_image(bytes(damaged)).reason
        try:
            decode_image(bytes(damaged))
        except ImageDecodeError as exc:
            assert exc.reason == luma
        else:
            assert luma is None
        outcomes[luma] = outcomes.get(luma, 0) + 1
    assert set(outcomes) == {None, imageio.TRUNCATED, imageio.CORRUPT}, outcomes


def test_the_luma_hashes_are_within_a_few_bits_of_the_full_hash():
    for seed in range(12):
        data = encoded(scene(seed), "JPEG", quality=90)
        full = check_image(data, phash_scheme="full").phash
        assert bits_apart(check_image(data, phash_scheme="luma").phash, full) <= 4, seed
        assert bits_apart(check_image(data).phash, full) <= 6, seed


def test_the_dct_reduction_keeps_both_sides_at_least_128_pixels():
    """libjpeg's scales are 1/8, 1/4, 1/2 and 1; "luma-dct" takes the smallest that leaves 128 pixels a side (so the
    32x32 hash is still made from 4x its pixels), and Pillow's draft gives exactly that scale."""
    assert imageio.DCT_HASH_SIDE == 128
    edges = {1024: 8, 1023: 4, 512: 4, 511: 2, 256: 2, 255: 1, 64: 1}
    for short, factor in edges.items():
        assert imageio.hash_reduction(3000, short) == imageio.hash_reduction(short, 3000) == factor, short
        data = encoded(photo(short + 8, short, seed=1), "JPEG", quality=80)
        reduced = imageio.decode_normalized(data, ycbcr_jpeg_as="L", reduction=imageio.hash_reduction).image
        assert reduced.size == (-(-(short + 8) // factor), -(-short // factor)), short


def scene(seed: int, width: int = 960, height: int = 560) -> Image.Image:
    """A photo-like frame with structure at the scale a perceptual hash sees (9 x 12 colour cells) and grain."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = rng.integers(-12, 13, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(field, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def test_the_luma_scheme_finds_resized_recompressed_copies_within_the_radius():
    """The reason it may replace the full one: a half-size JPEG q70 copy stays within the ingest's near-duplicate
    radius (4 bits) under both schemes, while distinct frames stay far apart."""
    frames = [encoded(scene(s), "JPEG", quality=90) for s in range(12)]
    for scheme in ("full", "luma", "luma-dct"):
        hashes = [check_image(f, phash_scheme=scheme).phash for f in frames]
        for f, h in zip(frames, hashes):
            half = decode_image(f).resize((480, 280), Image.Resampling.BICUBIC)
            assert bits_apart(h, check_image(encoded(half, "JPEG", quality=70), phash_scheme=scheme).phash) <= 2
        assert min(bits_apart(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 8, scheme
