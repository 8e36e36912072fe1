"""Which samples of the pool a new version references where they lie, which it writes anew, which shards it
compacts and which samples of the shards it keeps it does not hold: decided on two 60-bit integers a sample,
bucket by bucket.

The pool's keys and the known samples' keys are each sorted once by the image key ``s0``; every join of the
plan pairs rows of one ``s0``, so it runs on the slices of one bucket of ``s0`` (its top ``BUCKET_BITS``
bits) at a time. What is alive at once is the two sorted key frames (20 bytes a row each) and one bucket's
joins, never a pool-sized join result or hash table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

KEY_DIGITS = 15  # hex digits per join key: 60 bits, a signed 64-bit integer
KEY_BITS = 4 * KEY_DIGITS
BUCKET_BITS = 8  # 256 buckets: a bucket of a 60M-row pool is 234k rows
KEY_SCHEMA = {"s0": pl.Int64, "c0": pl.Int64}
SHARD_NUMBER = pl.UInt32  # a known shard's number in a build (4 bytes a key row)
KNOWN_KEY_SCHEMA = {**KEY_SCHEMA, "shard_i": SHARD_NUMBER}


def key_columns(sha: str = "sha256", key: str = "content_key") -> list[pl.Expr]:
    """The two integer join keys of a sample: image sha256 and content key, 60 bits each."""
    return [
        pl.col(sha).str.slice(0, KEY_DIGITS).str.to_integer(base=16).alias("s0"),
        pl.col(key).str.slice(0, KEY_DIGITS).str.to_integer(base=16).alias("c0"),
    ]


def sorted_keys(frame: pl.DataFrame, on: str = "s0") -> pl.DataFrame:
    """``frame`` in the order of its 60-bit key ``on``, rows of one key in the order they came (the chosen
    copy first)."""
    return frame.sort(on, maintain_order=True)


def key_buckets(*frames: pl.DataFrame, on: str = "s0") -> Iterator[tuple[pl.DataFrame, ...]]:
    """The slices of ``frames`` (each in the order of its 60-bit key ``on``) that fall into each bucket of the
    key, bucket by bucket; slices share their frame's memory."""
    shift = KEY_BITS - BUCKET_BITS
    bounds = pl.Series([b << shift for b in range((1 << BUCKET_BITS) + 1)], dtype=pl.Int64)
    starts = [frame[on].search_sorted(bounds, side="left").to_list() for frame in frames]
    for b in range(1 << BUCKET_BITS):
        yield tuple(frame.slice(s[b], s[b + 1] - s[b]) for frame, s in zip(frames, starts, strict=True))


@dataclass(frozen=True)
class ReusePlan:
    """``catalogue``: the known shards with ``n_live`` and ``compacted``; ``kept``: those the version references
    (by ``shard_i``); ``to_write``: the pool's samples to write (``s0, c0, batch_i``, in batch order);
    ``dead``: samples of kept shards the version does not hold (``s0, c0, shard_i``); ``reused``: how many
    pool samples are referenced where they lie."""

    catalogue: pl.DataFrame
    kept: pl.DataFrame
    to_write: pl.DataFrame
    dead: pl.DataFrame
    reused: int


def plan_reuse(pool: pl.DataFrame, known: pl.DataFrame, shards: pl.DataFrame, min_live_fraction: float) -> ReusePlan:
    """The plan for ``pool`` (``s0, c0, batch_i``) over the ``known`` samples (``s0, c0, shard_i``, the chosen
    copy of a sample first) of ``shards`` (``shard_i, n_samples``, ...), both key frames in ``s0`` order.

    A pool sample matches its chosen known copy. A shard is compacted (its live samples written anew) when its
    live share falls under ``min_live_fraction``, or when it holds another copy of a sample the version holds
    (relabelled, or stored twice), so a sample the version excludes is never one it holds."""
    live_parts, stale_parts = [], []
    for pool_b, known_b in key_buckets(pool, known):
        matched = _matched(pool_b, known_b)
        live_parts.append(matched.group_by("shard_i").agg(pl.len().cast(pl.Int64).alias("n_live")))
        other_copies = known_b.join(matched, on=["s0", "c0", "shard_i"], how="anti").join(pool_b, on="s0", how="semi")
        stale_parts.append(other_copies.select("shard_i"))
    live = pl.concat(live_parts).group_by("shard_i").agg(pl.col("n_live").sum())
    stale = pl.concat(stale_parts)["shard_i"].unique().implode()
    catalogue = shards.join(live, on="shard_i", how="left").with_columns(pl.col("n_live").fill_null(0))
    compact = (pl.col("n_live") < pl.col("n_samples") * min_live_fraction) | pl.col("shard_i").is_in(stale)
    catalogue = catalogue.with_columns(compacted=(pl.col("n_live") > 0) & compact)
    kept = catalogue.filter((pl.col("n_live") > 0) & ~pl.col("compacted")).sort("shard_i")
    kept_ids = kept.select("shard_i")
    write_parts, dead_parts, reused = [], [], 0
    for pool_b, known_b in key_buckets(pool, known):
        referenced = _matched(pool_b, known_b).join(kept_ids, on="shard_i", how="semi").select(list(KNOWN_KEY_SCHEMA))
        reused += referenced.height
        write_parts.append(pool_b.join(referenced, on=["s0", "c0"], how="anti"))
        in_kept = known_b.join(kept_ids, on="shard_i", how="semi")
        dead_parts.append(in_kept.join(referenced, on=["s0", "c0", "shard_i"], how="anti"))
    to_write = pl.concat([pool.clear(), *write_parts]).sort("batch_i", maintain_order=True)
    dead = pl.concat([known.clear(), *dead_parts])
    return ReusePlan(catalogue, kept, to_write, dead, reused)


def _matched(pool: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    """Each pool sample with its chosen known copy (one copy per content key)."""
    return pool.join(known.unique(["s0", "c0"], keep="first", maintain_order=True), on=["s0", "c0"])
