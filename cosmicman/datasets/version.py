"""Immutable CosmicMan-HQ dataset versions, written and read through fsspec (local, memory://, s3://); the
layout of a version's files and its publishing protocol are described in :mod:`cosmicman.datasets.layout`.

:func:`write_dataset_version` writes a version from whole samples in hand (tests, benchmarks); the flywheel
builds versions that share the shards of the one before through :mod:`cosmicman.datasets.build`. Both write
the rows of the shards they wrote into one manifest segment and finish through :func:`finish_version`."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from cosmicman.core.keys import DATASET_NAME, dataset_staging_prefix
from cosmicman.datasets.layout import (
    DATACARD,
    REMOVED,
    REMOVED_SCHEMA,
    SEGMENTS,
    SHARDS,
    STATS,
    SUCCESS,
    VersionExistsError,
    check_version_name,
    manifest_pieces,
    segments_path,
    shards_path,
    store_fs,
    version_path,
)
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.segments import SegmentRecord, SegmentWriter, segments_frame
from cosmicman.datasets.shards import PREPARED_ROWS, ShardRecord, ShardWriter, prepare_samples
from cosmicman.datasets.stats import STATS_BATCH_ROWS, STATS_COLUMNS, compute_stats, render_datacard

PARTIAL_SHARD = "partial.tar"  # the shard being filled, in the staging folder
PARTIAL_SEGMENT = "segment.parquet"  # the segment being written, in the staging folder
SHARDS_SCHEMA = {
    "shard": pl.String,
    "sha256": pl.String,
    "n_samples": pl.Int64,
    "n_live": pl.Int64,
    "n_bytes": pl.Int64,
    "segment": pl.String,
}
VERSION_FILES = (SHARDS, SEGMENTS, REMOVED, STATS, DATACARD)  # published in this order, then _SUCCESS


@dataclass(frozen=True)
class VersionInfo:
    version: str
    url: str
    n_samples: int
    shards: tuple[str, ...]
    stats: dict[str, Any]


def prepare(
    root: str, version: str, storage_options: Mapping[str, Any] | None, protocol, tokenizer
) -> tuple[Any, str, str, Any, Any]:
    """(fs, root path, staging folder, protocol, tokenizer) for writing ``version``; refuse a published one."""
    check_version_name(version)
    fs, root_path = store_fs(root, storage_options)
    final = version_path(root_path, version)
    fs.invalidate_cache(final)
    if fs.exists(posixpath.join(final, SUCCESS)):
        raise VersionExistsError(f"dataset version {version!r} already exists at {fs.unstrip_protocol(final)}")
    if protocol is None:
        from cosmicman.core.protocol import load_protocol

        protocol = load_protocol()
    if tokenizer is None:
        from cosmicman.core.tokenizer import load_clip_tokenizer

        tokenizer = load_clip_tokenizer()
    return fs, root_path, posixpath.join(root_path, dataset_staging_prefix(version)), protocol, tokenizer


def write_dataset_version(
    root: str,
    version: str,
    samples: Iterable[DatasetSample],
    *,
    samples_per_shard: int = 1000,
    max_shard_bytes: int | None = None,
    protocol=None,
    tokenizer=None,
    datacard: Mapping[str, Any] | None = None,
    created_at: str | None = None,
    allow_empty: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> VersionInfo:
    """Write and publish ``<root>/datasets/cosmicman-hq/<version>/`` from whole samples; refuse an existing
    version.

    ``samples`` is streamed (one shard in flight). Shards land in the shared shard folder; one that exists
    already (the same samples in the same order) is referenced, not rewritten. A failed write removes the
    shards it created. ``datacard`` may carry ``description``, ``filters`` (the filter configuration used),
    ``licence_note`` and ``sources`` (source -> description). A version without samples is refused
    (``ValueError``) unless ``allow_empty``.
    """
    fs, root_path, staging, protocol, tokenizer = prepare(root, version, storage_options, protocol, tokenizer)
    if fs.exists(staging):  # a plain write does not resume: what an earlier attempt staged is replaced
        fs.rm(staging, recursive=True)
    fs.makedirs(staging, exist_ok=True)
    segment = SegmentWriter(fs, root_path, posixpath.join(staging, PARTIAL_SEGMENT))
    records: list[ShardRecord] = []
    stored: SegmentRecord | None = None

    def on_shard(record: ShardRecord, rows: pl.DataFrame) -> None:
        segment.write(rows)
        records.append(record)

    writer = ShardWriter(
        fs, shards_path(root_path), posixpath.join(staging, PARTIAL_SHARD), samples_per_shard, max_shard_bytes,
        on_shard,
    )  # fmt: skip
    seen: set[str] = set()
    try:
        try:
            group: list[tuple[DatasetSample, str | None]] = []
            for s in samples:
                if s.sha256.lower() in seen:
                    raise ValueError(f"duplicate sample {s.sha256.lower()}")
                seen.add(s.sha256.lower())
                group.append((s, None))
                if len(group) == PREPARED_ROWS:
                    writer.add(prepare_samples(group, tokenizer))
                    group = []
            writer.add(prepare_samples(group, tokenizer))
            writer.finish()
        finally:
            writer.abandon()
            segment.abandon()
        stored = segment.store()
        name = stored.segment if stored else None
        shards = pl.DataFrame(
            [{**r.row(), "n_live": r.n_samples, "segment": name} for r in records], schema=SHARDS_SCHEMA
        )
        segments = segments_frame([stored] if stored else [])
        removed = pl.DataFrame(schema=REMOVED_SCHEMA)
        return finish_version(
            fs, root_path, staging, version, shards, segments, removed, protocol, datacard, created_at, allow_empty
        )
    except BaseException:
        for r in records:
            if r.created:
                fs.rm(
                    [posixpath.join(shards_path(root_path), r.shard), posixpath.join(shards_path(root_path), r.index)]
                )
        if stored is not None and stored.created:
            fs.rm(posixpath.join(segments_path(root_path), stored.segment))
        remove_if_empty(fs, shards_path(root_path))
        remove_if_empty(fs, segments_path(root_path))
        raise
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        remove_if_empty(fs, posixpath.dirname(staging))


def finish_version(
    fs,
    root_path: str,
    staging: str,
    version: str,
    shards: pl.DataFrame,
    segments: pl.DataFrame,
    removed: pl.DataFrame,
    protocol,
    datacard: Mapping[str, Any] | None,
    created_at: str | None,
    allow_empty: bool,
) -> VersionInfo:
    """From the shards the version references, the segments holding their rows (stored already) and the
    samples of those shards it does not hold: shards.parquet, segments.parquet, removed.parquet, stats
    (the manifest streamed from the segments), datacard, then publish."""
    n_samples = int(shards["n_live"].sum()) if shards.height else 0
    if not n_samples and not allow_empty:
        raise ValueError(f"dataset version {version!r} would have no samples")
    created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")
    # pieces of STATS_BATCH_ROWS: the label lists the statistics explode are most of a piece's memory
    pieces = manifest_pieces(fs, root_path, shards, segments, removed, STATS_COLUMNS, STATS_BATCH_ROWS)
    stats = compute_stats(pieces, protocol, shards)
    stats.update({"dataset": DATASET_NAME, "version": version, "created_at": created_at})
    for name, table in ((SHARDS, shards), (SEGMENTS, segments), (REMOVED, removed.select(list(REMOVED_SCHEMA)))):
        with fs.open(posixpath.join(staging, name), "wb") as f:
            table.write_parquet(f)
    with fs.open(posixpath.join(staging, STATS), "wb") as f:
        f.write(json.dumps(stats, indent=2, sort_keys=True).encode())
    with fs.open(posixpath.join(staging, DATACARD), "wb") as f:
        f.write(render_datacard(version, stats, datacard or {}).encode())
    final = version_path(root_path, version)
    _publish(fs, staging, final, version, stats)
    return VersionInfo(version, fs.unstrip_protocol(final), n_samples, tuple(shards["shard"].to_list()), stats)


def remove_if_empty(fs, path: str) -> None:
    try:
        if fs.isdir(path) and not fs.ls(path):
            fs.rmdir(path)
    except OSError:  # another writer's folder appeared, or no directories on this store
        pass


def _publish(fs, staging: str, final: str, version: str, stats: dict) -> None:
    success = posixpath.join(final, SUCCESS)
    if fs.exists(success):
        raise VersionExistsError(f"dataset version {version!r} was published meanwhile")
    if fs.exists(final):  # leftovers of a crashed publish: never visible (no _SUCCESS), replace them
        fs.rm(final, recursive=True)
    fs.makedirs(final, exist_ok=True)
    for name in VERSION_FILES:
        fs.mv(posixpath.join(staging, name), posixpath.join(final, name))
    marker = json.dumps(
        {"version": version, "n_samples": stats["n_images"], "created_at": stats.get("created_at")}
    ).encode()
    try:
        f = fs.open(success, "xb")
    except (ValueError, NotImplementedError, TypeError):  # no exclusive create on this filesystem
        f = fs.open(success, "wb")
    except FileExistsError as exc:
        raise VersionExistsError(f"dataset version {version!r} was published meanwhile") from exc
    with f:
        f.write(marker)
