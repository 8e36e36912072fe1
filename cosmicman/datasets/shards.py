"""WebDataset shards of a version: writing them (byte-identical for the same samples), reading their samples
back, and verifying them against ``shards.parquet`` and the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, cast

import numpy as np
import polars as pl

from cosmicman.core.imageio import sha256_hex
from cosmicman.datasets.layout import (
    DATACARD,
    MANIFEST,
    SHARD_PATTERN,
    SHARDS,
    STATS,
    SUCCESS,
    read_manifest,
    read_shards_table,
    store_fs,
    version_path,
)
from cosmicman.datasets.samples import (
    PROVENANCE_COLUMNS,
    DatasetSample,
    caption_record,
    decode_mask_png,
    encode_mask_png,
    oriented_size,
)

TAR_MTIME = 0  # fixed member mtime: the same samples give byte-identical shards


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


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    fs, tmp: str, samples: Iterable[DatasetSample], samples_per_shard: int, max_shard_bytes: int | None, tokenizer
) -> tuple[list[dict], list[dict], Counter]:
    rows: list[dict] = []
    shard_rows: list[dict] = []
    coverage: Counter = Counter()
    seen: set[str] = set()
    state: dict[str, Any] = {"f": None, "tar": None, "hw": None, "name": None, "n": 0}

    def close_shard() -> None:
        if state["tar"] is None:
            return
        state["tar"].close()
        state["f"].close()
        digest = state["hw"].sha.hexdigest()
        shard_rows.append({"shard": state["name"], "n_samples": state["n"], "n_bytes": state["hw"].n, "sha256": digest})
        for r in rows[state["first_row"] :]:
            r["shard_sha256"] = digest
        state.update(f=None, tar=None, hw=None, name=None, n=0)

    def open_shard() -> None:
        name = SHARD_PATTERN.format(len(shard_rows))
        f = fs.open(posixpath.join(tmp, name), "wb")
        hw = HashingWriter(f)
        # open across samples, closed by close_shard(); a stream-mode tar only writes to its file object
        tar = tarfile.open(fileobj=cast(IO[bytes], hw), mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        state.update(f=f, hw=hw, name=name, n=0, first_row=len(rows), tar=tar)

    try:
        for s in samples:
            sha = s.sha256.lower()
            if sha256_hex(s.image_bytes) != sha:
                raise ValueError(f"sample {sha}: sha256 does not match its image bytes")
            if sha in seen:
                raise ValueError(f"duplicate sample {sha}")
            seen.add(sha)
            ext = {"jpeg": "jpg"}.get(s.ext.lower().lstrip("."), s.ext.lower().lstrip("."))
            if not ext or "." in ext or ext in ("json", "txt"):
                raise ValueError(f"sample {sha}: bad image extension {s.ext!r}")
            width, height = oriented_size(s.image_bytes)
            mask = np.asarray(s.mask)
            if mask.shape != (height, width):
                raise ValueError(f"sample {sha}: mask shape {mask.shape} != image (h, w) {(height, width)}")
            mask_png = encode_mask_png(mask)
            cap = caption_record(s.caption)
            prov = dict(s.provenance)
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
                "attributes": dict(s.attributes),
                **{k: prov.get(k) for k in PROVENANCE_COLUMNS},
                "provenance": prov,
            }
            if state["tar"] is not None and (
                state["n"] >= samples_per_shard or (max_shard_bytes is not None and state["hw"].n >= max_shard_bytes)
            ):
                close_shard()
            if state["tar"] is None:
                open_shard()
            tar = state["tar"]
            add_member(tar, f"{sha}.{ext}", s.image_bytes)
            add_member(tar, f"{sha}.mask.png", mask_png)
            add_member(tar, f"{sha}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
            add_member(tar, f"{sha}.txt", cap["caption"].encode())
            state["n"] += 1
            coverage.update(s.attributes.keys())
            text = cap["caption"]
            rows.append(
                {
                    "sha256": sha,
                    "shard": state["name"],
                    "shard_sha256": None,
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
                    "n_attributes": len(s.attributes),
                    "caption_words": len(text.split()),
                    "caption_tokens": len(tokenizer(text).input_ids) - 2 if text else 0,
                }
            )
        close_shard()
    finally:
        if state["tar"] is not None:  # an error mid-shard: close handles; the tmp folder is removed
            try:
                state["tar"].close()
            finally:
                state["f"].close()
    return rows, shard_rows, coverage


def iter_samples(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Decode the shards through fsspec: dicts with ``sha256, ext, image_bytes, mask, meta, caption``."""
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    for name in read_shards_table(root, version, storage_options)["shard"].to_list():
        with fs.open(posixpath.join(vpath, name), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
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
    mask = decode_mask_png(parts.pop("mask.png"))
    txt = parts.pop("txt", b"").decode()
    sha = parts.pop("sha256")
    ((ext, image),) = parts.items()
    return {"sha256": sha, "ext": ext, "image_bytes": image, "mask": mask, "meta": meta, "caption": txt}


def verify_shards(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Problems found re-reading a version: missing marker/files, shard sha256 or sample keys that differ
    from ``shards.parquet`` / the manifest, shard files not listed. Empty when the version is intact."""
    fs, path = store_fs(root, storage_options)
    vpath = version_path(path, version)
    if not fs.exists(posixpath.join(vpath, SUCCESS)):
        return [f"{version}: not published ({SUCCESS} missing)"]
    problems: list[str] = []
    for name in (MANIFEST, SHARDS, STATS, DATACARD):
        if not fs.exists(posixpath.join(vpath, name)):
            problems.append(f"{name}: missing")
    if problems:
        return problems
    manifest = read_manifest(root, version, storage_options)
    shards = read_shards_table(root, version, storage_options)
    listed = set(shards["shard"].to_list())
    present = {posixpath.basename(p) for p in fs.glob(posixpath.join(vpath, "shard-*.tar"))}
    for extra in sorted(present - listed):
        problems.append(f"{extra}: shard file not listed in {SHARDS}")
    if set(manifest["shard"].unique().to_list()) - listed:
        problems.append(f"{MANIFEST}: names shards missing from {SHARDS}")
    for row in shards.iter_rows(named=True):
        name = row["shard"]
        if name not in present:
            problems.append(f"{name}: missing")
            continue
        rows = manifest.filter(pl.col("shard") == name)
        if set(rows["shard_sha256"].to_list()) != {row["sha256"]}:
            problems.append(f"{name}: manifest shard_sha256 differs from {SHARDS}")
        sha, n_bytes, keys, err = scan_shard(fs, posixpath.join(vpath, name))
        if sha != row["sha256"]:
            problems.append(f"{name}: sha256 {sha} != recorded {row['sha256']}")
        if n_bytes != row["n_bytes"]:
            problems.append(f"{name}: {n_bytes} bytes != recorded {row['n_bytes']}")
        if err:
            problems.append(f"{name}: unreadable tar ({err})")
        elif keys != set(rows["sha256"].to_list()) or len(keys) != row["n_samples"]:
            problems.append(f"{name}: sample keys differ from the manifest")
    return problems


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
            with tarfile.open(fileobj=cast(IO[bytes], hr), mode="r|") as tar:  # a stream-mode tar only reads
                for m in tar:
                    keys.add(posixpath.basename(m.name).partition(".")[0])
        except (tarfile.TarError, EOFError, OSError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        hr.drain()
    return hr.sha.hexdigest(), hr.n, keys, err
