"""Aspect-ratio bucketing for the training shard reader.

Why: CosmicMan-HQ images are mostly portrait (people standing), often 2:3 or taller. Centre-cropping them
to a square (what :class:`~cosmicman.model.shards.ShardDataset` does) cuts off heads and feet -- exactly
the regions the HOLA group masks (hair, shoes, ...) describe -- and teaches the model square framings only.
The released CosmicMan (SDXL) training therefore buckets by aspect ratio, as SDXL itself does: a fixed set
of (height, width) buckets of roughly equal area, each image resized to cover the bucket whose aspect
ratio is nearest its own and centre-cropped to it (losing only a sliver), and every batch drawn from one
bucket so its tensors stack.

- :func:`aspect_buckets` builds such a set for a target area; :func:`released_sdxl_buckets` is the
  released list (sides 768..1536 step 64, area <= 1024*1280, ratio <= 2): **16 buckets**, from (1536, 768)
  to (768, 1536); it holds no square bucket (its near-square ones are (1152, 1088) and (1088, 1152)).
- :func:`nearest_bucket` picks a bucket for an image size (closest log aspect ratio, ties -> larger area).
- :class:`BucketedShardDataset` is a :class:`ShardDataset` whose samples are (3, h, w) at their bucket's
  size, with group masks at ``(h // map_factor, w // map_factor)`` (the HOLA / latent map size) and a
  ``"bucket": (h, w)`` entry.
- :func:`bucket_batches` streams batches of ``batch_size`` samples of one bucket each.

All sizes are (height, width), as torch tensors are laid out; PIL sizes are (width, height).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cosmicman.model.shards import (
    ShardDataset,
    collate,
)

Bucket = tuple[int, int]  # (height, width)


def aspect_buckets(
    resolution: int,
    step: int = 64,
    max_ratio: float = 2.0,
    max_area: int | None = None,
    *,
    min_side: int | None = None,
    max_side: int | None = None,
) -> list[Bucket]:
    """(height, width) buckets of about ``max_area`` pixels, sorted by aspect ratio (tallest first).

    For each width ``w`` (a multiple of ``step`` within [``min_side``, ``max_side``]) the bucket's height is
    the largest multiple of ``step`` with ``h * w <= max_area`` (capped at ``max_side``); the pair is kept
    when ``h >= min_side`` and ``max(h, w) / min(h, w) <= max_ratio``; the transposed pair is added too
    (the set is symmetric), duplicates removed. ``max_area`` defaults to ``resolution ** 2``, ``min_side``
    to ``step``, ``max_side`` to no cap (the ratio bounds the sides). With the default ``max_area`` and
    ``resolution % step == 0`` the set holds (resolution, resolution).

    >>> aspect_buckets(64, step=8)
    [(80, 48), (72, 56), (64, 64), (56, 72), (48, 80)]
    """
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if not isinstance(step, int) or step <= 0:
        raise ValueError(f"step must be a positive int, got {step!r}")
    if not (isinstance(max_ratio, (int, float)) and math.isfinite(max_ratio) and max_ratio >= 1.0):
        raise ValueError(f"max_ratio must be a finite number >= 1, got {max_ratio!r}")
    area = resolution * resolution if max_area is None else max_area
    if not isinstance(area, int) or area < step * step:
        raise ValueError(f"max_area must be an int >= step**2 = {step * step}, got {max_area!r}")
    lo = step if min_side is None else min_side
    if not isinstance(lo, int) or lo <= 0:
        raise ValueError(f"min_side must be a positive int, got {min_side!r}")
    lo = -(-lo // step) * step  # round up to a multiple of step
    # no bucket side can exceed sqrt(area * ratio) (h * w <= area and h <= ratio * w)
    hi_bound = int(math.isqrt(int(area * max_ratio)) // step * step)
    if max_side is None:
        hi = hi_bound
    elif not isinstance(max_side, int) or max_side < lo:
        raise ValueError(f"max_side must be an int >= min_side ({lo}), got {max_side!r}")
    else:
        hi = min(hi_bound, max_side // step * step)

    found: set[Bucket] = set()
    for w in range(lo, hi + 1, step):
        h = min(area // w // step * step, hi)
        if h < lo or max(h, w) / min(h, w) > max_ratio:
            continue
        found.add((h, w))
        found.add((w, h))
    if not found:
        raise ValueError(
            f"no bucket fits resolution={resolution} step={step} max_ratio={max_ratio} max_area={area} sides {lo}..{hi}"
        )
    return sorted(found, key=lambda b: (b[1] / b[0], -b[0] * b[1]))


def released_sdxl_buckets() -> list[Bucket]:
    """The released CosmicMan-SDXL bucket list: sides 768..1536 step 64, area <= 1024*1280, ratio <= 2.

    16 buckets: (1536, 768), (1536, 832), (1472, 832), (1408, 896), (1344, 960), (1280, 1024),
    (1216, 1024), (1152, 1088), their transposes, in aspect order."""
    return aspect_buckets(1024, step=64, max_ratio=2.0, max_area=1024 * 1280, min_side=768, max_side=1536)


def nearest_bucket(width: int, height: int, buckets: Iterable[Bucket]) -> Bucket:
    """The (height, width) bucket whose log aspect ratio is closest to ``width x height``'s; ties -> the
    larger area (then the first listed)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    best: Bucket | None = None
    best_key: tuple[float, int] | None = None
    target = math.log(width / height)
    for b in buckets:
        bh, bw = int(b[0]), int(b[1])
        if bh <= 0 or bw <= 0:
            raise ValueError(f"bucket sides must be positive, got {b!r}")
        # rounded so that mirror-image distances (e.g. 3:2 vs 2:3 from a square) tie exactly
        key = (round(abs(math.log(bw / bh) - target), 12), -bh * bw)
        if best_key is None or key < best_key:
            best, best_key = (bh, bw), key
    if best is None:
        raise ValueError("no buckets given")
    return best


class BucketedShardDataset(ShardDataset):
    """A :class:`ShardDataset` whose samples keep their aspect ratio: each goes to its nearest bucket.

    Each sample's image is resized to cover its bucket (h, w) (bicubic; the ATR label map with NEAREST),
    centre-cropped to it, and its group masks are computed at ``(h // map_factor, w // map_factor)``
    (``map_factor`` = image size / HOLA map size: 8 for the latent of an SD VAE, 16 for SD's 1/16 HOLA
    map, ...); the sample gets ``"bucket": (h, w)``. There is no ``resolution`` (``self.resolution`` is
    None): the buckets set the sizes; ``mask_size`` is replaced by ``map_factor``. Every bucket side must
    be a multiple of ``map_factor``. Shuffling, repetition, stats and span checks are ShardDataset's."""

    def __init__(
        self,
        urls: Iterable[str],
        tokenizer,
        buckets: Sequence[Bucket],
        map_factor: int = 8,
        mask_resize: str = "area",
        **stream: Any,
    ) -> None:
        """``stream``: ShardDataset's order / split / resume arguments (seed, shuffle_buffer, repeat,
        verify_spans, rank, world_size, start, exclude)."""
        buckets = [(int(b[0]), int(b[1])) for b in buckets]
        if not buckets:
            raise ValueError("buckets must not be empty")
        if not isinstance(map_factor, int) or map_factor <= 0:
            raise ValueError(f"map_factor must be a positive int, got {map_factor!r}")
        bad = [b for b in buckets if b[0] <= 0 or b[1] <= 0 or b[0] % map_factor or b[1] % map_factor]
        if bad:
            raise ValueError(f"bucket sides must be positive multiples of map_factor={map_factor}: {bad}")
        if mask_resize not in ("area", "nearest"):
            raise ValueError(f"mask_resize must be 'area' or 'nearest', got {mask_resize!r}")
        super().__init__(urls, tokenizer, resolution=0, mask_size=None, mask_resize=mask_resize, **stream)
        self.resolution = None  # type: ignore[assignment]  # sizes come from the buckets
        self.buckets: list[Bucket] = list(dict.fromkeys(buckets))
        self.map_factor = map_factor

    def bucket_for(self, width: int, height: int) -> Bucket:
        """The bucket an image of ``width x height`` pixels goes to."""
        return nearest_bucket(width, height, self.buckets)

    def target_hw(self, width: int, height: int) -> Bucket:
        return self.bucket_for(width, height)

    def map_hw(self, target_hw: tuple[int, int]) -> tuple[int, int]:
        return (target_hw[0] // self.map_factor, target_hw[1] // self.map_factor)


def bucket_batches(dataset: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of ``batch_size`` samples of one bucket each, streamed from a (possibly endless) dataset.

    Samples wait in one buffer per bucket; a bucket's batch is yielded (``collate`` plus ``"bucket"``) the
    moment its buffer fills, so the order is a function of the dataset's order alone (deterministic for a
    fixed seed) and at most ``n_buckets * (batch_size - 1)`` samples are held. Part-filled buffers left
    when a finite dataset ends are dropped, as :func:`~cosmicman.model.shards.batches` drops its last
    short batch."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    buffers: dict[Bucket, list[dict[str, Any]]] = {}
    for sample in dataset:
        bucket = sample.get("bucket")
        if bucket is None:  # an un-bucketed sample: its bucket is its tensor size
            bucket = tuple(sample["pixel_values"].shape[-2:])
        bucket = (int(bucket[0]), int(bucket[1]))
        buf = buffers.setdefault(bucket, [])
        buf.append(sample)
        if len(buf) == batch_size:
            batch = collate(buf)
            batch["bucket"] = bucket
            buffers[bucket] = []
            yield batch
