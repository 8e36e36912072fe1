"""Image sources and the ingest step that turns their records into pool rows.

A source yields ``ImageRecord``s for one sourcing batch; ``ingest`` stores each record's bytes as a
content-addressed blob, decodes it once to read its size and perceptual hash, and drops records whose
bytes the pool already holds from another batch. Undecodable bytes are kept as rows (the filter
chain rejects them as ``corrupt``) so every sourced item is accounted for.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import fsspec
import polars as pl

from cosmicman.data.imageio import ImageDecodeError, image_format_ext, inspect_image, sha256_hex
from cosmicman.data.store import Store
from cosmicman.data.synthetic import SyntheticSample, SyntheticWorld

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

RAW_SCHEMA = {
    "sha256": pl.Utf8, "blob_key": pl.Utf8, "ext": pl.Utf8, "source": pl.Utf8, "source_id": pl.Utf8,
    "url": pl.Utf8, "licence": pl.Utf8, "alt_text": pl.Utf8, "width": pl.Int32, "height": pl.Int32,
    "n_bytes": pl.Int64, "phash": pl.Utf8, "decode_error": pl.Utf8, "batch": pl.Utf8,
}


@dataclass(frozen=True)
class SourceItem:
    """One image a source offers to a batch, before its bytes are fetched.

    ``url`` is an http(s) URL for web sources, an fsspec URL for datasets on disk, or
    ``synthetic://<seed>/<index>`` for the synthetic world. Every field but the bytes is kept on the
    image's pool row, so licence, author and page URL survive to the dataset's manifest.
    """
    source: str
    source_id: str
    url: str
    licence: str = "unknown"
    alt_text: str = ""
    author: str = ""
    page_url: str = ""
    width: int | None = None  # as the source states it (LAION columns, API sizes); the decode measures the truth
    height: int | None = None


@dataclass
class ImageRecord:
    source: str
    source_id: str
    data: bytes
    url: str | None = None
    licence: str = "unknown"
    alt_text: str = ""
    truth: SyntheticSample | None = field(default=None, repr=False)


class ImageSource(Protocol):
    name: str

    def records(self, batch_index: int, batch_size: int) -> Iterator[ImageRecord]: ...


@dataclass
class SyntheticSource:
    """The synthetic human world: batch ``b`` renders world indices [b*size, (b+1)*size)."""

    seed: int = 0
    negative_fraction: float = 0.3
    width: int = 320
    height: int = 640
    name: str = "synthetic"

    def records(self, batch_index: int, batch_size: int) -> Iterator[ImageRecord]:
        world = SyntheticWorld(seed=self.seed, width=self.width, height=self.height)
        for sample in world.batch(batch_index * batch_size, batch_size, self.negative_fraction):
            yield ImageRecord(self.name, sample.sample_id, sample.image_bytes, licence="CC0 (synthetic)",
                              truth=sample)


@dataclass
class FolderSource:
    """A folder dataset (SHHQ-style: image files, optionally beside a ``captions.jsonl`` of
    ``{"file": ..., "caption": ...}``). Files are taken in sorted order, ``batch_size`` per batch."""

    url: str
    licence: str = "see dataset licence"
    name: str = "folder"

    def _files(self) -> list[str]:
        fs, root = fsspec.core.url_to_fs(self.url)
        if not fs.exists(root):
            raise FileNotFoundError(f"folder dataset {self.url!r} does not exist")
        return sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))

    def _captions(self) -> dict[str, str]:
        fs, root = fsspec.core.url_to_fs(self.url)
        path = posixpath.join(root, "captions.jsonl")
        if not fs.exists(path):
            return {}
        with fs.open(path, "rt") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return {r["file"]: r.get("caption", "") for r in rows}

    def records(self, batch_index: int, batch_size: int) -> Iterator[ImageRecord]:
        fs, root = fsspec.core.url_to_fs(self.url)
        captions = self._captions()
        for path in self._files()[batch_index * batch_size:(batch_index + 1) * batch_size]:
            rel = posixpath.relpath(path, root)
            yield ImageRecord(self.name, rel, fs.cat_file(path), url=fs.unstrip_protocol(path),
                              licence=self.licence, alt_text=captions.get(rel, ""))


@dataclass
class IngestResult:
    table: pl.DataFrame
    truth: list[SyntheticSample]
    sourced: int
    duplicates: int
    blobs_created: int


def ingest(records: Iterable[ImageRecord], store: Store, batch: str, known_sha256: set[str],
           progress: Callable[[int], None] | None = None) -> IngestResult:
    """Store records as blobs and rows; skip bytes already in the pool (``known_sha256``) or seen
    earlier in this batch."""
    rows: list[dict] = []
    truth: list[SyntheticSample] = []
    seen = set(known_sha256)
    sourced = duplicates = created = 0
    for rec in records:
        sourced += 1
        sha = sha256_hex(rec.data)
        if sha in seen:
            duplicates += 1
        else:
            seen.add(sha)
            try:
                info, _ = inspect_image(rec.data)
                width, height, phash, error, ext = info.width, info.height, info.phash, None, info.ext
            except ImageDecodeError as exc:
                width = height = 0
                phash, error, ext = None, str(exc), image_format_ext(rec.data)
            put = store.put_blob(rec.data, ext)
            created += put.created
            rows.append({"sha256": sha, "blob_key": put.key, "ext": ext, "source": rec.source,
                         "source_id": rec.source_id, "url": rec.url, "licence": rec.licence,
                         "alt_text": rec.alt_text, "width": width, "height": height, "n_bytes": len(rec.data),
                         "phash": phash, "decode_error": error, "batch": batch})
            if rec.truth is not None:
                truth.append(rec.truth)
        if progress:
            progress(sourced)
    return IngestResult(pl.DataFrame(rows, schema=RAW_SCHEMA), truth, sourced, duplicates, created)
