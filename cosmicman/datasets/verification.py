"""Does a published version still match what it lists? Every shard ``shards.parquet`` names exists with its
recorded size and sha256 and holds the samples its segment rows say; every segment ``segments.parquet`` names
exists with its size and sha256; the rows and ``removed.parquet`` agree with each shard's counts
(Dagster-free).

Shards and segments are immutable and shared, so their bytes are re-read once: after they matched, a record
under the verified prefix says so and later checks (of this version or any other that references them)
compare their sizes from one listing of their folder instead. The rows are checked in one pass over the
version's segments read in pieces: the check is linear in the pool.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from cosmicman.core.keys import DATASET_VERIFIED_PREFIX, dataset_verified_key
from cosmicman.datasets.layout import (
    REMOVED,
    SEGMENTS,
    SHARDS,
    SUCCESS,
    read_removed,
    read_segments_table,
    read_shards_table,
    segments_path,
    shard_rows,
    shards_path,
    store_fs,
    version_exists,
    version_path,
)
from cosmicman.datasets.shards import HashingReader, scan_shard
from cosmicman.datasets.version import VERSION_FILES


@dataclass(frozen=True)
class VersionVerification:
    """What ``shards.parquet`` lists for a version (0 when it cannot be read), every problem found, and how
    many shards had their bytes re-read this time (the others were verified before)."""

    version: str
    shards: int
    samples: int
    n_bytes: int
    problems: list[str]
    reread: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_version(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> VersionVerification:
    """Check ``version`` against ``shards.parquet``, its segments and the shards, re-reading only shards and
    segments never verified before."""
    problems, reread = _problems(root, version, storage_options)
    fs, path = store_fs(root, storage_options)
    listed = version_exists(root, version, storage_options) and fs.exists(
        posixpath.join(version_path(path, version), SHARDS)
    )
    if not listed:
        return VersionVerification(version, 0, 0, 0, problems, reread)
    shards = read_shards_table(root, version, storage_options)
    return VersionVerification(
        version, len(shards), int(shards["n_live"].sum()), int(shards["n_bytes"].sum()), problems, reread
    )


def verify_shards(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The problems :func:`verify_version` finds; empty when the version is intact."""
    return _problems(root, version, storage_options)[0]


def _problems(root: str, version: str, storage_options: Mapping[str, Any] | None) -> tuple[list[str], int]:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    fs.invalidate_cache(vpath)
    if not fs.exists(posixpath.join(vpath, SUCCESS)):
        return [f"{version}: not published ({SUCCESS} missing)"], 0
    present_files = {posixpath.basename(p) for p in fs.ls(vpath, detail=False)}
    expected = (*VERSION_FILES, SUCCESS)
    problems = [f"{name}: missing" for name in expected if name not in present_files]
    if problems:
        return problems, 0
    problems += [f"{name}: not part of a version" for name in sorted(present_files - set(expected))]
    shards = read_shards_table(root, version, storage_options)
    segments = read_segments_table(root, version, storage_options)
    removed = read_removed(root, version, storage_options)
    verified = _listed_names(fs, posixpath.join(path, DATASET_VERIFIED_PREFIX))
    found, sound = _check_segments(fs, path, segments, verified)
    problems += found
    unlisted = shards.filter(pl.col("segment").is_null() | ~pl.col("segment").is_in(segments["segment"].implode()))
    problems += [
        f"{s}: its segment {g} is not in {SEGMENTS}" for s, g in unlisted.select("shard", "segment").iter_rows()
    ]
    readable = shards.filter(pl.col("segment").is_in(sound.implode()))
    sizes = _listed_sizes(fs, shards_path(path))
    unverified = shards.filter(~(pl.col("sha256") + ".json").is_in(list(verified)))["shard"]
    trusted = segments.filter(pl.col("segment").is_in(sound.implode()))
    per_shard, held = _rows_per_shard(fs, path, readable, trusted, removed, unverified)
    problems += _against_shards_table(per_shard, readable, removed)
    reread = 0
    for row in shards.iter_rows(named=True):
        name, sha = row["shard"], row["sha256"]
        if name != f"{sha}.tar":
            problems.append(f"{name}: not named by its sha256 {sha}")
        if name not in sizes:
            problems.append(f"{name}: missing")
            continue
        if sizes[name] != row["n_bytes"]:
            problems.append(f"{name}: {sizes[name]} bytes != recorded {row['n_bytes']}")
            continue
        if f"{sha}.parquet" not in sizes:
            problems.append(f"{name}: its index {sha}.parquet is missing")
            continue
        if f"{sha}.json" in verified or row["segment"] not in sound:
            continue
        reread += 1
        keys = set(held.filter(pl.col("shard") == name)["sha256"].to_list())
        found = _reread(fs, posixpath.join(shards_path(path), name), row, keys)
        problems += found
        if not found:
            _record_verified(fs, path, sha, {"n_bytes": row["n_bytes"], "n_samples": row["n_samples"]})
    return problems, reread


def _check_segments(fs, path: str, segments: pl.DataFrame, verified: set[str]) -> tuple[list[str], pl.Series]:
    """Problems of the segments themselves, and the names of those whose rows can be trusted."""
    sizes = _listed_sizes(fs, segments_path(path))
    problems, sound = [], []
    for name, sha, n_bytes in segments.select("segment", "sha256", "n_bytes").iter_rows():
        if name != f"{sha}.parquet":
            problems.append(f"segment {name}: not named by its sha256 {sha}")
        elif name not in sizes:
            problems.append(f"segment {name}: missing")
        elif sizes[name] != n_bytes:
            problems.append(f"segment {name}: {sizes[name]} bytes != recorded {n_bytes}")
        elif f"{sha}.json" in verified:
            sound.append(name)
        else:
            with fs.open(posixpath.join(segments_path(path), name), "rb") as f:
                reader = HashingReader(f)
                reader.drain()
            if reader.sha.hexdigest() != sha:
                problems.append(f"segment {name}: sha256 {reader.sha.hexdigest()} != recorded {sha}")
            else:
                _record_verified(fs, path, sha, {"n_bytes": n_bytes})
                sound.append(name)
    return problems, pl.Series("segment", sound, dtype=pl.String)


def _record_verified(fs, path: str, sha: str, record: dict[str, Any]) -> None:
    fs.makedirs(posixpath.join(path, DATASET_VERIFIED_PREFIX), exist_ok=True)
    fs.pipe_file(posixpath.join(path, dataset_verified_key(sha)), json.dumps({"sha256": sha, **record}).encode())


def _rows_per_shard(
    fs, path: str, shards: pl.DataFrame, segments: pl.DataFrame, removed: pl.DataFrame, unverified: pl.Series
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """shard -> (rows, the shard_sha256 values its rows give it, removed samples among its rows), from one pass
    over the segments; and the sample keys of the shards never verified (their bytes are re-read)."""
    gone = removed.select("sha256", "shard")
    wanted = unverified.implode()
    counts, held = [], [pl.DataFrame(schema={"sha256": pl.String, "shard": pl.String})]
    for piece in shard_rows(fs, path, shards, segments, ["sha256", "shard", "shard_sha256"]):
        marked = piece.join(gone.with_columns(gone=pl.lit(True)), on=["sha256", "shard"], how="left")
        counts.append(
            marked.group_by("shard").agg(
                pl.len().cast(pl.Int64).alias("n"),
                pl.col("gone").fill_null(False).sum().cast(pl.Int64).alias("n_gone"),
                pl.col("shard_sha256").unique().alias("shas"),
            )
        )
        held.append(piece.filter(pl.col("shard").is_in(wanted)).select("sha256", "shard"))
    schema: dict[str, pl.DataType] = {
        "shard": pl.String(),
        "n": pl.Int64(),
        "n_gone": pl.Int64(),
        "shas": pl.List(pl.String),
    }
    per_shard = (
        pl.concat([pl.DataFrame(schema=schema), *counts])
        .group_by("shard")
        .agg(pl.col("n").sum(), pl.col("n_gone").sum(), pl.col("shas").explode().unique())
    )
    return per_shard, pl.concat(held)


def _against_shards_table(per_shard: pl.DataFrame, shards: pl.DataFrame, removed: pl.DataFrame) -> list[str]:
    problems = []
    both = shards.join(per_shard, on="shard", how="left").with_columns(pl.col("n", "n_gone").fill_null(0))
    for row in both.sort("shard").iter_rows(named=True):
        if row["n"] != row["n_samples"]:
            problems.append(f"{row['shard']}: its segment has {row['n']} rows, {SHARDS} says {row['n_samples']}")
        elif row["n"] - row["n_gone"] != row["n_live"]:
            live = row["n"] - row["n_gone"]
            problems.append(f"{row['shard']}: {live} of its samples are in the version, {SHARDS} says {row['n_live']}")
        if row["shas"] is not None and set(row["shas"]) - {None} != {row["sha256"]}:
            problems.append(f"{row['shard']}: segment shard_sha256 differs from {SHARDS}")
    foreign = removed.join(shards, on="shard", how="anti").height
    if foreign:
        problems.append(f"{REMOVED}: {foreign} samples in shards the version does not reference")
    return problems


def _listed_sizes(fs, folder: str) -> dict[str, int]:
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return {}
    return {posixpath.basename(e["name"]): int(e["size"]) for e in fs.ls(folder, detail=True) if e["type"] == "file"}


def _listed_names(fs, folder: str) -> set[str]:
    return set(_listed_sizes(fs, folder))


def _reread(fs, shard: str, row: dict[str, Any], held: set[str]) -> list[str]:
    name = row["shard"]
    sha, n_bytes, keys, err = scan_shard(fs, shard)
    problems = []
    if sha != row["sha256"]:
        problems.append(f"{name}: sha256 {sha} != recorded {row['sha256']}")
    if n_bytes != row["n_bytes"]:
        problems.append(f"{name}: {n_bytes} bytes != recorded {row['n_bytes']}")
    if err:
        problems.append(f"{name}: unreadable tar ({err})")
    elif keys != held or len(keys) != row["n_samples"]:
        problems.append(f"{name}: sample keys differ from its segment rows")
    return problems
