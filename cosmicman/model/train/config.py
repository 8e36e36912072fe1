"""The trainer's one configuration schema. Everything that launches training (the JSON on the command
line, the Dagster resource, the named recipes in ``recipes.py``) builds this dataclass.

The module stays free of torch and diffusers at import time, so the Dagster code location can read the
schema cheaply; the checks that need the model code import it when a config is built."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec

# Filled per run by whoever launches it (the ``daring_unet`` asset): where the data, the output and the
# latent cache live, that a relaunch continues from its checkpoints, which samples of the shards are not in
# the dataset version, and that version's name. Not part of a recipe.
PER_RUN_FIELDS = ("shards", "output_url", "cache_url", "resume", "excluded_samples", "dataset_version")


@dataclass
class TrainConfig:
    shards: list[str] = field(default_factory=list)  # shard URLs (brace / glob / directory expanded)
    # keys (image sha256) of samples the shards hold that are not in the dataset version (removed, not yet
    # compacted away: cosmicman.datasets.layout.excluded_samples); never trained on
    excluded_samples: list[str] = field(default_factory=list)
    # the CosmicMan-HQ version the shards are read for: the training record names it, since shared shards
    # belong to several versions (cosmicman.datasets.lineage); None when the shards are not a version's
    dataset_version: str | None = None
    output_url: str = ""  # where the diffusers folder is published (path, file://, s3://)
    pretrained: str | None = None  # hub id / local diffusers folder (SD or SDXL); None: tiny components
    family: str = "sd"  # tiny components' family ("sd" | "sdxl"); pretrained: detected
    resolution: int = 512  # square side, or the buckets' target area side (pixels)
    steps: int = 1000  # optimizer steps
    batch_size: int = 4  # micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step (released: 4)
    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    alpha: float = 1.0  # weight of L_noise
    beta: float = 1.0  # weight of L_HOLA (0: plain fine-tuning, no capture)
    hola_reduction: str = "released"  # "released" | "paper"
    hola_map_factor: int = 16  # HOLA maps at (H/f, W/f) of the image; tiny 64px models use 8
    mask_resize: str = "area"  # "area" (one-hot then area) | "nearest"
    gradient_checkpointing: bool = False
    seed: int = 0
    act_fn: str = "silu"  # any name in model.activations.ACTIVATIONS (Prime)
    ff_act_fn: str | None = None  # also replace the feed-forward GEGLU's GELU (None: keep it)
    shuffle_buffer: int = 64
    log_every: int = 10
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ... (ranks: cuda:LOCAL_RANK)
    overwrite: bool = False  # replace a published output_url
    tiny_seed: int | None = None  # seed of the tiny components (default: seed)
    # -- data geometry / caching -------------------------------------------------------------------
    buckets: bool = False  # aspect-ratio buckets of about resolution^2 pixels (released: on)
    bucket_step: int = 64  # bucket sides are multiples of this
    bucket_max_ratio: float = 2.0
    cache_url: str | None = None  # latent + text-embedding cache root (None: encode every step); it holds
    # one orientation and the stored caption per sample, so a cached run makes no per-sample draws
    cache_latents: bool = False  # ask the launcher for a cache_url (the asset: the store's shared one)
    # -- checkpoints / resume --------------------------------------------------------------------
    checkpoint_every: int = 0  # save a checkpoint every N steps (0: never)
    checkpoints_keep: int = 3  # keep the last K complete checkpoints (released: 1000 / 3)
    checkpoint_url: str | None = None  # default: <output_url>.checkpoints
    resume: bool = False  # resume from the latest complete checkpoint, if one exists
    # -- EMA ---------------------------------------------------------------------------------------
    ema_decay: float = 0.9999  # released 0.9999 (diffusers EMAModel warm-up cap); 0 disables
    save_ema: bool = True  # publish the EMA weights as unet/ (else the raw weights)
    # -- loss / conditioning -------------------------------------------------------------------------
    noise_offset: float = 0.0  # released 0.05
    caption_dropout: float = 0.0  # per micro-batch (released 0.1): "" prompt, no HOLA for the batch
    # -- per-sample draws (model.sample_draw; samples whose dataset version stores caption groups) -----
    flip_p: float = 0.5  # horizontal flip of image and parsing map together (released: 0.5)
    group_dropout: float = 0.1  # each caption group dropped per sample, with its mask (released: 0.1)
    late_group_dropout: float = 0.0  # extra drop of groups at protocol index >= late_group_from (released 0.5)
    late_group_from: int = 14
    snr_gamma: float | None = None  # min-SNR weighting gamma (None disables)
    prediction_type: str | None = None  # override the scheduler's: "epsilon" | "v_prediction"
    mixed_precision: str = "no"  # "bf16": autocast (plain) / bf16 engine (DeepSpeed); fp32 master weights
    # -- distribution ----------------------------------------------------------------------------------
    deepspeed: str | None = None  # "zero2" | "zero2_offload" | JSON path / URL; None: plain PyTorch
    # -- report ------------------------------------------------------------------------------------------
    alignment_batches: int = 3  # fixed batches for the attention-in-mask share at the end (0: skip)
    prefetch_batches: int = 2  # batches the loader thread prepares ahead of the step

    def __post_init__(self) -> None:
        # the model code is imported only here: building a config checks names against it
        from cosmicman.model.activations import ActivationConfig
        from cosmicman.model.components import FAMILIES
        from cosmicman.model.hola import MASK_RESIZE_MODES, REDUCTIONS

        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if isinstance(self.excluded_samples, str) or not all(isinstance(k, str) for k in self.excluded_samples):
            raise ValueError("excluded_samples must be a list of sample keys (image sha256 strings)")
        ActivationConfig(self.act_fn, self.ff_act_fn)  # rejects unknown activation names before any work
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}")
        if self.hola_reduction not in REDUCTIONS:
            raise ValueError(f"hola_reduction must be one of {REDUCTIONS}")
        if self.mask_resize not in MASK_RESIZE_MODES:
            raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}")
        for name in ("steps", "batch_size", "grad_accum", "resolution", "hola_map_factor", "bucket_step"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.buckets and self.bucket_step % self.hola_map_factor:
            raise ValueError(
                f"bucket_step {self.bucket_step} must be a multiple of hola_map_factor {self.hola_map_factor}"
            )
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.checkpoint_every < 0 or self.checkpoints_keep < 1:
            raise ValueError("checkpoint_every must be >= 0 and checkpoints_keep >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        for name in ("caption_dropout", "flip_p", "group_dropout", "late_group_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.late_group_from < 0:
            raise ValueError("late_group_from must be >= 0")
        if self.noise_offset < 0:
            raise ValueError("noise_offset must be >= 0")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError("snr_gamma must be > 0 (or None to disable)")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError("prediction_type must be None, 'epsilon' or 'v_prediction'")

    def check_runnable(self) -> None:
        """A recipe leaves the per-run locations empty; a run needs its shards and an output."""
        if not self.shards:
            raise ValueError("config.shards is empty")
        if not self.output_url:
            raise ValueError("config.output_url is empty")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_names(cls, names: Any, what: str = "config keys") -> None:
        """One-line error for names that are not fields, listing the valid ones."""
        unknown = sorted(set(names) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {what} {unknown}; known: {sorted(cls.field_names())}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        cls.check_names(d)
        cfg = cls(**d)
        cfg.check_runnable()
        return cfg

    @classmethod
    def load(cls, url: str) -> TrainConfig:
        with fsspec.open(url, "rt") as f:
            return cls.from_dict(json.load(f))
