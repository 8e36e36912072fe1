"""The object store: every artifact of the flywheel addressed by key under one fsspec root URL.

Local paths, ``file://``, ``memory://`` (tests) and ``s3://`` (production, through s3fs) behave alike.
Writes are atomic: on filesystems with rename, bytes go to a hidden temporary key and are renamed
into place; object stores publish an object only when its upload completes. A crashed step therefore
never leaves a half-written table or blob visible, and re-running a step overwrites with equal bytes.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import polars as pl

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.keys import blob_key


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is the local disk (renames are atomic, folders must exist)."""
    protos = _protocols(fs)
    return "file" in protos or "local" in protos


@dataclass(frozen=True)
class PutResult:
    key: str
    sha256: str
    created: bool


class ExclusiveCreateUnsupported(RuntimeError):
    """The store's filesystem cannot create a key only when it is absent (what a pool-wide lock needs)."""


# memory:// lives in one process, so a lock of that process makes its check-then-write one step
_MEMORY_CREATE = threading.Lock()


def _protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


class Store:
    def __init__(self, url: str, **storage_options: Any) -> None:
        # other processes write the same store; s3fs would answer a read or an exists from a listing this process
        # cached earlier and miss their keys (a sensor's long-lived code server failed on a table just written)
        fs, root = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **storage_options})
        self.url = url
        self.storage_options = storage_options
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        self._renames = is_local(fs)

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def uri(self, key: str) -> str:
        """A URL another process can open with fsspec."""
        return self.fs.unstrip_protocol(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        if self._renames:  # local disk: a plain read, a fifth of fsspec's cost per call (a version reads two a row)
            with open(self.path(key), "rb") as f:
                return f.read()
        return self.fs.cat_file(self.path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if not self._renames:
            self.fs.pipe_file(target, data)
            return
        tmp = posixpath.join(posixpath.dirname(target), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(target)}")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, target)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if no key of that name exists, atomically against every other writer: True when this
        call created it, False when it existed. Local disk: a hard link of a written temporary file (fails on an
        existing name); S3: a PUT with ``If-None-Match: *``; memory://: under a lock of this process. Any other
        filesystem raises ExclusiveCreateUnsupported."""
        target = self.path(key)
        protos = _protocols(self.fs)
        if self._renames:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = os.path.join(os.path.dirname(target), f".tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
            return True
        if "s3" in protos or "s3a" in protos:
            try:
                self.fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                return False
            return True
        if "memory" in protos:
            with _MEMORY_CREATE:
                if self.fs.exists(target):
                    return False
                self.fs.pipe_file(target, data)
            return True
        raise ExclusiveCreateUnsupported(
            f"store {self.url!r} ({'/'.join(protos)}) cannot create a key exclusively; sourcing batches need it to"
            " take the pool's lock: use local disk, s3:// or memory://"
        )

    def put_blob(self, data: bytes, ext: str, sha256: str | None = None) -> PutResult:
        """Content-addressed: the same bytes are stored once, whatever their source. ``sha256``: the
        caller's hash of ``data``, when it has one (hashing is most of the cost of a small blob)."""
        sha = sha256 or sha256_hex(data)
        key = blob_key(sha, ext)
        if self.exists(key):
            return PutResult(key, sha, False)
        self.write_bytes(key, data)
        return PutResult(key, sha, True)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_table(self, key: str, df: pl.DataFrame) -> None:
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd")
        self.write_bytes(key, buf.getvalue())

    def read_table(self, key: str, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(key)), columns=columns)

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive, sorted), temporary keys excluded."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        root_len = len(self.root) + 1
        keys = [p[root_len:] if p.startswith(self.root + "/") else p for p in self.fs.find(base)]
        return sorted(k for k in keys if not posixpath.basename(k).startswith(".tmp-"))

    def iter_tables(self, prefix: str) -> Iterator[tuple[str, pl.DataFrame]]:
        for key in self.list(prefix):
            if key.endswith(".parquet"):
                yield key, self.read_table(key)

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm(self.path(key), recursive=True)
