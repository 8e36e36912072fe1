"""Pool accounting: one small table of per-batch counts, so the sourcing sensor never scans batches."""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from cosmicman.data.store import Store

POOL_STATS_KEY = "pool/stats.parquet"
BATCH_STATS_PREFIX = "pool/batches"
STATS_SCHEMA = {"batch": pl.Utf8, "raw": pl.Int64, "kept": pl.Int64, "rejected": pl.Int64}


@dataclass(frozen=True)
class PoolStats:
    batches: frozenset[str]
    raw: int
    kept: int


def record_batch(store: Store, batch: str, raw: int, kept: int) -> PoolStats:
    """Write this batch's counts, then rebuild the pool table from every batch's counts.

    Each batch writes only its own row file, so concurrent batches never overwrite each other's
    counts; the rebuild is idempotent and a later batch's rebuild repairs any race.
    """
    store.write_table(f"{BATCH_STATS_PREFIX}/{batch}.parquet",
                      pl.DataFrame([{"batch": batch, "raw": raw, "kept": kept, "rejected": raw - kept}],
                                   schema=STATS_SCHEMA))
    frames = [df for _, df in store.iter_tables(BATCH_STATS_PREFIX)]
    table = pl.concat(frames).sort("batch")
    store.write_table(POOL_STATS_KEY, table)
    return _summary(table)


def read_pool_stats(store: Store) -> PoolStats:
    if not store.exists(POOL_STATS_KEY):
        return PoolStats(frozenset(), 0, 0)
    return _summary(store.read_table(POOL_STATS_KEY))


def _summary(table: pl.DataFrame) -> PoolStats:
    return PoolStats(frozenset(table["batch"].to_list()), int(table["raw"].sum()), int(table["kept"].sum()))


@dataclass(frozen=True)
class SourcingDecision:
    new_batch: str | None
    reason: str


def decide_sourcing(stats: PoolStats, threshold: int, partitions: list[str]) -> SourcingDecision:
    """Add one batch when the kept pool is under ``threshold`` and no batch is still in flight."""
    in_flight = sorted(set(partitions) - stats.batches)
    if in_flight:
        return SourcingDecision(None, f"batch {in_flight[-1]} is not filtered yet; waiting before sourcing more")
    if stats.kept >= threshold:
        return SourcingDecision(None, f"pool holds {stats.kept} kept images, at or above the threshold {threshold}")
    numbers = [int(p.rpartition("-")[2]) for p in partitions if p.rpartition("-")[2].isdigit()]
    new = f"batch-{(max(numbers) + 1) if numbers else 0:05d}"
    return SourcingDecision(new, f"pool holds {stats.kept} kept images, under the threshold {threshold}: sourcing {new}")
