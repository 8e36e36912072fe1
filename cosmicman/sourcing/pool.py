"""Pool accounting: one empty marker per recorded batch, its counts in its name, so the pool is one listing.

The sourcing sensor reads no batch and no file per batch: listing ``pool/recorded/`` gives every batch's
counts (one LIST request per 1000 batches on S3). Each batch writes only its own marker, so concurrent
batches never overwrite each other, and nothing is read, changed and written back. Re-recording a
batch writes a newer marker and removes the older ones; should a removal be missed, the newest wins.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from cosmicman.core.keys import POOL_MARKERS_PREFIX
from cosmicman.core.store import Store


@dataclass(frozen=True)
class PoolStats:
    batches: frozenset[str]
    raw: int
    kept: int


@dataclass(frozen=True)
class BatchMarker:
    """``pool/recorded/<batch>.<recorded_ns>.<raw>.<kept>``"""

    key: str
    batch: str
    recorded_ns: int
    raw: int
    kept: int

    @classmethod
    def parse(cls, key: str) -> BatchMarker:
        batch, recorded_ns, raw, kept = posixpath.basename(key).rsplit(".", 3)
        return cls(key, batch, int(recorded_ns), int(raw), int(kept))


def _markers(store: Store) -> list[BatchMarker]:
    return [BatchMarker.parse(k) for k in store.list(POOL_MARKERS_PREFIX)]


def _newest(markers: list[BatchMarker]) -> dict[str, BatchMarker]:
    newest: dict[str, BatchMarker] = {}
    for m in markers:
        if m.batch not in newest or m.recorded_ns > newest[m.batch].recorded_ns:
            newest[m.batch] = m
    return newest


def _summary(newest: dict[str, BatchMarker]) -> PoolStats:
    return PoolStats(frozenset(newest), sum(m.raw for m in newest.values()), sum(m.kept for m in newest.values()))


def record_batch(store: Store, batch: str, raw: int, kept: int) -> PoolStats:
    """Record this batch's counts (replacing any earlier record of it) and return the pool's."""
    if "/" in batch:
        raise ValueError(f"a batch name is one path segment, got {batch!r}")
    store.write_bytes(f"{POOL_MARKERS_PREFIX}/{batch}.{time.time_ns()}.{raw}.{kept}", b"")
    markers = _markers(store)
    newest = _newest(markers)
    for m in markers:
        if m.batch == batch and m is not newest[batch]:
            store.delete(m.key)
    return _summary(newest)


def read_pool_stats(store: Store) -> PoolStats:
    return _summary(_newest(_markers(store)))


@dataclass(frozen=True)
class SourcingDecision:
    new_batches: tuple[str, ...]  # empty: source nothing now (``reason`` says why)
    reason: str


def decide_sourcing(stats: PoolStats, threshold: int, partitions: list[str], concurrency: int) -> SourcingDecision:
    """Add batches while the kept pool is under ``threshold``: as many as keep ``concurrency`` batches in flight
    (added and not yet filtered)."""
    if concurrency < 1:
        raise ValueError(f"sourcing concurrency must be at least 1, got {concurrency}")
    in_flight = sorted(set(partitions) - stats.batches)
    if len(in_flight) >= concurrency:
        shown = ", ".join(in_flight[-5:]) + (f" and {len(in_flight) - 5} more" if len(in_flight) > 5 else "")
        return SourcingDecision(
            (),
            f"{len(in_flight)} batches not filtered yet ({shown}), at the limit of {concurrency} in flight;"
            " waiting before sourcing more",
        )
    if stats.kept >= threshold:
        return SourcingDecision((), f"pool holds {stats.kept} kept images, at or above the threshold {threshold}")
    numbers = [int(p.rpartition("-")[2]) for p in partitions if p.rpartition("-")[2].isdigit()]
    first = (max(numbers) + 1) if numbers else 0
    new = tuple(f"batch-{n:05d}" for n in range(first, first + concurrency - len(in_flight)))
    return SourcingDecision(
        new,
        f"pool holds {stats.kept} kept images, under the threshold {threshold}: sourcing {', '.join(new)}"
        f" ({len(in_flight)} in flight, at most {concurrency})",
    )
