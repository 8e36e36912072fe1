"""Building a version that shares shards with the version before it, resumably, in memory that does not grow
with the pool's rows beyond a few integers each.

A sample's content key (:func:`cosmicman.datasets.samples.content_key`) digests everything its shard members
are made of. A sample whose key the base version holds is referenced in its shard; every other sample is
written into new shards, and their manifest rows into one new segment
(:mod:`cosmicman.datasets.segments`); the base's segments are shared, so a version writes bytes in proportion
to its change. A removed sample leaves through ``removed.parquet``: its shard stays, with ``n_live`` below
``n_samples``, until its live share falls under ``min_live_fraction``; then the shard's live samples are
written anew (compaction) and the version no longer references it. A removed sample that comes back unchanged
is referenced where it lies. A shard holding another copy of a sample the version holds (relabelled, or
stored twice) is compacted too, so a sample named by ``excluded_samples`` is never one the version holds. A
base segment whose kept rows fall under ``min_live_fraction`` of it has those rows copied into the new
segment, so reading a version never reads much more than its rows.

Joins and counts run on two 60-bit integers a row (the leading hex digits of the image sha256 and of the
content key), never on the pool's labels, one bucket of keys at a time (:mod:`cosmicman.datasets.reuse_plan`).
Each shard written is recorded in the staging folder as it is
stored; a build killed mid-way and started again references those shards like the base version's and writes
only the rest, in the same order, so the shards come out as an uninterrupted build's.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from cosmicman.core.keys import dataset_shard_index_key
from cosmicman.datasets.layout import (
    REMOVED,
    REMOVED_SCHEMA,
    SEGMENTS,
    SHARDS,
    SUCCESS,
    read_parquet,
    shard_rows,
    shards_path,
    version_path,
)
from cosmicman.datasets.prepare_pool import prepared_groups
from cosmicman.datasets.reuse_plan import (
    KEY_SCHEMA,
    KNOWN_KEY_SCHEMA,
    SHARD_NUMBER,
    key_columns,
    plan_reuse,
    sorted_keys,
)
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.segments import SegmentRecord, SegmentWriter, segments_frame
from cosmicman.datasets.shards import PREPARED_ROWS, ShardRecord, ShardWriter
from cosmicman.datasets.version import (
    PARTIAL_SEGMENT,
    PARTIAL_SHARD,
    SHARDS_SCHEMA,
    VersionInfo,
    finish_version,
    prepare,
    remove_if_empty,
)

WRITTEN = "written"  # staging subfolder: one marker per shard stored by this build, in write order
KEYS_BATCH_ROWS = 8192  # rows a piece while a version's manifest is reduced to join keys


@dataclass(frozen=True)
class ShardPolicy:
    """How big a shard grows (``samples_per_shard`` samples, or ``max_shard_bytes`` bytes when set) and the
    live share under which a shard's samples are written anew."""

    samples_per_shard: int
    max_shard_bytes: int | None = None
    min_live_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard={self.samples_per_shard}: set at least 1")
        if self.max_shard_bytes is not None and self.max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes={self.max_shard_bytes}: set at least 1, or None for no limit")
        if not 0.0 <= self.min_live_fraction <= 1.0:
            raise ValueError(f"min_live_fraction={self.min_live_fraction}: set a fraction in [0, 1]")


class PoolSource(Protocol):
    """The candidate samples of a version, one batch in memory at a time."""

    def batches(self) -> Sequence[str]:
        """Every batch, in a stable order."""
        ...

    def rows(self, batch: str) -> pl.DataFrame:
        """The batch's samples: ``sha256``, ``content_key`` and whatever :meth:`samples` needs."""
        ...

    def samples(self, rows: pl.DataFrame) -> Iterator[DatasetSample]:
        """The whole samples of ``rows`` (some rows of :meth:`rows`), in their order."""
        ...


@dataclass(frozen=True)
class PoolIndex:
    """Every candidate's join keys and batch, and a fingerprint of the pool's content."""

    batches: tuple[str, ...]
    keys: pl.DataFrame  # s0, c0, batch_i; in s0 order
    fingerprint: str


def index_pool(source: PoolSource) -> PoolIndex:
    """One pass over the batches: the join keys (20 bytes a sample) and the pool's fingerprint (a digest of
    every batch's sorted content keys). Two batches holding the same image are refused."""
    import hashlib

    batches = tuple(source.batches())
    parts, digest = [], hashlib.sha256()
    for i, batch in enumerate(batches):
        rows = source.rows(batch)
        content = "".join(rows["content_key"].sort().to_list())
        digest.update(f"{batch}\x1f{hashlib.sha256(content.encode()).hexdigest()}\n".encode())
        parts.append(rows.select(*key_columns(), pl.lit(i, pl.UInt32).alias("batch_i")))
    keys = sorted_keys(pl.concat([pl.DataFrame(schema={**KEY_SCHEMA, "batch_i": pl.UInt32}), *parts]))
    del parts
    twice = int(keys["s0"].is_duplicated().sum())
    if twice:
        raise ValueError(f"{twice} pool rows share an image sha256 with another row: a sample must be in one batch")
    return PoolIndex(batches, keys, digest.hexdigest())


@dataclass(frozen=True)
class BuildCounts:
    """What a build wrote and what it referenced. ``written_bytes``: every byte this build wrote under the
    store (new shards and their indexes, its staging records, the segment, the version's files);
    ``written_shard_bytes``: the bytes of the new shards alone, what any version holding their samples stores."""

    written_samples: int
    written_shards: int
    written_bytes: int
    written_shard_bytes: int
    reused_samples: int
    reused_shards: int
    compacted_shards: int
    resumed_shards: int  # stored by an earlier, killed attempt at this version
    moved_segments: int = 0  # base segments whose kept shards' rows the new segment took over


@dataclass(frozen=True)
class _Known:
    """Shards a build may reference (the base version's, then those staged), every sample they hold (the
    chosen copy of a sample first: staged, then live in the base, then removed from it; in s0 order) and the
    base's segments."""

    shards: pl.DataFrame  # shard_i, shard, sha256, n_samples, n_bytes, segment (staged: null), staged
    keys: pl.DataFrame  # s0, c0, shard_i
    segments: pl.DataFrame  # the base version's segments.parquet


def build_version(
    root: str,
    version: str,
    source: PoolSource,
    *,
    index: PoolIndex | None = None,
    base: str | None = None,
    policy: ShardPolicy,
    protocol=None,
    tokenizer=None,
    datacard: Mapping[str, Any] | None = None,
    created_at: str | None = None,
    allow_empty: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> tuple[VersionInfo, BuildCounts]:
    """Build and publish ``version`` from ``source``, sharing the shards and segments of published version
    ``base``. ``index``: the pool's :func:`index_pool` when the caller made it already. ``workers``: processes
    that prepare the samples to write (:mod:`cosmicman.datasets.prepare_pool`; the source must pickle)."""
    fs, root_path, staging, protocol, tokenizer = prepare(root, version, storage_options, protocol, tokenizer)
    index = index or index_pool(source)
    fs.makedirs(posixpath.join(staging, WRITTEN), exist_ok=True)
    known = _known_shards(fs, root_path, staging, base)
    plan = plan_reuse(index.keys, known.keys, known.shards, policy.min_live_fraction)
    known = _Known(known.shards, known.keys.clear(), known.segments)  # pool-sized: gone before the writing
    kept = plan.kept

    written: list[int] = []  # bytes of each staging record this attempt wrote
    records = _write_new(
        fs, root_path, staging, source, index, plan.to_write, policy, tokenizer, known, written, workers
    )
    moved = _moved_segments(known, kept, policy)
    segment = _write_segment(fs, root_path, staging, known, kept, moved, records)
    name = segment.segment if segment else None
    shards = pl.concat(
        [
            kept.with_columns(
                pl.when(pl.col("staged") | pl.col("segment").is_in(moved.implode()))
                .then(pl.lit(name, pl.String))
                .otherwise(pl.col("segment"))
                .alias("segment")
            ).select(list(SHARDS_SCHEMA)),
            pl.DataFrame([{**r.row(), "n_live": r.n_samples, "segment": name} for r in records], schema=SHARDS_SCHEMA),
        ]
    )
    in_use = shards["segment"].unique().implode()
    segments = pl.concat(
        [known.segments.filter(pl.col("segment").is_in(in_use)), segments_frame([segment] if segment else [])]
    )
    removed = _removed(fs, root_path, known, plan.dead)
    info = finish_version(
        fs, root_path, staging, version, shards, segments, removed, protocol, datacard, created_at, allow_empty
    )
    fs.rm(staging, recursive=True)
    remove_if_empty(fs, posixpath.dirname(staging))
    created = [r for r in records if r.created]
    counts = BuildCounts(
        written_samples=sum(r.n_samples for r in records),
        written_shards=len(records),
        written_bytes=sum(written)
        + sum(r.n_bytes + fs.size(posixpath.join(root_path, dataset_shard_index_key(r.sha256))) for r in created)
        + (segment.n_bytes if segment and segment.created else 0)
        + sum(int(e["size"]) for e in fs.ls(version_path(root_path, version), detail=True)),
        written_shard_bytes=sum(r.n_bytes for r in created),
        reused_samples=plan.reused,
        reused_shards=kept.height,
        compacted_shards=int(plan.catalogue["compacted"].sum()),
        resumed_shards=int(known.shards["staged"].sum()),
        moved_segments=moved.len(),
    )
    return info, counts


def _known_shards(fs, root_path: str, staging: str, base: str | None) -> _Known:
    shards = pl.DataFrame(schema={**KNOWN_SCHEMA, "staged": pl.Boolean})
    segments = segments_frame([])
    live_keys: list[pl.DataFrame] = []
    dead_keys: list[pl.DataFrame] = []
    if base is not None:
        bpath = version_path(root_path, base)
        if not fs.exists(posixpath.join(bpath, SUCCESS)):
            raise ValueError(f"base version {base!r} is not published")
        shards = (
            read_parquet(fs, posixpath.join(bpath, SHARDS))
            .with_columns(pl.int_range(0, pl.len(), dtype=SHARD_NUMBER).alias("shard_i"))
            .select(list(KNOWN_SCHEMA))
            .with_columns(staged=pl.lit(False))
        )
        segments = read_parquet(fs, posixpath.join(bpath, SEGMENTS))
        numbers = shards.select("shard", "shard_i")
        gone = read_parquet(fs, posixpath.join(bpath, REMOVED)).select(*key_columns(), "shard")
        gone = gone.join(numbers, on="shard").drop("shard")
        for piece in shard_rows(fs, root_path, shards, segments, ["sha256", "content_key", "shard"], KEYS_BATCH_ROWS):
            keys = piece.join(numbers, on="shard", maintain_order="left").select(*key_columns(), "shard_i")
            live_keys.append(keys.join(gone, on=["s0", "c0", "shard_i"], how="anti", maintain_order="left"))
        dead_keys.append(gone)
    staged_rows: list[dict[str, Any]] = []
    staged_keys: list[pl.DataFrame] = []
    # an object store has no empty folders: before the first marker, the folder does not exist
    written = posixpath.join(staging, WRITTEN)
    for marker in sorted(fs.ls(written, detail=False) if fs.exists(written) else []):
        record = json.loads(fs.cat_file(marker))
        i = shards.height + len(staged_rows)
        staged_rows.append({**record, "shard_i": i, "segment": None, "staged": True})
        rows = read_parquet(fs, posixpath.join(root_path, dataset_shard_index_key(record["sha256"])))
        staged_keys.append(rows.select(*key_columns(), pl.lit(i, SHARD_NUMBER).alias("shard_i")))
    if staged_rows:
        staged = pl.DataFrame(staged_rows, schema={**KNOWN_SCHEMA, "staged": pl.Boolean})
        shards = pl.concat([shards, staged.select(shards.columns)])
    keys = pl.concat([pl.DataFrame(schema=KNOWN_KEY_SCHEMA), *staged_keys, *live_keys, *dead_keys])
    del staged_keys, live_keys, dead_keys
    return _Known(shards, sorted_keys(keys), segments)  # the chosen copy of a sample first


KNOWN_SCHEMA = {
    "shard_i": SHARD_NUMBER,
    "shard": pl.String,
    "sha256": pl.String,
    "n_samples": pl.Int64,
    "n_bytes": pl.Int64,
    "segment": pl.String,
}


def _write_new(
    fs, root_path, staging, source: PoolSource, index: PoolIndex, to_write: pl.DataFrame, policy, tokenizer, known,
    written: list[int], workers: int,
) -> list[ShardRecord]:  # fmt: skip
    """Write the samples of ``to_write`` into new shards, batch by batch, prepared by ``workers`` processes,
    recording each shard as it is stored (the bytes of each record into ``written``)."""
    records: list[ShardRecord] = []
    first = int(known.shards["staged"].sum())

    def on_shard(record: ShardRecord, rows: pl.DataFrame) -> None:
        marker = posixpath.join(staging, WRITTEN, f"{first + len(records):06d}-{record.sha256}.json")
        data = json.dumps(record.row()).encode()
        fs.pipe_file(marker, data)
        written.append(len(data))
        records.append(record)

    writer = ShardWriter(
        fs, shards_path(root_path), posixpath.join(staging, PARTIAL_SHARD), policy.samples_per_shard,
        policy.max_shard_bytes, on_shard,
    )  # fmt: skip
    try:
        groups = _groups_to_write(source, index, to_write)
        for prepared in prepared_groups(source, groups, tokenizer, workers, to_write.height):
            writer.add(prepared)
        writer.finish()
    finally:
        writer.abandon()
    return records


def _groups_to_write(source: PoolSource, index: PoolIndex, to_write: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """The rows of ``to_write``, batch by batch and by sha256 within a batch, in groups to prepare."""
    for batch_i in to_write["batch_i"].unique(maintain_order=True).to_list():
        wanted = to_write.filter(pl.col("batch_i") == batch_i).select("s0", "c0")
        rows = (
            source.rows(index.batches[batch_i])
            .with_columns(*key_columns())
            .join(wanted, on=["s0", "c0"], how="semi")
            .sort("sha256")
        )
        for start in range(0, rows.height, PREPARED_ROWS):
            yield rows.slice(start, PREPARED_ROWS)


def _moved_segments(known: _Known, kept: pl.DataFrame, policy: ShardPolicy) -> pl.Series:
    """Base segments whose rows of kept shards fell under ``min_live_fraction`` of their rows: the new segment
    takes those shards' rows over, so a version never reads much more than its own rows."""
    used = kept.filter(~pl.col("staged")).group_by("segment").agg(pl.col("n_live").sum().alias("live"))
    under = known.segments.join(used, on="segment").filter(pl.col("live") < pl.col("n_rows") * policy.min_live_fraction)
    return under["segment"]


def _write_segment(
    fs, root_path: str, staging: str, known: _Known, kept: pl.DataFrame, moved: pl.Series, records
) -> SegmentRecord | None:
    """The new segment: every row of the kept shards of moved segments, of the kept shards an earlier attempt
    staged and of the shards written now, in that order; None when there are none."""
    writer = SegmentWriter(fs, root_path, posixpath.join(staging, PARTIAL_SEGMENT))
    try:
        taken = kept.filter(~pl.col("staged") & pl.col("segment").is_in(moved.implode()))
        for piece in shard_rows(fs, root_path, taken, known.segments.filter(pl.col("segment").is_in(moved.implode()))):
            writer.write(piece)
        for sha in [*kept.filter(pl.col("staged"))["sha256"].to_list(), *(r.sha256 for r in records)]:
            writer.write(read_parquet(fs, posixpath.join(root_path, dataset_shard_index_key(sha))))
    except BaseException:
        writer.abandon()
        raise
    return writer.store()


def _removed(fs, root_path: str, known: _Known, dead: pl.DataFrame) -> pl.DataFrame:
    """The samples the kept shards hold that the version does not (``dead``), as sha256, shard, content_key:
    named from the segments of the few shards holding such samples, and from the indexes of staged ones."""
    touched = known.shards.join(dead.select("shard_i").unique(), on="shard_i", how="semi")
    named = [pl.DataFrame(schema=REMOVED_SCHEMA)]
    columns = list(REMOVED_SCHEMA)

    def found(rows: pl.DataFrame) -> pl.DataFrame:
        return rows.with_columns(*key_columns()).join(dead, on=["s0", "c0", "shard_i"], how="semi").select(columns)

    in_base = touched.filter(~pl.col("staged"))
    numbers = known.shards.filter(~pl.col("staged")).select("shard", "shard_i")
    for piece in shard_rows(fs, root_path, in_base, known.segments, columns):
        named.append(found(piece.join(numbers, on="shard", maintain_order="left")))
    for sha, shard_i in touched.filter(pl.col("staged")).select("sha256", "shard_i").iter_rows():
        rows = read_parquet(fs, posixpath.join(root_path, dataset_shard_index_key(sha)), columns)
        named.append(found(rows.with_columns(pl.lit(shard_i, SHARD_NUMBER).alias("shard_i"))))
    return pl.concat(named)
