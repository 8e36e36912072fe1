"""Immutable CosmicMan-HQ dataset versions, written and read through fsspec (local, memory://, s3://); the
layout of a version's files and its publishing protocol are described in :mod:`cosmicman.datasets.layout`."""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from cosmicman.core.keys import DATASET_NAME, dataset_staging_prefix
from cosmicman.datasets.layout import (
    DATACARD,
    MANIFEST,
    SHARDS,
    STATS,
    SUCCESS,
    VersionExistsError,
    check_version_name,
    store_fs,
    version_path,
)
from cosmicman.datasets.samples import DatasetSample, manifest_frame
from cosmicman.datasets.shards import write_shards
from cosmicman.datasets.stats import compute_stats, render_datacard


@dataclass(frozen=True)
class VersionInfo:
    version: str
    url: str
    n_samples: int
    shards: tuple[str, ...]
    stats: dict[str, Any]


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
    """Write and publish ``<root>/datasets/cosmicman-hq/<version>/``; refuse an existing version.

    ``samples`` is streamed (one shard in flight). ``datacard`` may carry ``description``, ``filters``
    (the filter configuration used), ``licence_note`` and ``sources`` (source -> description).
    A version without samples is refused (``ValueError``) unless ``allow_empty``.
    """
    check_version_name(version)
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
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
    created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")

    tmp = posixpath.join(root_path, dataset_staging_prefix(f"{version}.{uuid.uuid4().hex}"))
    fs.makedirs(tmp, exist_ok=True)
    try:
        rows, shard_rows, coverage = write_shards(fs, tmp, samples, samples_per_shard, max_shard_bytes, tokenizer)
        if not rows and not allow_empty:
            raise ValueError(f"dataset version {version!r} would have no samples")
        manifest = manifest_frame(rows)
        shards = pl.DataFrame(
            shard_rows, schema={"shard": pl.String, "n_samples": pl.Int64, "n_bytes": pl.Int64, "sha256": pl.String}
        )
        stats = compute_stats(manifest, coverage, protocol, shards)
        stats.update({"dataset": DATASET_NAME, "version": version, "created_at": created_at})
        with fs.open(posixpath.join(tmp, MANIFEST), "wb") as f:
            manifest.write_parquet(f)
        with fs.open(posixpath.join(tmp, SHARDS), "wb") as f:
            shards.write_parquet(f)
        with fs.open(posixpath.join(tmp, STATS), "wb") as f:
            f.write(json.dumps(stats, indent=2, sort_keys=True).encode())
        with fs.open(posixpath.join(tmp, DATACARD), "wb") as f:
            f.write(render_datacard(version, stats, manifest, datacard or {}).encode())
        _publish(fs, tmp, final, version, stats)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        _remove_if_empty(fs, posixpath.dirname(tmp))
    return VersionInfo(
        version, fs.unstrip_protocol(final), int(manifest.height), tuple(shards["shard"].to_list()), stats
    )


def _remove_if_empty(fs, path: str) -> None:
    try:
        if fs.isdir(path) and not fs.ls(path):
            fs.rmdir(path)
    except OSError:  # another writer's temporary folder appeared, or no directories on this store
        pass


def _publish(fs, tmp: str, final: str, version: str, stats: dict) -> None:
    success = posixpath.join(final, SUCCESS)
    if fs.exists(success):
        raise VersionExistsError(f"dataset version {version!r} was published meanwhile")
    if fs.exists(final):  # leftovers of a crashed publish: never visible (no _SUCCESS), replace them
        fs.rm(final, recursive=True)
    fs.makedirs(final, exist_ok=True)
    for src in sorted(fs.find(tmp)):
        fs.mv(src, posixpath.join(final, posixpath.relpath(src, tmp)))
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
