"""Latent and text-embedding cache on the object store: the encoders leave the training step.

A cache entry (a *unit*) is one file per source shard, ``<root>/<fingerprint>/<unit key>.n<records>.pt``,
holding the shard's samples in file order, each with everything a training step needs and nothing it must
recompute: the VAE posterior's ``latent_mean`` / ``latent_std`` (so the step still *samples* latents,
exactly as ``latent_dist.sample`` would), the text conditioning (``hidden``, SDXL's ``pooled``), the HOLA
``group_masks`` and ``spans``, and the size / crop ids. A sample that failed to decode is kept as an
``error`` record, so cached and uncached streams have the same positions (exact resume works on both).

The fingerprint hashes what the cached values depend on: the VAE and text-encoder weights (bytes), the
family, and the geometry of the reader (resolution or buckets, HOLA map size, mask resizing). A unit is
keyed by its shard's *content*: dataset versions share shards stored once under the sha256 of their bytes
(``<sha256>.tar``), so the unit of such a shard is named by that sha256, and version N+1 reuses every unit
version N made for the shards it still references -- a version that adds 2 % encodes only its new
shards. A shard not named by its sha256 (a path given by hand) is keyed by its name and URL, as immutable
as the file behind it is. A unit holds all of its shard's samples, those a version excludes too (readers
drop them: ``cosmicman.model.shards``), so any version referencing the shard can use it.

The unit's record count is in its name, so one listing of the fingerprint folder tells which units exist
and how many latents each holds (``reused_samples``), without a request per unit. Unit files are written
atomically (local: temp file + rename; object stores publish on upload end): a crash leaves whole units
or none, and the next run only encodes the missing ones. On several ranks each encodes its share of the
units (each shard is read once across the ranks), and each reads back only the units of its own share of
the stream (the rank split of ``cosmicman.model.shards``: whole units per rank).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import fsspec
import torch

from cosmicman.core.store import is_local
from cosmicman.model.shards import ShardDataset, collate, iter_tar_samples

log = logging.getLogger(__name__)

# 3: units keyed by shard content, record count in the unit's name
CACHE_FORMAT = 3
CONTENT_NAME = re.compile(r"^[0-9a-f]{64}$")
UNIT_NAME = re.compile(r"^(?P<key>.+)\.n(?P<records>\d+)\.pt$")

#: (pixels (B,3,H,W), ids (B,77), batch dict) -> {"latent_mean", "latent_std", "hidden", "pooled"?}
EncodeFn = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], dict[str, torch.Tensor]]


def weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 over the parameters and buffers of ``modules`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_fingerprint(encoder_digest: str, family: str, geometry: dict[str, Any]) -> str:
    blob = json.dumps(
        {"format": CACHE_FORMAT, "encoders": encoder_digest, "family": family, "geometry": geometry}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def unit_key(shard_url: str) -> str:
    """What a shard's unit is named by: the sha256 its content-addressed name is, else name + URL digest."""
    stem = posixpath.basename(shard_url.rstrip("/")).rsplit(".", 1)[0]
    if CONTENT_NAME.match(stem):
        return stem
    return f"{stem}-{hashlib.sha256(shard_url.encode()).hexdigest()[:12]}"


class LatentCache:
    """The cache folder of one fingerprint under ``root_url`` (any fsspec URL)."""

    def __init__(self, root_url: str, fingerprint: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(root_url.rstrip("/"))
        self.root = posixpath.join(root, fingerprint)
        self.url = self.fs.unstrip_protocol(self.root)
        self._local = is_local(self.fs)
        self._units: dict[str, tuple[str, int]] | None = None  # unit key -> (path, records)

    def refresh(self) -> dict[str, tuple[str, int]]:
        """List the folder once: the units there (other ranks' too) and their record counts."""
        self.fs.invalidate_cache(self.root)  # fsspec instances are shared and cache listings (s3fs)
        try:
            paths = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            paths = []
        self._units = {}
        for path in paths:
            m = UNIT_NAME.match(posixpath.basename(path))
            if m:  # temp files of a write in progress do not match
                self._units[m["key"]] = (path, int(m["records"]))
        return self._units

    def _unit(self, shard_url: str) -> tuple[str, int] | None:
        units = self._units if self._units is not None else self.refresh()
        return units.get(unit_key(shard_url))

    def cached_records(self, shard_url: str) -> int | None:
        """How many records (latents) the shard's unit holds, as its name says; None: not cached (as of the
        last listing)."""
        unit = self._unit(shard_url)
        return None if unit is None else unit[1]

    def unit_path(self, shard_url: str, records: int) -> str:
        return posixpath.join(self.root, f"{unit_key(shard_url)}.n{records}.pt")

    def write(self, shard_url: str, records: list[dict[str, Any]]) -> str:
        buf = io.BytesIO()
        key = unit_key(shard_url)
        torch.save({"format": CACHE_FORMAT, "key": key, "shard": shard_url, "records": records}, buf)
        final = self.unit_path(shard_url, len(records))
        if self._local:
            os.makedirs(self.root, exist_ok=True)
            tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, final)
        else:
            self.fs.pipe_file(final, buf.getvalue())
        if self._units is not None:
            self._units[key] = (final, len(records))
        return final

    def read(self, shard_url: str) -> list[dict[str, Any]]:
        unit = self._unit(shard_url)
        if unit is None:  # another rank may have written it since this one listed
            self.refresh()
            unit = self._unit(shard_url)
        if unit is None:
            raise FileNotFoundError(
                f"no latent cache unit for {shard_url} under {self.url}; build_cache encodes it first"
            )
        path = unit[0]
        with self.fs.open(path, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
        if data.get("format") != CACHE_FORMAT or data.get("key") != unit_key(shard_url):
            raise ValueError(f"cache unit {path} is not for {shard_url}")
        return data["records"]


def _encode_batch(items: list[tuple[int, dict[str, Any]]], encode: EncodeFn, records: list[dict[str, Any]]) -> None:
    """Encode one bucket's samples as a batch; each record lands at its sample's position in ``records``."""
    batch = collate([s for _, s in items])
    out = encode(batch["pixel_values"], batch["input_ids"], batch)
    for j, (idx, sample) in enumerate(items):
        rec: dict[str, Any] = {k: v[j].detach().to("cpu", torch.float32).clone() for k, v in out.items()}
        rec.update(
            __key__=sample["key"],
            group_masks=sample["group_masks"],
            spans=sample["spans"],
            group_names=list(sample["group_names"]),
            bucket=tuple(sample["bucket"]),
            original_size=tuple(sample["original_size"]),
            crop_top_left=tuple(sample["crop_top_left"]),
        )
        records[idx] = rec


def build_cache(
    cache: LatentCache,
    reader: ShardDataset,
    encode: EncodeFn,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    say: Callable[[str], None] = log.info,
) -> dict[str, int]:
    """Encode the shards of ``reader`` this rank owns (unit i goes to rank ``i % world_size``, so each
    shard is read by one rank) that the cache lacks. ``reader`` supplies the decoding (geometry, masks,
    spans) of the training stream. ``samples`` are the records this call encoded, ``reused_samples`` those
    of the units already cached (see :func:`reused_share`)."""
    stats = {
        "units": len(reader.urls),
        "encoded_units": 0,
        "reused_units": 0,
        "samples": 0,
        "reused_samples": 0,
        "errors": 0,
    }
    cache.refresh()
    t0 = time.perf_counter()
    mine = [u for i, u in enumerate(reader.urls) if i % world_size == rank]
    for n, url in enumerate(mine):
        cached = cache.cached_records(url)
        if cached is not None:
            stats["reused_units"] += 1
            stats["reused_samples"] += cached
            continue
        records: list[dict[str, Any]] = []
        pending: dict[tuple[int, ...], list[tuple[int, dict[str, Any]]]] = {}
        for raw in iter_tar_samples(url):
            try:
                sample = reader.decode(raw)
            except Exception as exc:  # noqa: BLE001 -- kept as an error record (same positions as uncached)
                records.append({"__key__": raw.get("__key__"), "error": str(exc)})
                stats["errors"] += 1
                continue
            records.append({})
            bucket = tuple(sample["bucket"])
            pending.setdefault(bucket, []).append((len(records) - 1, sample))
            if len(pending[bucket]) == batch_size:
                _encode_batch(pending.pop(bucket), encode, records)
        for items in pending.values():
            _encode_batch(items, encode, records)
        written = cache.write(url, records)
        stats["encoded_units"] += 1
        stats["samples"] += len(records)
        say(
            f"latent cache: unit {n + 1}/{len(mine)} ({len(records)} samples) -> {written} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return stats


def reused_share(stats: Mapping[str, int]) -> float:
    """The share of the latents a :func:`build_cache` call needed that were already cached: reused records
    over reused + encoded ones. For a dataset version built on the previous one, its
    ``latent_reuse_after_new_version``."""
    needed = stats["reused_samples"] + stats["samples"]
    if needed == 0:
        raise ValueError("the cache build needed no latents (its shards hold no samples): no reuse share")
    return stats["reused_samples"] / needed


class CachedShardDataset(ShardDataset):
    """The training stream of ``ShardDataset`` (same order, positions, rank split, resume skipping) read
    from a ``LatentCache`` instead of decoding images: a rank reads only its own units' cache files, and a
    sample holds ``latent_mean`` / ``latent_std`` / ``hidden`` (/ ``pooled``) in place of
    ``pixel_values`` / ``input_ids``."""

    def __init__(self, urls: Iterable[str], cache: LatentCache, **kwargs: Any) -> None:
        super().__init__(urls, tokenizer=None, resolution=0, **kwargs)
        self.cache = cache

    def read_unit(self, url: str) -> Iterator[dict[str, Any]]:
        for rec in self.cache.read(url):
            yield dict(rec, __url__=url)

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        if "error" in raw:
            raise ValueError(raw["error"])
        sample = {k: v for k, v in raw.items() if not k.startswith("__")}
        sample["key"] = raw["__key__"]
        return sample
