"""Where a dataset version's files live, which versions are published, and reading their tables.

Layout of ``<root>/datasets/cosmicman-hq/<version>/``::

    shard-000000.tar ...  WebDataset shards; per sample (``__key__`` = image sha256):
                            <sha>.jpg|png|...  the original image bytes
                            <sha>.mask.png     the ATR label map, 8-bit grey PNG (values 0..17)
                            <sha>.json         sha256, caption, groups (name/text/labels/foreground/span),
                                               dropped, caption_source (the structured groups a
                                               trainer draws per-sample captions from; null in
                                               versions written before it), attributes,
                                               provenance fields, width, height
                            <sha>.txt          the caption
    manifest.parquet      one row per sample: sha256, shard, shard_sha256, provenance, caption, sizes ...
    shards.parquet        one row per shard: shard, n_samples, n_bytes, sha256
    stats.json            the paper's Table 1 columns, computed from the manifest
    DATACARD.md           what it is, sources, filters, counts, licences
    _SUCCESS              written last: a version without it does not exist for readers

Writes go under ``<root>/datasets/cosmicman-hq/.tmp/<version>.<uuid>/`` and are published by moving
each file into place (a rename on local disks, copy + delete on object stores), then ``_SUCCESS``.
A published version is never overwritten (``VersionExistsError``). A half-published folder without
``_SUCCESS`` (a crash during publishing) is invisible to readers and replaced by the next write.
Writers are expected to be one at a time per version (the Dagster asset); ``_SUCCESS`` is created with
exclusive mode where the filesystem supports it, so of two racing writers one fails.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import polars as pl

from cosmicman.core.keys import DATASETS_PREFIX, dataset_version_prefix

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.parquet"
SHARDS = "shards.parquet"
STATS = "stats.json"
DATACARD = "DATACARD.md"
SHARD_PATTERN = "shard-{:06d}.tar"
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


def version_url(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> str:
    fs, path = store_fs(root, storage_options)
    return fs.unstrip_protocol(version_path(path, version))


def check_version_name(version: str) -> None:
    if not version or "/" in version or version.startswith((".", "_")) or version != version.strip():
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


def read_manifest(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    require_published(fs, vpath, version)
    with fs.open(posixpath.join(vpath, MANIFEST), "rb") as f:
        return pl.read_parquet(f.read())


def read_shards_table(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    require_published(fs, vpath, version)
    with fs.open(posixpath.join(vpath, SHARDS), "rb") as f:
        return pl.read_parquet(f.read())


def read_stats(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    require_published(fs, vpath, version)
    with fs.open(posixpath.join(vpath, STATS), "rb") as f:
        return json.loads(f.read())


def shard_urls(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Full URLs of the version's shards, in order (local paths stay plain paths for webdataset)."""
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    names = read_shards_table(root, version, storage_options)["shard"].to_list()
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [posixpath.join(vpath, n) if local else fs.unstrip_protocol(posixpath.join(vpath, n)) for n in names]
