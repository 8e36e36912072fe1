"""Latent and text-embedding cache on the object store: the encoders leave the training step.

A cache entry is one file per source shard, ``<root>/<fingerprint>/<shard name>-<url hash>.pt``, holding
the shard's samples in file order, each with everything a training step needs and nothing it must
recompute: the VAE posterior's ``latent_mean`` / ``latent_std`` (so the step still *samples* latents,
exactly as ``latent_dist.sample`` would), the text conditioning (``hidden``, SDXL's ``pooled``), the HOLA
``group_masks`` and ``spans``, and the size / crop ids. A sample that failed to decode is kept as an
``error`` record, so cached and uncached streams have the same positions (exact resume works on both).

The fingerprint hashes what the cached values depend on: the VAE and text-encoder weights (bytes), the
family, and the geometry of the reader (resolution or buckets, HOLA map size, mask resizing). Shard URLs of
a dataset version are immutable, so a unit is keyed by its URL. Unit files are written atomically (local:
temp file + rename; object stores publish on upload end): a crash leaves whole units or none, and the next
run only encodes the missing ones. On several ranks each encodes its share of the units (each shard is
read once across the ranks), and each reads back only the units of its own share of the stream (the rank
split of ``cosmicman.model.shards``: whole units per rank).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import torch

from cosmicman.core.store import is_local
from cosmicman.model.shards import ShardDataset, collate, iter_tar_samples

log = logging.getLogger(__name__)

CACHE_FORMAT = 2

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


class LatentCache:
    """The cache folder of one fingerprint under ``root_url`` (any fsspec URL)."""

    def __init__(self, root_url: str, fingerprint: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(root_url.rstrip("/"))
        self.root = posixpath.join(root, fingerprint)
        self.url = self.fs.unstrip_protocol(self.root)
        self._local = is_local(self.fs)

    def unit_path(self, shard_url: str) -> str:
        name = posixpath.basename(shard_url.rstrip("/")).rsplit(".", 1)[0]
        digest = hashlib.sha256(shard_url.encode()).hexdigest()[:12]
        return posixpath.join(self.root, f"{name}-{digest}.pt")

    def has(self, shard_url: str) -> bool:
        return self.fs.exists(self.unit_path(shard_url))

    def write(self, shard_url: str, records: list[dict[str, Any]]) -> None:
        buf = io.BytesIO()
        torch.save({"format": CACHE_FORMAT, "shard": shard_url, "records": records}, buf)
        final = self.unit_path(shard_url)
        if self._local:
            os.makedirs(self.root, exist_ok=True)
            tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, final)
        else:
            self.fs.pipe_file(final, buf.getvalue())

    def read(self, shard_url: str) -> list[dict[str, Any]]:
        with self.fs.open(self.unit_path(shard_url), "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
        if data.get("format") != CACHE_FORMAT or data.get("shard") != shard_url:
            raise ValueError(f"cache unit {self.unit_path(shard_url)} is not for {shard_url}")
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
    spans) of the training stream."""
    stats = {"units": len(reader.urls), "encoded_units": 0, "reused_units": 0, "samples": 0, "errors": 0}
    t0 = time.perf_counter()
    mine = [u for i, u in enumerate(reader.urls) if i % world_size == rank]
    for n, url in enumerate(mine):
        if cache.has(url):
            stats["reused_units"] += 1
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
        cache.write(url, records)
        stats["encoded_units"] += 1
        stats["samples"] += len(records)
        say(
            f"latent cache: unit {n + 1}/{len(mine)} ({len(records)} samples) -> {cache.unit_path(url)} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return stats


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
