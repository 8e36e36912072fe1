"""Admission of a batch's stored images against the batches that finished while it ran.

A batch decides its outcomes against the pool index it loaded at its start, and batches running beside it
finish meanwhile: each may have admitted the same image, or a near-duplicate of one, first. So the index
segments a batch's decisions saw are recorded when it plans (``index_seen.json`` in its staging folder, under
the pool's sourcing lock), and as it finishes, under the same lock, every image it would store is checked
again against the segments written since: exact sha256 first, then phash within the near-duplicate radius.
An image found there turns into a ``duplicate`` / ``near_duplicate`` naming that pool image, as if that batch
had run first; rows of the batch that named it now name that pool image too.

The check reads only the new segments (as many as batches finished while this one ran), never the pool.
Recording the seen segments at plan time and checking at finish, both from the store, keeps it right after a
kill: a resumed batch checks every outcome of every run of it against all it has not seen. A batch staged
before this record existed has outcomes of unknown age: it is checked against every segment.

A turned image's blob stays in the store (another batch may have found those bytes present and not written
them again, so deleting them could remove a pool image's blob); no pool table names it.
"""

from __future__ import annotations

import posixpath

import polars as pl

from cosmicman.core.keys import POOL_INDEX_SEGMENTS_PREFIX, sourcing_staging_prefix
from cosmicman.core.store import Store
from cosmicman.sourcing.dedup import PoolIndex


def _seen_key(batch: str) -> str:
    return f"{sourcing_staging_prefix(batch)}/index_seen.json"


def _segment_batches(store: Store) -> dict[str, str]:
    """Each index segment's batch and key (segments are never deleted: they are the pool's whole index)."""
    return {posixpath.basename(k).removesuffix(".parquet"): k for k in store.list(POOL_INDEX_SEGMENTS_PREFIX)}


def record_seen_segments(store: Store, batch: str) -> None:
    """Once per batch, under the lock and before it decides anything: the segments its index will hold.
    Outcomes already staged without the record are of unknown age, so they count as having seen none."""
    key = _seen_key(batch)
    if store.exists(key):
        return
    staged_outcomes = bool(store.list(f"{sourcing_staging_prefix(batch)}/done"))
    seen = [] if staged_outcomes else sorted(_segment_batches(store))
    store.write_json(key, {"segments": seen})


def segments_since_start(store: Store, batch: str) -> pl.DataFrame:
    """Index rows of the batches that finished after ``batch`` recorded what it saw (its own excluded)."""
    seen = set(store.read_json(_seen_key(batch))["segments"])
    keys = [k for b, k in sorted(_segment_batches(store).items()) if b not in seen and b != batch]
    frames = [store.read_table(k, columns=["sha_prefix", "phash", "sha256", "batch"]) for k in keys]
    return pl.concat(frames) if frames else pl.DataFrame()


def admit(log: pl.DataFrame, newer: pl.DataFrame, max_distance: int | None) -> tuple[pl.DataFrame, int]:
    """``log`` with each stored image that ``newer`` (index rows) holds or holds a near-duplicate of turned into a
    duplicate / near_duplicate of it, and the rows naming a turned image pointed at the same pool image; the
    count of turned images. The first in ``newer`` within the radius is named, as ``PoolIndex`` orders them."""
    if newer.is_empty():
        return log, 0
    index = PoolIndex(newer, max_distance)
    full_sha = dict(zip(newer["sha_prefix"].to_list(), newer["sha256"].to_list()))
    kinds: dict[str, str] = {}
    names: dict[str, str] = {}
    for sha, phash in log.filter(pl.col("status") == "stored").select("sha256", "phash").iter_rows():
        match = index.match(sha, phash)
        if match is not None:
            kinds[sha], names[sha] = match.kind, full_sha[match.sha_prefix]
    if not kinds:
        return log, 0
    turned = (pl.col("status") == "stored") & pl.col("sha256").is_in(list(kinds))
    # a copy of a turned image is a copy of what it turned into: an exact copy of a near-duplicate is one too
    names_turned = pl.col("duplicate_of").is_in(list(kinds)) & (pl.col("status") != "stored")
    near_of_near = names_turned & pl.col("duplicate_of").replace_strict(kinds, default="").eq("near_duplicate")
    log = log.with_columns(
        pl.when(turned)
        .then(pl.col("sha256").replace_strict(kinds, default=None))
        .when(near_of_near)
        .then(pl.lit("near_duplicate"))
        .otherwise(pl.col("status"))
        .alias("status"),
        pl.when(turned)
        .then(pl.col("sha256").replace_strict(names, default=None))
        .otherwise(pl.col("duplicate_of").replace(names))
        .alias("duplicate_of"),
    )
    return log, len(kinds)
