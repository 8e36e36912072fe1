"""Where a dataset version's files live, which versions are published, and reading their tables.

Shards are stored once, by content, and shared by every version that references them::

    <root>/datasets/cosmicman-hq/shards/<sha256>.tar      WebDataset shard (name: sha256 of its bytes);
                                                          per sample (``__key__`` = image sha256):
                            <sha>.jpg|png|...  the original image bytes
                            <sha>.mask.png     the ATR label map, 8-bit grey PNG (values 0..17)
                            <sha>.json         sha256, caption, groups (name/text/labels/foreground/span),
                                               dropped, caption_source (the structured groups a
                                               trainer draws per-sample captions from), attributes,
                                               provenance fields, width, height
                            <sha>.txt          the caption
    <root>/datasets/cosmicman-hq/shards/<sha256>.parquet  the manifest rows of every sample the shard holds

Manifest segments are stored once, by content, and shared the same way::

    <root>/datasets/cosmicman-hq/manifests/<sha256>.parquet  the manifest rows of every sample of the shards one
                          build wrote (sha256, shard, shard_sha256, provenance, caption, sizes, categories,
                          content_key ...); a later version that keeps those shards references the segment

A version names shards and segments; ``<root>/datasets/cosmicman-hq/<version>/`` holds::

    shards.parquet        one row per shard the version references: shard, sha256, n_samples (in the file),
                          n_live (of them in this version), n_bytes, segment (the one holding its rows)
    segments.parquet      one row per segment the version reads: segment, sha256, n_rows, n_bytes
    removed.parquet       sha256, shard, content_key of the samples its shards hold that are not in it
    stats.json            the paper's Table 1 columns, computed from the manifest
    DATACARD.md           what it is, sources, filters, counts, licences
    _SUCCESS              written last: a version without it does not exist for readers

The version's manifest (:func:`iter_manifest`, :func:`read_manifest`) is the rows of its shards, read from
their segments, minus the removed samples: a version that adds a few samples writes their shards, one segment
and these small files, never the rows it shares with the version before it.

A shard may hold samples a later version removed (``n_live < n_samples``); :func:`excluded_samples` names
them, so a reader skips them. A build is staged under ``<root>/datasets/cosmicman-hq/.tmp/<version>/`` and
published by moving its files into place, then ``_SUCCESS``. A published version is never overwritten
(``VersionExistsError``). A half-published folder without ``_SUCCESS`` is invisible to readers and replaced by
the next write. Writers are expected to be one at a time per version (the Dagster asset); ``_SUCCESS`` is
created with exclusive mode where the filesystem supports it, so of two racing writers one fails.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import fsspec
import polars as pl
import pyarrow.parquet as pq

from cosmicman.core.keys import (
    DATASET_MANIFESTS_PREFIX,
    DATASET_SHARDS_PREFIX,
    DATASET_VERIFIED_PREFIX,
    DATASETS_PREFIX,
    dataset_version_prefix,
)
from cosmicman.datasets.samples import manifest_frame

SUCCESS = "_SUCCESS"
SHARDS = "shards.parquet"
SEGMENTS = "segments.parquet"
REMOVED = "removed.parquet"
STATS = "stats.json"
DATACARD = "DATACARD.md"
RESERVED_NAMES = tuple(
    posixpath.basename(p) for p in (DATASET_SHARDS_PREFIX, DATASET_MANIFESTS_PREFIX, DATASET_VERIFIED_PREFIX)
)
REMOVED_SCHEMA = {"sha256": pl.String, "shard": pl.String, "content_key": pl.String}
VERSION_RE = re.compile(r"^v(\d{4,})$")


class VersionExistsError(FileExistsError):
    """The dataset version is already published; versions are immutable."""


class VersionNotFoundError(FileNotFoundError):
    """No published version (``_SUCCESS`` missing) at that name."""


def store_fs(root: str, storage_options: Mapping[str, Any] | None = None):
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs, path.rstrip("/")


def version_path(root_path: str, version: str) -> str:
    return posixpath.join(root_path, dataset_version_prefix(version))


def shards_path(root_path: str) -> str:
    return posixpath.join(root_path, DATASET_SHARDS_PREFIX)


def segments_path(root_path: str) -> str:
    return posixpath.join(root_path, DATASET_MANIFESTS_PREFIX)


def check_version_name(version: str) -> None:
    if (
        not version
        or "/" in version
        or version.startswith((".", "_"))
        or version != version.strip()
        or version in RESERVED_NAMES
    ):
        raise ValueError(f"invalid dataset version name {version!r}")


def next_version_name(existing: Iterable[str]) -> str:
    """The version after the highest ``vNNNN`` in ``existing`` ("v0001" when there is none)."""
    numbers = [int(m.group(1)) for v in existing if (m := VERSION_RE.match(posixpath.basename(str(v).rstrip("/"))))]
    return f"v{max(numbers, default=0) + 1:04d}"


def list_versions(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Published versions (those with ``_SUCCESS``), sorted by name."""
    fs, path = store_fs(root, storage_options)
    base = posixpath.join(path, DATASETS_PREFIX)
    fs.invalidate_cache(base)  # fsspec instances are shared and cache listings (s3fs)
    if not fs.exists(base):
        return []
    out = []
    for entry in fs.ls(base, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if (
            entry["type"] == "directory"
            and not name.startswith((".", "_"))
            and fs.exists(posixpath.join(base, name, SUCCESS))
        ):
            out.append(name)
    return sorted(out)


def version_exists(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = store_fs(root, storage_options)
    fs.invalidate_cache(version_path(path, version))
    return fs.exists(posixpath.join(version_path(path, version), SUCCESS))


def require_published(fs, vpath: str, version: str) -> None:
    fs.invalidate_cache(vpath)
    if not fs.exists(posixpath.join(vpath, SUCCESS)):
        raise VersionNotFoundError(f"dataset version {version!r} is not published")


def read_parquet(fs, path: str, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file through fsspec, only ``columns`` (all when None) decoded."""
    with fs.open(path, "rb") as f:
        return pl.read_parquet(f, columns=columns)


def iter_parquet(fs, path: str, columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pl.DataFrame]:
    """A Parquet file through fsspec in pieces of at most ``batch_rows`` rows: memory stays one piece."""
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
            yield cast(pl.DataFrame, pl.from_arrow(batch))


def read_shards_table(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The shards the version references, in order: shard, sha256, n_samples, n_live, n_bytes, segment."""
    return _version_table(root, version, SHARDS, storage_options)


def read_stats(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    require_published(fs, vpath, version)
    with fs.open(posixpath.join(vpath, STATS), "rb") as f:
        return json.loads(f.read())


def shard_urls(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Full URLs of the shared shards the version references, in ``shards.parquet`` order (local paths stay
    plain paths for webdataset)."""
    fs, path = store_fs(root, storage_options)
    names = read_shards_table(root, version, storage_options)["shard"].to_list()
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    paths = [posixpath.join(shards_path(path), n) for n in names]
    return paths if local else [fs.unstrip_protocol(p) for p in paths]


def _version_table(root: str, version: str, name: str, storage_options: Mapping[str, Any] | None) -> pl.DataFrame:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    require_published(fs, vpath, version)
    return read_parquet(fs, posixpath.join(vpath, name))


def read_segments_table(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The manifest segments the version reads, in manifest order: segment, sha256, n_rows, n_bytes."""
    return _version_table(root, version, SEGMENTS, storage_options)


def read_removed(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """sha256, shard, content_key of the samples the version's shards hold that are not in the version."""
    return _version_table(root, version, REMOVED, storage_options)


def shard_rows(
    fs,
    root_path: str,
    shards: pl.DataFrame,
    segments: pl.DataFrame,
    columns: list[str] | None = None,
    batch_rows: int = 65536,
) -> Iterator[pl.DataFrame]:
    """The rows of every sample the shards of ``shards`` hold (removed ones too), each read from the segment
    ``shards`` names for it, segment by segment in ``segments`` order: memory stays one piece, and a segment
    holding none of them is not read."""
    read = None if columns is None else list(dict.fromkeys([*columns, "shard"]))
    wanted = shards["segment"].unique().implode()
    for segment in segments.filter(pl.col("segment").is_in(wanted))["segment"].to_list():  # only those it needs
        names = shards.filter(pl.col("segment") == segment)["shard"].implode()
        for piece in iter_parquet(fs, posixpath.join(segments_path(root_path), segment), read, batch_rows):
            held = piece.filter(pl.col("shard").is_in(names))
            yield held if columns is None else held.select(columns)


def manifest_pieces(
    fs,
    root_path: str,
    shards: pl.DataFrame,
    segments: pl.DataFrame,
    removed: pl.DataFrame,
    columns: list[str] | None = None,
    batch_rows: int = 65536,
) -> Iterator[pl.DataFrame]:
    """A version's manifest in pieces: the rows of its shards minus its removed samples, in a stable order."""
    read = columns if columns is None or removed.is_empty() else list(dict.fromkeys([*columns, "sha256", "shard"]))
    gone = removed.select("sha256", "shard")
    for piece in shard_rows(fs, root_path, shards, segments, read, batch_rows):
        if not gone.is_empty():
            piece = piece.join(gone, on=["sha256", "shard"], how="anti", maintain_order="left")
            piece = piece if columns is None else piece.select(columns)
        if piece.height:
            yield piece


def iter_manifest(
    root: str,
    version: str,
    storage_options: Mapping[str, Any] | None = None,
    columns: list[str] | None = None,
    batch_rows: int = 65536,
) -> Iterator[pl.DataFrame]:
    """A published version's manifest in pieces of at most ``batch_rows`` rows, only ``columns`` (all when
    None): what every reader of a version's rows streams, so memory stays one piece."""
    fs, path = store_fs(root, storage_options)
    shards = read_shards_table(root, version, storage_options)
    segments = read_segments_table(root, version, storage_options)
    removed = read_removed(root, version, storage_options)
    yield from manifest_pieces(fs, path, shards, segments, removed, columns, batch_rows)


def read_manifest(
    root: str, version: str, storage_options: Mapping[str, Any] | None = None, columns: list[str] | None = None
) -> pl.DataFrame:
    """A published version's manifest as one DataFrame (every row in memory: for small versions and tests;
    code that may meet the whole pool streams :func:`iter_manifest`)."""
    empty = manifest_frame([])
    pieces = list(iter_manifest(root, version, storage_options, columns))
    return pl.concat(pieces) if pieces else empty if columns is None else empty.select(columns)


def excluded_samples(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """sha256 of the samples that lie in the version's shards but are not in the version (removed since the
    shard was written, not compacted away yet), sorted. A build never keeps a shard holding another copy of a
    sample the version holds (it is compacted), so a sha256 here is never one the version holds."""
    return read_removed(root, version, storage_options)["sha256"].unique().sort().to_list()
