"""The pool's duplicate index: exact (sha256) and near-duplicate (64-bit perceptual hash) look-ups.

Each finished sourcing batch writes one small index segment (``pool/index/<batch>.parquet``: the 64-bit
prefix of every stored image's sha256, its phash and the full sha256). A new batch loads the segments
(one ``compacted.parquet`` plus the segments written since it was rebuilt), never the batches' tables.
Segments are never deleted: the compacted file is a cache of them, so a compaction racing a batch can
lose nothing.

Memory at 6 million pool images: two uint64 arrays (96 MB) plus the near-duplicate bands (~170 MB).
Exact look-ups compare 64-bit sha256 prefixes: at 6 million images a false "duplicate" has a
probability of about 2e-6 per batch.

Near-duplicates: phash Hamming distance <= ``max_distance``. Multi-index hashing splits the 64 bits into
``max_distance + 1`` bands; by pigeonhole two hashes within the distance agree exactly on at least one
band, so each band is a sorted array searched with ``searchsorted``, and only those candidates are
compared bit by bit.

Every hash of a pool is made the same way: the pool's perceptual-hash scheme (``core/imageio.py``: "luma-dct" for a
new pool) is recorded beside its first segment (``pool/index/phash_scheme.json``) and every later batch hashes
with it. A pool whose segments predate that record was hashed with "full", and keeps it. A record naming a scheme
this version does not make (one from an unreleased version, say) stops the batch: its hashes compare with none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from cosmicman.core.imageio import DEFAULT_PHASH_SCHEME, PHASH_SCHEMES
from cosmicman.core.keys import (
    POOL_INDEX_COMPACTED_KEY,
    POOL_INDEX_SEGMENTS_PREFIX,
    POOL_PHASH_SCHEME_KEY,
    pool_index_segment_key,
)
from cosmicman.core.store import Store

SEGMENT_SCHEMA = {"sha_prefix": pl.UInt64, "phash": pl.UInt64, "sha256": pl.Utf8, "batch": pl.Utf8}
# recompact once this many segments are outside the compacted file
COMPACT_EVERY = 32


def sha_prefix(sha256: str) -> int:
    return int(sha256[:16], 16)


def phash_int(phash: str) -> int:
    return int(phash, 16)


def _segment_batch(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".parquet")


class NearDupIndex:
    """Hamming-radius search over 64-bit hashes: a sorted base plus a small list of recent additions."""

    def __init__(self, hashes: np.ndarray, max_distance: int, rebuild_at: int = 65_536) -> None:
        if not 0 <= max_distance <= 15:
            raise ValueError(f"max_distance must be in [0, 15], got {max_distance}")
        self.max_distance, self.rebuild_at = max_distance, rebuild_at
        n_bands = max_distance + 1
        widths = [64 // n_bands + (i < 64 % n_bands) for i in range(n_bands)]
        self._shifts = np.cumsum([0] + widths[:-1]).astype(np.uint64)
        self._masks = [np.uint64((1 << w) - 1) for w in widths]
        self._pending = np.zeros(1024, dtype=np.uint64)  # grows by doubling; the first _n_pending are used
        self._n_pending = 0
        self._build(np.asarray(hashes, dtype=np.uint64))

    def _build(self, hashes: np.ndarray) -> None:
        self._hashes = hashes
        self._bands = []
        for shift, mask in zip(self._shifts, self._masks):
            values = (hashes >> shift) & mask
            order = np.argsort(values)
            self._bands.append((values[order], order))

    def __len__(self) -> int:
        return len(self._hashes) + self._n_pending

    def find(self, h: int) -> int | None:
        """Position (insertion order) of the first hash within the radius of ``h``, or None."""
        q = np.uint64(h)
        best: int | None = None
        for (values, order), shift, mask in zip(self._bands if len(self._hashes) else (), self._shifts, self._masks):
            v = (q >> shift) & mask
            # every entry equal to v; bounds by side, since v + 1 wraps to 0 for a band of all ones
            lo, hi = values.searchsorted(v, side="left"), values.searchsorted(v, side="right")
            if lo == hi:
                continue
            cand = order[lo:hi]
            hits = cand[np.bitwise_count(self._hashes[cand] ^ q) <= self.max_distance]
            if len(hits):
                first = int(hits.min())
                best = first if best is None else min(best, first)
        if best is not None:
            return best
        if self._n_pending:
            hits = np.flatnonzero(np.bitwise_count(self._pending[: self._n_pending] ^ q) <= self.max_distance)
            if len(hits):
                return len(self._hashes) + int(hits[0])
        return None

    def add(self, h: int) -> None:
        if self._n_pending == len(self._pending):
            self._pending = np.concatenate([self._pending, np.zeros_like(self._pending)])
        self._pending[self._n_pending] = h
        self._n_pending += 1
        if self._n_pending >= self.rebuild_at:
            self._build(np.concatenate([self._hashes, self._pending[: self._n_pending]]))
            self._n_pending = 0


@dataclass(frozen=True)
class Match:
    kind: str  # "duplicate" | "near_duplicate"
    sha_prefix: int  # of the pool image it duplicates
    sha256: str | None  # known for images of the running batch; resolve_shas() finds the others


class PoolIndex:
    """Exact and near-duplicate look-ups over the pool, updated as a batch stores images.

    Holds only 64-bit numbers for the pool (never its sha256 strings): a near-duplicate of an older
    image is reported by sha prefix, and ``resolve_shas`` finds the full hashes once per batch.
    """

    def __init__(self, table: pl.DataFrame, max_distance: int | None) -> None:
        prefixes = table["sha_prefix"].to_numpy().astype(np.uint64)
        self._exact = np.sort(prefixes)
        self._new: dict[int, str] = {}
        self._near = (
            NearDupIndex(table["phash"].to_numpy().astype(np.uint64), max_distance)
            if max_distance is not None
            else None
        )
        self._near_prefix = prefixes  # the prefix of the image at each near-index position
        self._near_new: list[int] = []

    @classmethod
    def load(cls, store: Store, max_distance: int | None, exclude_batch: str | None = None) -> PoolIndex:
        return cls(load_index_table(store, exclude_batch, columns=["sha_prefix", "phash", "batch"]), max_distance)

    def __len__(self) -> int:
        return len(self._exact) + len(self._new)

    def match(self, sha256: str, phash: str | None) -> Match | None:
        """The exact duplicate, else the nearest-added near-duplicate, of an image; None when new."""
        prefix = sha_prefix(sha256)
        i = int(self._exact.searchsorted(np.uint64(prefix))) if len(self._exact) else 0
        if (i < len(self._exact) and int(self._exact[i]) == prefix) or prefix in self._new:
            return Match("duplicate", prefix, sha256)
        if self._near is None or phash is None:
            return None
        pos = self._near.find(phash_int(phash))
        if pos is None:
            return None
        old = len(self._near_prefix)
        other = int(self._near_prefix[pos]) if pos < old else self._near_new[pos - old]
        return Match("near_duplicate", other, self._new.get(other))

    def add(self, sha256: str, phash: str | None) -> None:
        prefix = sha_prefix(sha256)
        self._new[prefix] = sha256
        if self._near is not None and phash is not None:
            self._near.add(phash_int(phash))
            self._near_new.append(prefix)


def resolve_shas(store: Store, prefixes: set[int]) -> dict[int, str]:
    """Full sha256 of pool images known by prefix (one pass over the index, only when needed)."""
    if not prefixes:
        return {}
    table = load_index_table(store, columns=["sha_prefix", "sha256", "batch"])
    hits = table.filter(pl.col("sha_prefix").is_in(list(prefixes)))
    return dict(zip(hits["sha_prefix"].to_list(), hits["sha256"].to_list()))


def load_index_table(store: Store, exclude_batch: str | None = None, columns: list[str] | None = None) -> pl.DataFrame:
    """Every stored image's index row: the compacted file plus the segments it does not cover."""
    columns = list(dict.fromkeys([*(columns or SEGMENT_SCHEMA), "batch"]))
    frames, covered = [], set()
    if store.exists(POOL_INDEX_COMPACTED_KEY):
        compacted = store.read_table(POOL_INDEX_COMPACTED_KEY, columns=columns)
        frames.append(compacted)
        covered = set(compacted["batch"].unique().to_list())
    for key in store.list(POOL_INDEX_SEGMENTS_PREFIX):
        if _segment_batch(key) not in covered:
            frames.append(store.read_table(key, columns=columns))
    table = pl.concat(frames) if frames else pl.DataFrame(schema={c: SEGMENT_SCHEMA[c] for c in columns})
    if exclude_batch is not None:
        table = table.filter(pl.col("batch") != exclude_batch)
    return table


class UnknownPhashScheme(ValueError):
    """The pool's record names a perceptual-hash scheme this version does not make."""


def pool_phash_scheme(store: Store) -> str:
    """The perceptual-hash scheme of the pool in ``store``: its record; "full" for a pool indexed before the
    record existed; the default for a pool with no image yet. Raises UnknownPhashScheme (one line) for a record
    naming any other."""
    if store.exists(POOL_PHASH_SCHEME_KEY):
        scheme = store.read_json(POOL_PHASH_SCHEME_KEY)["scheme"]
        if scheme not in PHASH_SCHEMES:
            raise UnknownPhashScheme(
                f"{store.uri(POOL_PHASH_SCHEME_KEY)} names phash scheme {scheme!r}, which this version does not"
                f" make; the schemes are {', '.join(PHASH_SCHEMES)}"
            )
        return scheme
    if store.exists(POOL_INDEX_COMPACTED_KEY) or store.list(POOL_INDEX_SEGMENTS_PREFIX):
        return "full"
    return DEFAULT_PHASH_SCHEME


def write_segment(store: Store, batch: str, stored: pl.DataFrame, phash_scheme: str) -> None:
    """Index a finished batch's stored images (columns sha256, phash: hashed with ``phash_scheme``, the pool's),
    and recompact when due."""
    if not store.exists(POOL_PHASH_SCHEME_KEY):
        store.write_json(POOL_PHASH_SCHEME_KEY, {"scheme": phash_scheme})
    segment = stored.select(
        pl.col("sha256").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("sha_prefix"),
        pl.col("phash").str.to_integer(base=16, dtype=pl.UInt64).alias("phash"),
        pl.col("sha256"),
        pl.lit(batch).alias("batch"),
    )
    store.write_table(pool_index_segment_key(batch), segment)
    covered = (
        set(store.read_table(POOL_INDEX_COMPACTED_KEY, columns=["batch"])["batch"].unique().to_list())
        if store.exists(POOL_INDEX_COMPACTED_KEY)
        else set()
    )
    segments = store.list(POOL_INDEX_SEGMENTS_PREFIX)
    if sum(_segment_batch(k) not in covered for k in segments) >= COMPACT_EVERY:
        store.write_table(POOL_INDEX_COMPACTED_KEY, pl.concat([store.read_table(k) for k in segments]))
