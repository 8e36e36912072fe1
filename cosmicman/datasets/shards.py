"""Content-addressed WebDataset shards: writing them (byte-identical for the same samples), reading their
samples back, and scanning one's bytes to verify it."""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.masks import mask_png, mask_png_size, read_mask
from cosmicman.datasets import ustar
from cosmicman.datasets.layout import read_shards_table, shards_path, store_fs
from cosmicman.datasets.samples import (
    PROVENANCE_COLUMNS,
    DatasetSample,
    caption_record,
    manifest_frame,
    oriented_size,
    sample_content_key,
)


class HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.n

    @property
    def closed(self) -> bool:  # asked by pyarrow's writers
        return bool(self.f.closed)


@dataclass(frozen=True)
class ShardRecord:
    """A shard written and stored under its sha256 (``shard`` = ``<sha256>.tar``)."""

    shard: str
    sha256: str
    n_samples: int
    n_bytes: int
    created: bool  # False: the same bytes were stored already (by an earlier version or attempt)

    @property
    def index(self) -> str:
        return f"{self.sha256}.parquet"

    def row(self) -> dict[str, Any]:
        return {"shard": self.shard, "sha256": self.sha256, "n_samples": self.n_samples, "n_bytes": self.n_bytes}


def member_parts(sample: DatasetSample) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """A sample's four tar members and its manifest row (``shard`` fields, ``content_key`` and ``caption_tokens``
    unset: a shard counts its captions' tokens in one call)."""
    sha = sample.sha256.lower()
    if sha256_hex(sample.image_bytes) != sha:
        raise ValueError(f"sample {sha}: sha256 does not match its image bytes")
    ext = {"jpeg": "jpg"}.get(sample.ext.lower().lstrip("."), sample.ext.lower().lstrip("."))
    if not ext or "." in ext or ext in ("json", "txt"):
        raise ValueError(f"sample {sha}: bad image extension {sample.ext!r}")
    width, height = oriented_size(sample.image_bytes)
    if isinstance(sample.mask, bytes):  # as stored: its header says its size, its values were checked on writing
        mask_width, mask_height = mask_png_size(sample.mask)
        shape: tuple[int, ...] = (mask_height, mask_width)
    else:
        shape = np.asarray(sample.mask).shape
    if shape != (height, width):
        raise ValueError(f"sample {sha}: mask shape {shape} != image (h, w) {(height, width)}")
    png = sample.mask if isinstance(sample.mask, bytes) else mask_png(sample.mask)
    cap = caption_record(sample.caption)
    prov = dict(sample.provenance)
    meta = {
        "sha256": sha,
        "ext": ext,
        "width": width,
        "height": height,
        "caption": cap["caption"],
        "groups": cap["groups"],
        "dropped": list(cap["dropped"]),
        "truncated": list(cap.get("truncated", [])),
        # the structured groups a trainer draws a fresh caption from at every sample
        "caption_source": cap.get("source"),
        "attributes": dict(sample.attributes),
        **{k: prov.get(k) for k in PROVENANCE_COLUMNS},
        "provenance": prov,
    }
    text = cap["caption"]
    members = [
        (f"{sha}.{ext}", sample.image_bytes),
        (f"{sha}.mask.png", png),
        (f"{sha}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()),
        (f"{sha}.txt", text.encode()),
    ]
    row = {
        "sha256": sha,
        "ext": ext,
        "width": width,
        "height": height,
        **{k: prov.get(k) for k in PROVENANCE_COLUMNS},
        "provenance_json": json.dumps(prov, sort_keys=True, default=str),
        "caption": text,
        "n_groups": len(cap["groups"]),
        "n_spans": sum(g.get("span") is not None for g in cap["groups"]),
        "groups": [g["name"] for g in cap["groups"]],
        "dropped_groups": list(cap["dropped"]),
        "n_attributes": len(sample.attributes),
        "caption_words": len(text.split()),
        "categories": sorted(sample.attributes),
        "mask_png": png,
    }
    return members, row


# samples prepared together: one tokenizer call, one hand-over from a worker process. In flight at once: a few
# such groups a worker, so at the paper's ~0.5 MB a JPEG a group holds ~64 MB of image bytes
PREPARED_ROWS = 128


@dataclass(frozen=True)
class PreparedSamples:
    """Samples made ready for a shard, in order: each one's tar members as bytes, and their manifest rows
    (``content_key`` and ``caption_tokens`` set; the ``shard`` fields are the writer's)."""

    members: list[bytes]
    rows: pl.DataFrame


def prepare_samples(samples: Iterable[tuple[DatasetSample, str | None]], tokenizer) -> PreparedSamples:
    """Members and manifest rows of ``(sample, content key)`` pairs (a key of None: computed from the
    sample); their captions' tokens are counted in one tokenizer call (far cheaper per text than one call
    each). Pure: worker processes prepare while one writer appends (:mod:`cosmicman.datasets.prepare_pool`)."""
    members, rows = [], []
    for sample, key in samples:
        parts, row = member_parts(sample)
        png = row.pop("mask_png")
        row["content_key"] = key or sample_content_key(sample, png)
        members.append(b"".join(ustar.member(name, data) for name, data in parts))
        rows.append(row)
    texts = [r["caption"] for r in rows]
    for r, text, ids in zip(rows, texts, tokenizer(texts).input_ids if texts else [], strict=True):
        r["caption_tokens"] = len(ids) - 2 if text else 0
    return PreparedSamples(members, manifest_frame(rows))


class ShardWriter:
    """Writes samples into content-addressed shards under ``folder``, one shard in flight.

    A shard is written to ``partial`` while it fills, then moved to ``<folder>/<sha256>.tar`` with its index
    ``<folder>/<sha256>.parquet`` (the manifest rows of its samples) beside it; ``on_shard`` hears of it after
    both are in place. The same samples in the same order give the same bytes, so a shard that already exists
    is kept as it is. A shard closes at ``samples_per_shard`` samples or once it holds ``max_shard_bytes``.
    """

    def __init__(
        self,
        fs,
        folder: str,
        partial: str,
        samples_per_shard: int,
        max_shard_bytes: int | None,
        on_shard: Callable[[ShardRecord, pl.DataFrame], None],
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        self.fs, self.folder, self.partial = fs, folder, partial
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.on_shard = on_shard
        self._f: Any = None
        self._hw: HashingWriter | None = None
        self._frames: list[pl.DataFrame] = []  # the rows of the shard in flight, as slices of prepared rows
        self._n = 0

    def add(self, prepared: PreparedSamples) -> None:
        """Append prepared samples, closing a shard whenever it is full."""
        start = 0
        for i, data in enumerate(prepared.members):
            if self._hw is not None and (
                self._n >= self.samples_per_shard
                or (self.max_shard_bytes is not None and self._hw.n >= self.max_shard_bytes)
            ):
                self._frames.append(prepared.rows.slice(start, i - start))
                start = i
                self._close_shard()
            if self._hw is None:
                self._f = self.fs.open(self.partial, "wb")
                self._hw = HashingWriter(self._f)
            self._hw.write(data)
            self._n += 1
        self._frames.append(prepared.rows.slice(start))

    def finish(self) -> None:
        """Close and store the shard in flight (if any)."""
        self._close_shard()

    def abandon(self) -> None:
        """Close the file handles of a shard in flight after an error; the partial file stays unreferenced."""
        if self._hw is not None:
            self._f.close()
            self._hw = None

    def _close_shard(self) -> None:
        if self._hw is None:
            return
        self._hw.write(ustar.end_of_archive(self._hw.n))
        self._f.close()
        sha, n_bytes = self._hw.sha.hexdigest(), self._hw.n
        self._hw = None
        name = f"{sha}.tar"
        target = posixpath.join(self.folder, name)
        created = not self.fs.exists(target)
        if created:
            self.fs.makedirs(self.folder, exist_ok=True)
            self.fs.mv(self.partial, target)
        else:  # the same samples in the same order, stored before: identical bytes
            self.fs.rm(self.partial)
        record = ShardRecord(name, sha, self._n, n_bytes, created)
        rows = pl.concat(self._frames).with_columns(shard=pl.lit(name), shard_sha256=pl.lit(sha))
        index = posixpath.join(self.folder, record.index)
        if not self.fs.exists(index):  # absent too when a kill fell between the tar and its index
            with self.fs.open(index, "wb") as f:
                rows.write_parquet(f)
        self._frames, self._n = [], 0
        self.on_shard(record, rows)


def iter_samples(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Decode the shards through fsspec: dicts with ``sha256, ext, image_bytes, mask, meta, caption``."""
    fs, path = store_fs(root, storage_options)
    for name in read_shards_table(root, version, storage_options)["shard"].to_list():
        shard = posixpath.join(shards_path(path), name)
        with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            current: dict[str, Any] = {}
            for member in tar:
                key, _, suffix = posixpath.basename(member.name).partition(".")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise ValueError(f"{name}: member {member.name} is not a file")
                data = extracted.read()
                if current and current["sha256"] != key:
                    yield sample_record(current)
                    current = {}
                current.setdefault("sha256", key)
                current[suffix] = data
            if current:
                yield sample_record(current)


def sample_record(parts: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads(parts.pop("json"))
    mask = read_mask(parts.pop("mask.png"))
    txt = parts.pop("txt", b"").decode()
    sha = parts.pop("sha256")
    ((ext, image),) = parts.items()
    return {"sha256": sha, "ext": ext, "image_bytes": image, "mask": mask, "meta": meta, "caption": txt}


class HashingReader:
    """A read-only stream wrapper that hashes and counts what is read through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        b = self.f.read(size)
        self.sha.update(b)
        self.n += len(b)
        return b

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass


def scan_shard(fs, path: str) -> tuple[str, int, set[str], str | None]:
    """sha256, size and sample keys of a shard, in one streaming pass."""
    keys: set[str] = set()
    err = None
    with fs.open(path, "rb") as f:
        hr = HashingReader(f)
        try:
            for name in ustar.member_names(hr.read):
                keys.add(posixpath.basename(name).partition(".")[0])
        except (ValueError, OSError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        hr.drain()
    return hr.sha.hexdigest(), hr.n, keys, err
