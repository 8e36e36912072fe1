"""The benchmark's photo-like JPEG set: deterministic, perceptually distinct, cached on disk.

Each image is a procedural scene: a smooth random colour field (what a perceptual hash sees, so every
image hashes differently) plus a crop of a shared texture-and-grain field (what makes the JPEG as large as
a camera photo's), at one of four strengths. Sizes run 640x480 to 1024x768 and, at quality 85, about 40 to
200 KB (110 KB mean).

The set is written once under ``.cache/bench-sourcing/jpegs-<count>-v<GENERATOR_VERSION>/`` with a
manifest; a later run with the same count finds the manifest and reuses the files.

    .venv/bin/python bench/make_jpegs.py [--count 5000]     (prints the manifest's summary)
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageChops

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / ".cache" / "bench-sourcing"
GENERATOR_VERSION = 2
DETAIL_SIZE = (1400, 1000)
JPEG_QUALITY = 85
# Above the near-duplicate search's largest radius (cosmicman.sourcing.dedup allows up to 15 bits), so no
# setting of it merges two of these images.
MIN_PHASH_DISTANCE = 16


@dataclass(frozen=True)
class JpegSet:
    folder: Path
    names: list[str]
    widths: list[int]
    heights: list[int]
    total_bytes: int
    min_phash_distance: int

    @property
    def count(self) -> int:
        return len(self.names)


@functools.cache
def _detail_fields() -> list[Image.Image]:
    """Texture plus grain at a few strengths, larger than any image: each image adds a crop of one at
    its own offset (drawing fresh noise per image would take most of the generation time)."""
    rng = np.random.default_rng([GENERATOR_VERSION, 2**32 - 1])  # apart from every image index
    fields = []
    for texture_weight, grain_amplitude in ((0.15, 4), (0.2, 7), (0.25, 10), (0.3, 13)):
        texture = Image.fromarray(rng.integers(0, 256, (DETAIL_SIZE[1] // 10, DETAIL_SIZE[0] // 10, 3), dtype=np.uint8))
        texture = np.asarray(texture.resize(DETAIL_SIZE, Image.Resampling.BILINEAR), dtype=np.float32) - 128
        grain = rng.integers(-grain_amplitude, grain_amplitude + 1, (DETAIL_SIZE[1], DETAIL_SIZE[0], 1))
        fields.append(Image.fromarray(np.clip(128 + texture_weight * texture + grain, 0, 255).astype(np.uint8)))
    return fields


def photo_like_jpeg(index: int, variant: int = 0) -> tuple[bytes, int, int]:
    """The index-th image of the set and its size; the same (index, variant), the same bytes. A new
    variant redraws an image whose hash came too close to another's."""
    rng = np.random.default_rng([GENERATOR_VERSION, index, variant])
    width, height = int(rng.integers(640, 1025)), int(rng.integers(480, 769))
    grid_w, grid_h = int(rng.integers(4, 9)), int(rng.integers(3, 7))
    scene = Image.fromarray(rng.integers(0, 256, (grid_h, grid_w, 3), dtype=np.uint8))
    scene = scene.resize((width // 8, height // 8), Image.Resampling.BICUBIC).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    fields = _detail_fields()
    detail = fields[int(rng.integers(0, len(fields)))]
    x, y = int(rng.integers(0, DETAIL_SIZE[0] - width + 1)), int(rng.integers(0, DETAIL_SIZE[1] - height + 1))
    img = ImageChops.add(scene, detail.crop((x, y, x + width, y + height)), scale=1.0, offset=-128)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), width, height


def _write_one(args: tuple[Path, int, int]) -> tuple[int, int, int, int]:
    folder, index, variant = args
    data, width, height = photo_like_jpeg(index, variant)
    (folder / jpeg_name(index)).write_bytes(data)
    return width, height, len(data), int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def jpeg_name(index: int) -> str:
    return f"photo-{index:06d}.jpg"


def too_close(hashes: np.ndarray, min_distance: int) -> tuple[set[int], int]:
    """Indices to redraw (the later of each pair of 64-bit hashes closer than ``min_distance``) and the
    smallest pairwise Hamming distance. Vectorised in row blocks: 5,000 hashes take well under a second."""
    redraw: set[int] = set()
    closest = 64
    for start in range(0, len(hashes), 512):
        rows = np.arange(start, min(start + 512, len(hashes)))
        distances = np.bitwise_count(hashes[rows, None] ^ hashes[None, :]).astype(np.int16)
        distances[rows[:, None] >= np.arange(len(hashes))[None, :]] = 64  # each pair once, as (earlier, later)
        closest = min(closest, int(distances.min()))
        _, later = np.nonzero(distances < min_distance)
        redraw.update(int(i) for i in later)
    return redraw, closest


def jpeg_set(count: int = 5000, workers: int = 2) -> JpegSet:
    """The cached set of ``count`` JPEGs, generated first if absent (about 20 ms an image per core)."""
    folder = CACHE_ROOT / f"jpegs-{count}-v{GENERATOR_VERSION}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        return JpegSet(folder, m["names"], m["widths"], m["heights"], m["total_bytes"], m["min_phash_distance"])
    folder.mkdir(parents=True, exist_ok=True)
    variants = [0] * count
    todo = list(range(count))
    widths, heights, sizes = [0] * count, [0] * count, [0] * count
    hashes = np.zeros(count, dtype=np.uint64)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        while todo:
            jobs = [(folder, i, variants[i]) for i in todo]
            for i, (width, height, size, phash) in zip(todo, pool.map(_write_one, jobs, chunksize=32)):
                widths[i], heights[i], sizes[i], hashes[i] = width, height, size, phash
            redraw, closest = too_close(hashes, MIN_PHASH_DISTANCE)
            for i in redraw:
                variants[i] += 1
            todo = sorted(redraw)
    names = [jpeg_name(i) for i in range(count)]
    result = JpegSet(folder, names, widths, heights, sum(sizes), closest)
    # The manifest goes last: a generation cut short leaves none, and the next run starts over.
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "names": names,
                "widths": widths,
                "heights": heights,
                "total_bytes": result.total_bytes,
                "min_phash_distance": closest,
                "sizes": sizes,
                "variants": variants,
            }
        )
    )
    os.replace(tmp, manifest)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    jpegs = jpeg_set(args.count, args.workers)
    sizes = json.loads((jpegs.folder / "manifest.json").read_text())["sizes"]
    print(
        f"{jpegs.count} JPEGs in {jpegs.folder} ({time.perf_counter() - started:.1f} s): "
        f"{jpegs.total_bytes / jpegs.count / 1000:.0f} KB mean, {min(sizes) / 1000:.0f}..{max(sizes) / 1000:.0f} KB, "
        f"{min(jpegs.widths)}..{max(jpegs.widths)} x {min(jpegs.heights)}..{max(jpegs.heights)} px, "
        f"closest pair's phash distance {jpegs.min_phash_distance} bits"
    )


if __name__ == "__main__":
    main()
