"""The data stream of one rank: deterministic batches (square or aspect buckets, decoded or from the latent
cache) prepared by a loader thread, with the bookkeeping exact resume needs.

A rank reads whole shards of its own (``cosmicman.model.shards``: unit u of the endless shard sequence goes
to rank u % world_size) and numbers its samples k * world_size + rank: positions rise within a rank, so its
resume point (stored in its own checkpoint part) is a start plus exclusions in its own stream. Samples the
shards hold that are not in the dataset version (``cfg.excluded_samples``: shards are shared by versions)
are dropped as their shard is read, in the cached stream too, and never reach a batch.

Decoded training samples get their per-sample draws (``cosmicman.model.sample_draw``: flip, fresh caption)
seeded by (run seed, stream position), so a resumed run draws what the uninterrupted one drew. A latent
cache holds one orientation and the stored caption per sample: a cached run makes no draws, and says so.
The fixed batches of the end-of-run attention report are the stored captions, unflipped."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from cosmicman.model.distributed import DistEnv, barrier
from cosmicman.model.sample_draw import SampleDraw
from cosmicman.model.shards import expand_shard_urls
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.step import DaringTrainer


class DataStream:
    """The deterministic batch stream of one rank, with what exact resume needs.

    Samples a batch has not yet taken (other buckets' partial batches) are *pending*; the resume point
    is the lowest pending position (``start``) plus the positions at or above it already used
    (``exclude``): re-reading from ``start`` and dropping ``exclude`` rebuilds the same buffers."""

    def __init__(
        self,
        cfg: TrainConfig,
        trainer: DaringTrainer,
        dist: DistEnv,
        resume: dict[str, Any] | None,
        say: Callable[[str], None],
    ) -> None:
        from cosmicman.model.buckets import aspect_buckets, bucket_batches

        self.cfg = cfg
        self.say = say
        self.urls = expand_shard_urls(cfg.shards)
        self.tokenizer = trainer.comps.tokenizers[0]
        if cfg.buckets:
            self.sizes = aspect_buckets(cfg.resolution, step=cfg.bucket_step, max_ratio=cfg.bucket_max_ratio)
            geometry: dict[str, Any] = {"buckets": self.sizes}
        else:
            self.sizes = [(cfg.resolution, cfg.resolution)]
            geometry = {"resolution": cfg.resolution}
        if trainer.store is not None:
            for hw in self.sizes:
                if not trainer.hola_layers(hw):
                    raise ValueError(
                        f"no cross-attention layer has maps at 1/{cfg.hola_map_factor} of a {hw} "
                        f"image; choose another hola_map_factor / resolution / bucket_step"
                    )
        self.cache = None
        self.cache_stats: dict[str, int] = {}
        if cfg.cache_url:
            from cosmicman.model.latent_cache import LatentCache, build_cache, cache_fingerprint, weights_digest

            c = trainer.comps
            geometry.update(map_factor=cfg.hola_map_factor, mask_resize=cfg.mask_resize, vae_factor=trainer.vae_factor)
            self.cache = LatentCache(
                cfg.cache_url, cache_fingerprint(weights_digest(c.vae, *c.text_encoders), c.family, geometry)
            )
            self.cache_stats = build_cache(
                self.cache,
                self._reader(decoding=True),
                trainer.encode_for_cache,
                cfg.batch_size,
                dist.rank,
                dist.world_size,
                say,
            )
            built = self.cache_stats
            say(
                f"latent cache: {built['reused_units']} unit(s) reused ({built['reused_samples']} samples), "
                f"{built['encoded_units']} encoded ({built['samples']} samples)"
            )
            barrier()  # every rank's units are in before anyone reads
            self.cache_url = self.cache.url
            say(
                "latent cache: no per-sample flips or caption draws (the cache holds one orientation and "
                "the stored caption of each sample); set cache_latents false for them"
            )
            draw = None
        else:
            draw = SampleDraw(
                seed=cfg.seed,
                flip_p=cfg.flip_p,
                group_dropout=cfg.group_dropout,
                late_group_dropout=cfg.late_group_dropout,
                late_group_from=cfg.late_group_from,
            )
        self._frozen_said = False
        self.dataset = self._reader(
            shuffle_buffer=cfg.shuffle_buffer,
            repeat=True,
            rank=dist.rank,
            world_size=dist.world_size,
            start=(resume or {}).get("start", 0),
            exclude=(resume or {}).get("exclude", ()),
            draw=draw,
        )
        # resume bookkeeping, shared with the loader thread
        self._lock = threading.Lock()
        self.pending: set[int] = set()
        self.used: set[int] = set()
        self.next_pos = (resume or {}).get("start", 0)  # every yielded sample below it is used or pending
        # a loader thread decodes (and pins, for a GPU) the next batches while the device trains
        self._pin = trainer.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch_batches))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce,
            args=(bucket_batches(self._tracked(), cfg.batch_size),),
            name="cosmicman-loader",
            daemon=True,
        )
        self._thread.start()

    def _reader(self, decoding: bool = False, **order: Any):
        """A dataset over the shards with this run's geometry: decoding images, or from the cache."""
        from cosmicman.model.buckets import BucketedShardDataset
        from cosmicman.model.shards import ShardDataset

        cfg = self.cfg
        order["seed"] = cfg.seed
        order["excluded_samples"] = cfg.excluded_samples
        if self.cache is not None and not decoding:
            from cosmicman.model.latent_cache import CachedShardDataset

            return CachedShardDataset(self.urls, self.cache, **order)
        if cfg.buckets:
            return BucketedShardDataset(
                self.urls,
                self.tokenizer,
                self.sizes,
                map_factor=cfg.hola_map_factor,
                mask_resize=cfg.mask_resize,
                **order,
            )
        f = cfg.hola_map_factor
        return ShardDataset(
            self.urls,
            self.tokenizer,
            cfg.resolution,
            mask_size=(cfg.resolution // f,) * 2,
            mask_resize=cfg.mask_resize,
            **order,
        )

    def fixed_batches(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` batches of the shards in file order (no shuffle, all ranks' samples)."""
        from cosmicman.model.buckets import bucket_batches

        it = bucket_batches(self._reader(), self.cfg.batch_size)
        return [b for _, b in zip(range(n), it)]

    def _tracked(self) -> Iterator[dict[str, Any]]:
        for sample in self.dataset:
            with self._lock:
                self.pending.add(sample["pos"])
                self.next_pos = sample["pos"] + 1
            yield sample

    def _produce(self, batches: Iterator[dict[str, Any]]) -> None:
        try:
            for batch in batches:
                if self._pin:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the training thread
            self._queue.put(_LoaderFailure(exc))

    def __next__(self) -> dict[str, Any]:
        batch = self._queue.get()
        if isinstance(batch, _LoaderFailure):
            raise RuntimeError(f"the data loader failed: {batch.exc}") from batch.exc
        if not self._frozen_said and self.dataset.stats["frozen_captions"]:
            self._frozen_said = True
            self.say(
                "the dataset version stores no caption groups (written before per-sample draws): its "
                "samples train on their stored captions, unflipped; rebuild the version for the draws"
            )
        taken = set(batch["positions"])
        with self._lock:
            self.pending -= taken
            self.used |= taken
            floor = min(self.pending) if self.pending else self.next_pos
            self.used = {p for p in self.used if p >= floor}
        return batch

    def resume_point(self) -> dict[str, Any]:
        """Where a resumed run restarts: samples below ``start`` and in ``exclude`` are skipped undecoded."""
        with self._lock:
            start = min(self.pending) if self.pending else self.next_pos
            return {"start": start, "exclude": sorted(p for p in self.used if p >= start)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class _LoaderFailure:
    exc: BaseException
