"""Immutable CosmicMan-HQ dataset versions, written and read through fsspec (local, memory://, s3://).

Layout of ``<root>/datasets/cosmicman-hq/<version>/``::

    shard-000000.tar ...  WebDataset shards; per sample (``__key__`` = image sha256):
                            <sha>.jpg|png|...  the original image bytes
                            <sha>.mask.png     the ATR label map, 8-bit grey PNG (values 0..17)
                            <sha>.json         sha256, caption, groups (name/text/labels/foreground/span),
                                               dropped, attributes, provenance fields, width, height
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

import hashlib
import io
import json
import posixpath
import re
import tarfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import polars as pl
from PIL import Image

from cosmicman.core.imageio import sha256_hex

DATASET_NAME = "cosmicman-hq"
DATASETS_PREFIX = f"datasets/{DATASET_NAME}"
SUCCESS = "_SUCCESS"
MANIFEST = "manifest.parquet"
SHARDS = "shards.parquet"
STATS = "stats.json"
DATACARD = "DATACARD.md"
SHARD_PATTERN = "shard-{:06d}.tar"
VERSION_RE = re.compile(r"^v(\d{4,})$")
N_ATR_LABELS = 18
TAR_MTIME = 0  # fixed member mtime: the same samples give byte-identical shards
PROVENANCE_COLUMNS: dict[str, pl.DataType] = {
    "source": pl.String, "source_id": pl.String, "source_batch": pl.String, "licence": pl.String,
    "filter_decision": pl.String, "parser_version": pl.String, "annotator_round": pl.Int64,
}


class VersionExistsError(FileExistsError):
    """The dataset version is already published; versions are immutable."""


class VersionNotFoundError(FileNotFoundError):
    """No published version (``_SUCCESS`` missing) at that name."""


@dataclass
class DatasetSample:
    sha256: str
    image_bytes: bytes
    ext: str
    mask: np.ndarray  # uint8 HxW ATR label map at the image's (EXIF-oriented) size
    attributes: dict[str, str]
    caption: Any  # a captions.Caption or its to_json() dict {"caption", "groups", "dropped", ...}
    provenance: dict[str, Any] = field(default_factory=dict)  # source, source_batch, filter_decision, ...


@dataclass(frozen=True)
class VersionInfo:
    version: str
    url: str
    n_samples: int
    shards: tuple[str, ...]
    stats: dict[str, Any]


# ------------------------------------------------------------------------------------------- paths
def _fs(root: str, storage_options: Mapping[str, Any] | None = None):
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs, path.rstrip("/")


def version_path(root_path: str, version: str) -> str:
    return posixpath.join(root_path, DATASETS_PREFIX, version)


def version_url(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> str:
    fs, path = _fs(root, storage_options)
    return fs.unstrip_protocol(version_path(path, version))


def _check_version_name(version: str) -> None:
    if not version or "/" in version or version.startswith((".", "_")) or version != version.strip():
        raise ValueError(f"invalid dataset version name {version!r}")


def next_version_name(existing: Iterable[str]) -> str:
    """The version after the highest ``vNNNN`` in ``existing`` ("v0001" when there is none)."""
    numbers = [int(m.group(1)) for v in existing if (m := VERSION_RE.match(posixpath.basename(str(v).rstrip("/"))))]
    return f"v{max(numbers, default=0) + 1:04d}"


def list_versions(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Published versions (those with ``_SUCCESS``), sorted by name."""
    fs, path = _fs(root, storage_options)
    base = posixpath.join(path, DATASETS_PREFIX)
    fs.invalidate_cache(base)  # fsspec instances are shared and cache listings (s3fs)
    if not fs.exists(base):
        return []
    out = []
    for entry in fs.ls(base, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] == "directory" and not name.startswith((".", "_")) \
                and fs.exists(posixpath.join(base, name, SUCCESS)):
            out.append(name)
    return sorted(out)


def version_exists(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = _fs(root, storage_options)
    fs.invalidate_cache(version_path(path, version))
    return fs.exists(posixpath.join(version_path(path, version), SUCCESS))


# ------------------------------------------------------------------------------------------- helpers
class _HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _oriented_size(image_bytes: bytes) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF: keep the stored size
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def encode_mask_png(mask: np.ndarray) -> bytes:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_ATR_LABELS):
        raise ValueError(f"label map values must be in 0..{N_ATR_LABELS - 1}")
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"label map PNG has mode {img.mode}, expected L")
        return np.array(img, dtype=np.uint8)


def _caption_dict(caption: Any) -> dict[str, Any]:
    d = caption.to_json() if hasattr(caption, "to_json") else dict(caption)
    if "caption" not in d and "text" in d:
        d = {**d, "caption": d["text"]}
        d.pop("text")
    d.setdefault("groups", [])
    d.setdefault("dropped", [])
    return d


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------- writer
def write_dataset_version(root: str, version: str, samples: Iterable[DatasetSample], *,
                          samples_per_shard: int = 1000, max_shard_bytes: int | None = None,
                          protocol=None, tokenizer=None, datacard: Mapping[str, Any] | None = None,
                          created_at: str | None = None, allow_empty: bool = False,
                          storage_options: Mapping[str, Any] | None = None) -> VersionInfo:
    """Write and publish ``<root>/datasets/cosmicman-hq/<version>/``; refuse an existing version.

    ``samples`` is streamed (one shard in flight). ``datacard`` may carry ``description``, ``filters``
    (the filter configuration used), ``licence_note`` and ``sources`` (source -> description).
    A version without samples is refused (``ValueError``) unless ``allow_empty``.
    """
    _check_version_name(version)
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    fs, root_path = _fs(root, storage_options)
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

    tmp = posixpath.join(root_path, DATASETS_PREFIX, ".tmp", f"{version}.{uuid.uuid4().hex}")
    fs.makedirs(tmp, exist_ok=True)
    try:
        rows, shard_rows, coverage = _write_shards(fs, tmp, samples, samples_per_shard, max_shard_bytes,
                                                   tokenizer)
        if not rows and not allow_empty:
            raise ValueError(f"dataset version {version!r} would have no samples")
        manifest = _manifest_frame(rows)
        shards = pl.DataFrame(shard_rows, schema={"shard": pl.String, "n_samples": pl.Int64,
                                                  "n_bytes": pl.Int64, "sha256": pl.String})
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
    return VersionInfo(version, fs.unstrip_protocol(final), int(manifest.height),
                       tuple(shards["shard"].to_list()), stats)


def _write_shards(fs, tmp: str, samples: Iterable[DatasetSample], samples_per_shard: int,
                  max_shard_bytes: int | None, tokenizer) -> tuple[list[dict], list[dict], Counter]:
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
        shard_rows.append({"shard": state["name"], "n_samples": state["n"], "n_bytes": state["hw"].n,
                           "sha256": digest})
        for r in rows[state["first_row"]:]:
            r["shard_sha256"] = digest
        state.update(f=None, tar=None, hw=None, name=None, n=0)

    def open_shard() -> None:
        name = SHARD_PATTERN.format(len(shard_rows))
        f = fs.open(posixpath.join(tmp, name), "wb")
        hw = _HashingWriter(f)
        state.update(f=f, hw=hw, name=name, n=0, first_row=len(rows), tar=tarfile.open(fileobj=hw, mode="w|", format=tarfile.USTAR_FORMAT))

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
            width, height = _oriented_size(s.image_bytes)
            mask = np.asarray(s.mask)
            if mask.shape != (height, width):
                raise ValueError(f"sample {sha}: mask shape {mask.shape} != image (h, w) {(height, width)}")
            mask_png = encode_mask_png(mask)
            cap = _caption_dict(s.caption)
            prov = dict(s.provenance)
            meta = {"sha256": sha, "ext": ext, "width": width, "height": height,
                    "caption": cap["caption"], "groups": cap["groups"], "dropped": list(cap["dropped"]),
                    "truncated": list(cap.get("truncated", [])), "attributes": dict(s.attributes),
                    **{k: prov.get(k) for k in PROVENANCE_COLUMNS}, "provenance": prov}
            if state["tar"] is not None and (state["n"] >= samples_per_shard or (
                    max_shard_bytes is not None and state["hw"].n >= max_shard_bytes)):
                close_shard()
            if state["tar"] is None:
                open_shard()
            tar = state["tar"]
            _add_member(tar, f"{sha}.{ext}", s.image_bytes)
            _add_member(tar, f"{sha}.mask.png", mask_png)
            _add_member(tar, f"{sha}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
            _add_member(tar, f"{sha}.txt", cap["caption"].encode())
            state["n"] += 1
            coverage.update(s.attributes.keys())
            text = cap["caption"]
            rows.append({
                "sha256": sha, "shard": state["name"], "shard_sha256": None, "ext": ext,
                "width": width, "height": height, **{k: prov.get(k) for k in PROVENANCE_COLUMNS},
                "provenance_json": json.dumps(prov, sort_keys=True, default=str),
                "caption": text, "n_groups": len(cap["groups"]),
                "n_spans": sum(g.get("span") is not None for g in cap["groups"]),
                "groups": [g["name"] for g in cap["groups"]], "dropped_groups": list(cap["dropped"]),
                "n_attributes": len(s.attributes), "caption_words": len(text.split()),
                "caption_tokens": len(tokenizer(text).input_ids) - 2 if text else 0,
            })
        close_shard()
    finally:
        if state["tar"] is not None:  # an error mid-shard: close handles; the tmp folder is removed
            try:
                state["tar"].close()
            finally:
                state["f"].close()
    return rows, shard_rows, coverage


def _manifest_frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"sha256": pl.String, "shard": pl.String, "shard_sha256": pl.String, "ext": pl.String,
              "width": pl.Int64, "height": pl.Int64, **PROVENANCE_COLUMNS, "provenance_json": pl.String,
              "caption": pl.String, "n_groups": pl.Int64, "n_spans": pl.Int64, "groups": pl.List(pl.String),
              "dropped_groups": pl.List(pl.String), "n_attributes": pl.Int64, "caption_words": pl.Int64,
              "caption_tokens": pl.Int64}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


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
    marker = json.dumps({"version": version, "n_samples": stats["n_images"],
                         "created_at": stats.get("created_at")}).encode()
    try:
        f = fs.open(success, "xb")
    except (ValueError, NotImplementedError, TypeError):  # no exclusive create on this filesystem
        f = fs.open(success, "wb")
    except FileExistsError as exc:
        raise VersionExistsError(f"dataset version {version!r} was published meanwhile") from exc
    with f:
        f.write(marker)


# ------------------------------------------------------------------------------------------- stats
def _num(x: Any, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def compute_stats(manifest: pl.DataFrame, coverage: Mapping[str, int], protocol,
                  shards: pl.DataFrame | None = None) -> dict[str, Any]:
    """Table-1 style statistics of a version, from its manifest and per-category answer counts."""
    n = manifest.height
    cats = [c.name for c in protocol.categories]
    cov = {c: int(coverage.get(c, 0)) for c in cats}
    group_names = [g.name for g in protocol.groups]
    group_counts = Counter(g for gs in manifest["groups"].to_list() for g in gs) if n else Counter()
    dropped_counts = Counter(g for gs in manifest["dropped_groups"].to_list() for g in gs) if n else Counter()

    def counts(col: str) -> dict[str, int]:
        if not n:
            return {}
        vc = manifest.group_by(col).len().sort(col, nulls_last=True)
        return {("null" if k is None else str(k)): int(v) for k, v in zip(vc[col].to_list(), vc["len"].to_list())}

    def col_stat(col: str, fn: str) -> float | None:
        return _num(getattr(manifest[col], fn)()) if n else None

    stats = {
        "n_images": n,
        "mean_width": col_stat("width", "mean"), "mean_height": col_stat("height", "mean"),
        "median_width": col_stat("width", "median"), "median_height": col_stat("height", "median"),
        "mean_resolution": (f"{manifest['height'].mean():.0f}x{manifest['width'].mean():.0f}" if n else None),
        "resolution_note": "mean_resolution is height x width in pixels after EXIF orientation",
        "n_categories": len(cats),
        "n_categories_covered": sum(v > 0 for v in cov.values()),
        "n_attributes": int(manifest["n_attributes"].sum()) if n else 0,
        "mean_attributes_per_image": col_stat("n_attributes", "mean"),
        "median_attributes_per_image": col_stat("n_attributes", "median"),
        "mean_caption_words": col_stat("caption_words", "mean"),
        "mean_caption_tokens": col_stat("caption_tokens", "mean"),
        "max_caption_tokens": int(manifest["caption_tokens"].max()) if n else None,
        "caption_tokens_note": "CLIP BPE tokens without BOS/EOS",
        "mean_groups_per_caption": col_stat("n_groups", "mean"),
        "span_coverage": (_num(manifest["n_spans"].sum() / max(1, manifest["n_groups"].sum()))
                          if n else None),
        "category_coverage": {c: {"count": v, "fraction": _num(v / n) if n else 0.0} for c, v in cov.items()},
        "group_frequency": {g: _num(group_counts.get(g, 0) / n) if n else 0.0 for g in group_names},
        "group_dropped_frequency": {g: _num(dropped_counts.get(g, 0) / n) if n else 0.0 for g in group_names},
        "sources": counts("source"),
        "source_batches": counts("source_batch"),
        "filter_decisions": counts("filter_decision"),
        "annotator_rounds": counts("annotator_round"),
        "parser_versions": counts("parser_version"),
        "licences": counts("licence"),
        "annotations": {"text": True, "human_parsing": True, "attributes": True, "bbox": False,
                        "keypoints": False},
    }
    if shards is not None:
        stats["n_shards"] = shards.height
        stats["n_bytes"] = int(shards["n_bytes"].sum()) if shards.height else 0
    return stats


def render_datacard(version: str, stats: Mapping[str, Any], manifest: pl.DataFrame,
                    extra: Mapping[str, Any]) -> str:
    def table(d: Mapping[str, Any], head: tuple[str, str]) -> list[str]:
        lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in d.items()] or ["| (none) | |"]
        return lines

    sources_desc = extra.get("sources", {})
    src = {k: f"{v}" + (f" — {sources_desc[k]}" if k in sources_desc else "") for k, v in stats["sources"].items()}
    out = [
        f"# CosmicMan-HQ {version}",
        "",
        extra.get("description", "A human-centric text-to-image dataset produced by the CosmicMan Prime "
                                 "data flywheel (Annotate Anyone): single-person images that passed the "
                                 "filters, ATR human-parsing maps, protocol attributes and grouped captions "
                                 "(Daring data discretization) with token spans for HOLA."),
        "",
        f"Created {stats.get('created_at')}. Immutable: a new dataset is a new version.",
        "",
        "## Contents",
        "",
        f"- images: {stats['n_images']} in {stats.get('n_shards', '?')} WebDataset shards "
        f"({stats.get('n_bytes', '?')} bytes)",
        f"- mean resolution (h x w): {stats['mean_resolution']}; median {stats['median_height']} x "
        f"{stats['median_width']}",
        f"- categories: {stats['n_categories_covered']} of {stats['n_categories']} answered at least once; "
        f"{stats['n_attributes']} attributes, {stats['mean_attributes_per_image']} per image",
        f"- captions: {stats['mean_caption_words']} words / {stats['mean_caption_tokens']} CLIP tokens on "
        f"average, {stats['mean_groups_per_caption']} groups; spans found for {stats['span_coverage']} of groups",
        "",
        "Each sample (`__key__` = image sha256): the original image (`jpg`/`png`/...), `mask.png` (ATR "
        "label map, grey PNG, 0 = background .. 17 = scarf), `json` (caption, groups with end-exclusive "
        "token spans in the padded 77-id CLIP prompt, dropped groups, attributes, provenance) and `txt` "
        "(the caption). `manifest.parquet` lists every sample with its shard and provenance, "
        "`shards.parquet` the sha256 of every shard, `stats.json` the figures above.",
        "",
        "## Sources",
        "",
        *table(src, ("source", "images")),
        "",
        "## Filtering",
        "",
        *table(stats["filter_decisions"], ("decision", "images")),
        "",
    ]
    if extra.get("filters"):
        out += ["Filter configuration:", "", "```json", json.dumps(extra["filters"], indent=2, sort_keys=True,
                                                                    default=str), "```", ""]
    out += [
        "## Annotation",
        "",
        *table(stats["annotator_rounds"], ("annotator round", "images")),
        "",
        *table(stats["parser_versions"], ("parser version", "images")),
        "",
        "## Licence",
        "",
        extra.get("licence_note", "Images keep the licences of their sources (below); this dataset adds "
                                  "annotations only. Check each source's terms before redistribution."),
        "",
        *table(stats["licences"], ("licence", "images")),
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- readers
def _require(fs, vpath: str, version: str) -> None:
    fs.invalidate_cache(vpath)
    if not fs.exists(posixpath.join(vpath, SUCCESS)):
        raise VersionNotFoundError(f"dataset version {version!r} is not published")


def read_manifest(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    fs, path = _fs(root, storage_options)
    vpath = version_path(path, version)
    _require(fs, vpath, version)
    with fs.open(posixpath.join(vpath, MANIFEST), "rb") as f:
        return pl.read_parquet(f.read())


def read_shards_table(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    fs, path = _fs(root, storage_options)
    vpath = version_path(path, version)
    _require(fs, vpath, version)
    with fs.open(posixpath.join(vpath, SHARDS), "rb") as f:
        return pl.read_parquet(f.read())


def read_stats(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    fs, path = _fs(root, storage_options)
    vpath = version_path(path, version)
    _require(fs, vpath, version)
    with fs.open(posixpath.join(vpath, STATS), "rb") as f:
        return json.loads(f.read())


def shard_urls(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Full URLs of the version's shards, in order (local paths stay plain paths for webdataset)."""
    fs, path = _fs(root, storage_options)
    vpath = version_path(path, version)
    names = read_shards_table(root, version, storage_options)["shard"].to_list()
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [posixpath.join(vpath, n) if local else fs.unstrip_protocol(posixpath.join(vpath, n)) for n in names]


def iter_samples(root: str, version: str, storage_options: Mapping[str, Any] | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Decode the shards through fsspec: dicts with ``sha256, ext, image_bytes, mask, meta, caption``."""
    fs, path = _fs(root, storage_options)
    vpath = version_path(path, version)
    for name in read_shards_table(root, version, storage_options)["shard"].to_list():
        with fs.open(posixpath.join(vpath, name), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            current: dict[str, Any] = {}
            for member in tar:
                key, _, suffix = posixpath.basename(member.name).partition(".")
                data = tar.extractfile(member).read()
                if current and current["sha256"] != key:
                    yield _finish(current)
                    current = {}
                current.setdefault("sha256", key)
                current[suffix] = data
            if current:
                yield _finish(current)


def _finish(parts: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads(parts.pop("json"))
    mask = decode_mask_png(parts.pop("mask.png"))
    txt = parts.pop("txt", b"").decode()
    sha = parts.pop("sha256")
    (ext, image), = parts.items()
    return {"sha256": sha, "ext": ext, "image_bytes": image, "mask": mask, "meta": meta, "caption": txt}


def verify_shards(root: str, version: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Problems found re-reading a version: missing marker/files, shard sha256 or sample keys that differ
    from ``shards.parquet`` / the manifest, shard files not listed. Empty when the version is intact."""
    fs, path = _fs(root, storage_options)
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
        sha, n_bytes, keys, err = _scan_shard(fs, posixpath.join(vpath, name))
        if sha != row["sha256"]:
            problems.append(f"{name}: sha256 {sha} != recorded {row['sha256']}")
        if n_bytes != row["n_bytes"]:
            problems.append(f"{name}: {n_bytes} bytes != recorded {row['n_bytes']}")
        if err:
            problems.append(f"{name}: unreadable tar ({err})")
        elif keys != set(rows["sha256"].to_list()) or len(keys) != row["n_samples"]:
            problems.append(f"{name}: sample keys differ from the manifest")
    return problems


class _HashingReader:
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


def _scan_shard(fs, path: str) -> tuple[str, int, set[str], str | None]:
    """sha256, size and sample keys of a shard, in one streaming pass."""
    keys: set[str] = set()
    err = None
    with fs.open(path, "rb") as f:
        hr = _HashingReader(f)
        try:
            with tarfile.open(fileobj=hr, mode="r|") as tar:
                for m in tar:
                    keys.add(posixpath.basename(m.name).partition(".")[0])
        except (tarfile.TarError, EOFError, OSError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        hr.drain()
    return hr.sha.hexdigest(), hr.n, keys, err


# ------------------------------------------------------------------------------------------- diff
#: manifest columns whose change makes a kept sample "relabelled" (its labels, caption or their makers)
LABEL_COLUMNS = ("caption", "groups", "dropped_groups", "n_attributes", "parser_version", "annotator_round")


@dataclass(frozen=True)
class VersionDiff:
    old: str
    new: str
    added: tuple[str, ...]        # sha256 only in ``new``
    removed: tuple[str, ...]      # sha256 only in ``old``
    relabelled: tuple[str, ...]   # in both, with a different caption / groups / parser / annotator round
    unchanged: int

    def counts(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "added": len(self.added), "removed": len(self.removed),
                "relabelled": len(self.relabelled), "unchanged": self.unchanged}


def diff_versions(root: str, old: str, new: str,
                  storage_options: Mapping[str, Any] | None = None) -> VersionDiff:
    """What changed from version ``old`` to ``new``, sample by sample (keyed by image sha256)."""
    cols = ["sha256", *LABEL_COLUMNS]
    a = read_manifest(root, old, storage_options).select(cols)
    b = read_manifest(root, new, storage_options).select(cols)
    added = b.join(a, on="sha256", how="anti")["sha256"].sort().to_list()
    removed = a.join(b, on="sha256", how="anti")["sha256"].sort().to_list()
    both = a.join(b, on="sha256", how="inner", suffix="_new")
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_new")) for c in LABEL_COLUMNS])
    relabelled = both.filter(changed)["sha256"].sort().to_list()
    return VersionDiff(old, new, tuple(added), tuple(removed), tuple(relabelled),
                       both.height - len(relabelled))
