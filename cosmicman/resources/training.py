from __future__ import annotations

from typing import Any

import dagster as dg


class TrainingResource(dg.ConfigurableResource):
    """Daring training settings. Defaults are the embedded tiny run (a tiny UNet, 64 px, a few dozen
    steps on CPU); production sets ``pretrained`` to an SD-1.5 id or folder and the released values
    (lr 1e-5, resolution 512+). EMA, noise offset and caption dropout default to the released values."""

    pretrained: str | None = None
    resolution: int = 64
    steps: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    alpha: float = 1.0
    beta: float = 1.0
    hola_reduction: str = "released"
    hola_map_factor: int = 8
    gradient_checkpointing: bool = False
    act_fn: str = "silu"
    seed: int = 0
    ema_decay: float = 0.9999
    noise_offset: float = 0.05
    caption_dropout: float = 0.1
    snr_gamma: float | None = None
    checkpoint_every: int = 0
    mixed_precision: str = "no"
    family: str = "sd"                      # tiny components' family when pretrained is None: sd | sdxl
    grad_accum: int = 1
    buckets: bool = False                   # aspect-ratio buckets (released: on)
    bucket_step: int = 64
    cache_latents: bool = False             # latents + text embeddings cached under <store>/cache/latents
    deepspeed: str | None = None         # zero2 | zero2_offload | a JSON URL (GPU launchers)

    def train_config(self, shards: list[str], output_url: str, cache_url: str | None = None) -> dict[str, Any]:
        """The trainer's JSON config; ``cache_url`` is where latents are cached when ``cache_latents``."""
        return {"shards": shards, "output_url": output_url, "pretrained": self.pretrained,
                "resolution": self.resolution, "steps": self.steps, "batch_size": self.batch_size,
                "lr": self.lr, "alpha": self.alpha, "beta": self.beta, "hola_reduction": self.hola_reduction,
                "hola_map_factor": self.hola_map_factor, "gradient_checkpointing": self.gradient_checkpointing,
                "act_fn": self.act_fn, "seed": self.seed, "ema_decay": self.ema_decay,
                "noise_offset": self.noise_offset, "caption_dropout": self.caption_dropout,
                "snr_gamma": self.snr_gamma, "checkpoint_every": self.checkpoint_every,
                "mixed_precision": self.mixed_precision, "family": self.family, "grad_accum": self.grad_accum,
                "buckets": self.buckets, "bucket_step": self.bucket_step, "deepspeed": self.deepspeed,
                "cache_url": cache_url if self.cache_latents else None,
                # checkpoints live beside the (config-keyed) output: a relaunch continues where it stopped
                "resume": True}
