"""Manifest segments: the manifest rows of the shards one build wrote, in one Parquet file stored by content
(``manifests/<sha256>.parquet``) and shared by every later version that keeps those shards, as the shards
themselves are. A version names the segments it reads in ``segments.parquet``."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from cosmicman.datasets.layout import segments_path
from cosmicman.datasets.samples import MANIFEST_SCHEMA, manifest_frame
from cosmicman.datasets.shards import HashingWriter

SEGMENTS_SCHEMA = {"segment": pl.String, "sha256": pl.String, "n_rows": pl.Int64, "n_bytes": pl.Int64}


@dataclass(frozen=True)
class SegmentRecord:
    """A segment written and stored under its sha256 (``segment`` = ``<sha256>.parquet``)."""

    segment: str
    sha256: str
    n_rows: int
    n_bytes: int
    created: bool  # False: the same bytes were stored already (an earlier attempt at this version)

    def row(self) -> dict[str, Any]:
        return {"segment": self.segment, "sha256": self.sha256, "n_rows": self.n_rows, "n_bytes": self.n_bytes}


class SegmentWriter:
    """Manifest rows written in pieces into ``staged`` (memory holds one piece), hashed as they go, then
    stored under the segments folder by :meth:`store`."""

    def __init__(self, fs, root_path: str, staged: str) -> None:
        self.fs, self.root_path, self.staged = fs, root_path, staged
        self._f = fs.open(staged, "wb")
        self._hw = HashingWriter(self._f)
        self._schema = manifest_frame([]).to_arrow().schema
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._hw, self._schema, compression="zstd")
        self.n_rows = 0

    def write(self, piece: pl.DataFrame) -> None:
        if piece.height and self._writer is not None:
            self._writer.write_table(piece.select(list(MANIFEST_SCHEMA)).to_arrow().cast(self._schema))
            self.n_rows += piece.height

    def store(self) -> SegmentRecord | None:
        """Close the file and move it to ``manifests/<sha256>.parquet`` (kept as it is when those bytes are
        stored already); None, and nothing stored, when no row was written."""
        self.abandon()
        if not self.n_rows:
            self.fs.rm(self.staged)
            return None
        sha, n_bytes = self._hw.sha.hexdigest(), self._hw.n
        name = f"{sha}.parquet"
        target = posixpath.join(segments_path(self.root_path), name)
        created = not self.fs.exists(target)
        if created:
            self.fs.makedirs(segments_path(self.root_path), exist_ok=True)
            self.fs.mv(self.staged, target)
        else:
            self.fs.rm(self.staged)
        return SegmentRecord(name, sha, self.n_rows, n_bytes, created)

    def abandon(self) -> None:
        """Close the file handles (after an error: the staged file stays unreferenced)."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._f.close()
            self._writer = None


def segments_frame(records: list[SegmentRecord]) -> pl.DataFrame:
    return pl.DataFrame([r.row() for r in records], schema=SEGMENTS_SCHEMA)
