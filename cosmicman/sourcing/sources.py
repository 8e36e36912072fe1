"""Image sources: what each one offers to a sourcing batch, before any byte is fetched.

A source plans a batch as a list of :class:`SourceItem` (URL plus the metadata kept on the pool row);
:mod:`cosmicman.sourcing.ingest` fetches, checks, de-duplicates and stores them. Sources here: folder
datasets (plain, SHHQ, DeepFashion-MultiModal) and LAION-style parquet url lists; the web APIs (Flickr,
Unsplash, Pixabay) are in :mod:`cosmicman.sourcing.web_apis`.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import fsspec
import polars as pl
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.keys import folder_listing_key, folder_skipped_key
from cosmicman.core.store import Store
from cosmicman.sourcing.folder_walk import FolderLayout, RefusedRead, WalkEntry, read_inside_root, walk_folder


@dataclass(frozen=True)
class SourceItem:
    """One image a source offers to a batch, before its bytes are fetched.

    ``url`` is an http(s) URL for web sources, or whatever a source that reads its own items
    (:class:`ItemReader`) understands: an fsspec URL for datasets on disk, for instance. Every field but
    the bytes is kept on the image's pool row, so licence, author and page URL survive to the dataset's
    manifest.
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


class ImageSource(Protocol):
    """Offers the items of one sourcing batch. ``plan`` must be deterministic per batch: a batch re-run
    after a crash reuses its stored plan, and batch ``b + 1`` continues where ``b`` ended."""

    name: str

    def plan(self, batch_index: int, size: int, store: Store) -> list[SourceItem]: ...


@runtime_checkable
class ItemReader(Protocol):
    """A source that produces its items' bytes itself (files, renders) instead of having them downloaded.

    Items with an http(s) URL are downloaded all the same (the fetcher's retries and per-host limits).
    ``read`` raises ``FileNotFoundError`` for a missing item, ``RefusedRead`` (with its reason code) for
    one it will not read, and ``OSError`` / ``ValueError`` for an unreadable one; ingest records them as
    failures."""

    def read(self, item: SourceItem) -> bytes: ...


@runtime_checkable
class StoredItemsRecorder(Protocol):
    """A source that keeps records of its own beside the pool for the items a batch stored.

    Ingest calls ``record_stored`` once as the batch finishes, with each stored item and the sha256 of
    its pool image; a batch killed while finishing calls it again, so it must be idempotent."""

    def record_stored(self, batch: str, stored: list[tuple[SourceItem, str]], store: Store) -> None: ...


LAYOUTS = {
    "plain": FolderLayout("", ("captions.jsonl",)),
    "shhq": FolderLayout("no_segment", ()),  # segments/ holds parsing maps, not photos
    "deepfashion_mm": FolderLayout("images", ("captions.json", "textual_descriptions.json")),
}
# Bumped when the walk's rules change: a listing made under other rules is taken again.
FOLDER_WALK_VERSION = 2
SKIPPED_SCHEMA = {"path": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8}


@dataclass
class FolderSource:
    """A dataset on disk or in a bucket (any fsspec URL), in one of three layouts:

    - ``plain``: image files anywhere under the root, optionally beside a ``captions.jsonl`` of
      ``{"file": <relative path>, "caption": ...}``;
    - ``shhq``: SHHQ-1.0 (images in ``no_segment/``; ``segments/`` holds parsing maps, not photos);
    - ``deepfashion_mm``: DeepFashion-MultiModal (images in ``images/``; captions from ``captions.json``
      or ``textual_descriptions.json``, a ``{file name: text}`` object).

    The root is walked once per dataset (:mod:`cosmicman.sourcing.folder_walk`: no link followed out of
    it) and the listing kept in the store, so each batch is a slice of it rather than a fresh listing of
    tens of thousands of objects. Every entry under the root is accounted for: listed, or skipped with a
    reason code and a short description in the listing's skipped table (never the file's content).
    """

    url: str
    layout: str = "plain"
    licence: str = "see dataset licence"
    name: str = "folder"
    _accounting: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown folder layout {self.layout!r}; expected one of {tuple(LAYOUTS)}")

    def _fs(self):
        fs, root = fsspec.core.url_to_fs(self.url)
        if not fs.exists(root):
            raise FileNotFoundError(f"folder dataset {self.url!r} does not exist")
        return fs, root.rstrip("/")

    def _digest(self) -> str:
        return sha256_hex(f"{self.url}|{self.layout}|walk-v{FOLDER_WALK_VERSION}".encode())[:16]

    def files(self, store: Store | None = None) -> list[str]:
        """Image paths relative to the root, sorted; cached in ``store`` after the first listing."""
        files, self._accounting = self._listing(store)
        return files

    def accounting(self, store: Store | None = None) -> dict[str, int]:
        """Entries under the root: ``listed`` (offered to batches) and each skip reason's count; they add
        up to every non-directory entry the walk met. The skipped entries themselves are in the table at
        :meth:`skipped_table_key`."""
        if self._accounting is None:
            self._accounting = self._listing(store)[1]
        return dict(self._accounting)

    def _listing(self, store: Store | None) -> tuple[list[str], dict[str, int]]:
        key = folder_listing_key(self._digest())
        if store is not None and store.exists(key):
            listing = store.read_json(key)
            return listing["files"], {"listed": len(listing["files"]), **listing["skipped_by_reason"]}
        fs, root = self._fs()
        image_dir = LAYOUTS[self.layout].image_dir
        if image_dir and not fs.exists(f"{root}/{image_dir}"):
            raise FileNotFoundError(f"{self.url!r} is not in the {self.layout} layout: {image_dir}/ is missing")
        files: list[str] = []
        skipped: list[WalkEntry] = []
        for entry in walk_folder(fs, root, LAYOUTS[self.layout]):
            if entry.reason is None:
                files.append(entry.path)
            else:
                skipped.append(entry)
        files.sort()
        counts = dict(sorted(Counter(e.reason for e in skipped if e.reason is not None).items()))
        if store is not None:
            rows = [{"path": e.path, "reason": e.reason, "detail": e.detail} for e in skipped]
            store.write_table(folder_skipped_key(self._digest()), pl.DataFrame(rows, schema=SKIPPED_SCHEMA))
            # the listing last: it is what marks the walk done
            store.write_json(key, {"url": self.url, "layout": self.layout, "files": files, "skipped_by_reason": counts})
        return files, {"listed": len(files), **counts}

    def skipped_table_key(self) -> str:
        return folder_skipped_key(self._digest())

    def captions(self) -> dict[str, str]:
        fs, root = self._fs()
        for name in LAYOUTS[self.layout].caption_files:
            path = f"{root}/{name}"
            if not fs.exists(path):
                continue
            text = self._read(fs, root, path, f"captions file {name!r}").decode("utf-8")
            if self.layout == "plain":
                return {r["file"]: r.get("caption", "") for r in map(json.loads, filter(str.strip, text.splitlines()))}
            return {f"images/{k}": v for k, v in json.loads(text).items()}
        return {}

    def _read(self, fs, root: str, path: str, what: str) -> bytes:
        if not isinstance(fs, LocalFileSystem):
            return fs.cat_file(path)
        try:
            return read_inside_root(path, root)
        except RefusedRead as exc:
            raise RefusedRead(exc.reason, f"{what} of {self.url!r}: {exc.detail}") from exc

    def read(self, item: SourceItem) -> bytes:
        """The item's bytes; a local item whose path now resolves out of the root (a file swapped for a
        link since the listing) raises ``RefusedRead`` with its reason, and nothing is read."""
        fs, path = fsspec.core.url_to_fs(item.url)
        root = fsspec.core.url_to_fs(self.url)[1].rstrip("/")
        return self._read(fs, root, path, f"item {item.source_id!r}")

    def plan(self, batch_index: int, size: int, store: Store | None = None) -> list[SourceItem]:
        fs, root = self._fs()
        captions = self.captions()
        return [
            SourceItem(
                self.name,
                rel,
                fs.unstrip_protocol(f"{root}/{rel}"),
                licence=self.licence,
                alt_text=captions.get(rel, ""),
            )
            for rel in self.files(store)[batch_index * size : (batch_index + 1) * size]
        ]


# Column names of LAION-style parquet files, first match wins (LAION-400M/5B use upper case).
PARQUET_COLUMNS = {
    "url": ("url", "URL"),
    "caption": ("caption", "TEXT", "text", "alt", "alt_text"),
    "width": ("width", "WIDTH"),
    "height": ("height", "HEIGHT"),
    "licence": ("license", "LICENSE", "licence"),
}


@dataclass
class ParquetSource:
    """LAION-style url lists: one parquet file or a folder of them (local, ``file://`` or ``s3://``).

    Batch ``b`` takes rows [b*size, (b+1)*size) of the files in sorted order. Only the row groups that
    overlap the batch are read, and only the needed columns, so a batch of a billion-row list costs
    the batch, not the list.
    """

    url: str
    name: str = "laion"
    default_licence: str = "unknown (LAION-style list; check each page)"
    storage_options: dict = field(default_factory=dict)

    def _files(self) -> tuple[Any, list[str]]:
        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        if not fs.exists(root):
            raise FileNotFoundError(f"parquet url list {self.url!r} does not exist")
        if fs.isdir(root):
            return fs, sorted(p for p in fs.find(root) if p.endswith(".parquet"))
        return fs, [root]

    def plan(self, batch_index: int, size: int, store: Store | None = None) -> list[SourceItem]:
        fs, files = self._files()
        start, stop = batch_index * size, (batch_index + 1) * size
        items: list[SourceItem] = []
        offset = 0  # global row number of the current file's first row
        for path in files:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                n = pf.metadata.num_rows
                if offset + n > start and offset < stop:
                    items += self._rows(pf, path, offset, max(start, offset), min(stop, offset + n))
            offset += n
            if offset >= stop:
                break
        return items

    def _rows(self, pf: pq.ParquetFile, path: str, offset: int, start: int, stop: int) -> list[SourceItem]:
        names = set(pf.schema_arrow.names)
        cols = {k: next((c for c in cands if c in names), None) for k, cands in PARQUET_COLUMNS.items()}
        if cols["url"] is None:
            raise ValueError(
                f"{path!r} has no url column (looked for {PARQUET_COLUMNS['url']}); columns: {sorted(names)}"
            )
        groups: list[int] = []
        first, row0 = 0, 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + row0 + n > start and offset + row0 < stop:
                if not groups:
                    first = row0
                groups.append(g)
            row0 += n
        table = pf.read_row_groups(groups, columns=[c for c in cols.values() if c])
        lo = start - offset - first
        table = table.slice(lo, stop - start)
        data = {k: table.column(c).to_pylist() if c else [None] * table.num_rows for k, c in cols.items()}
        base = posixpath.basename(path)
        return [
            SourceItem(
                self.name,
                f"{base}:{start - offset + i}",
                url or "",
                alt_text=data["caption"][i] or "",
                licence=data["licence"][i] or self.default_licence,
                width=int_or_none(data["width"][i]),
                height=int_or_none(data["height"][i]),
            )
            for i, url in enumerate(data["url"])
        ]


def int_or_none(v: Any) -> int | None:
    """A stated size as an int; None when missing or not a number (web data has both)."""
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None
