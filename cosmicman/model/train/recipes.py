"""Named training recipes: each is the set of ``TrainConfig`` fields it changes from the schema's defaults.

- ``tiny``: the embedded local run (the committed base model's tiny components, 64 px, 500 steps on CPU).
- ``released-sd15``: the released CosmicMan recipe (NOTES-training.md) on SD-1.5 at 512: lr 1e-5, bf16,
  DeepSpeed ZeRO-2, aspect buckets, gradient checkpointing, batch 4 x accumulation 4, EMA 0.9999, noise
  offset 0.05, caption dropout 0.1, checkpoints every 1000 steps; per sample, as the released loader:
  image and masks flipped together with p 0.5, a fresh caption (shuffles, group dropout 0.1) and the
  extra 50 % drop of groups at protocol index >= 14. No latent cache: it would freeze one orientation
  and one caption per sample (the released loader also encodes every batch).
- ``released-sdxl``: the same on SDXL at 1024 (HOLA on the 64x64 level), optimizer on the CPU as released.

The per-run fields (``config.PER_RUN_FIELDS``) are never part of a recipe."""

from __future__ import annotations

from typing import Any

from cosmicman.core.caption_draw import GROUP_DROPOUT, LATE_GROUP_FROM, RELEASED_LATE_GROUP_DROPOUT
from cosmicman.model.train.config import TrainConfig

_RELEASED: dict[str, Any] = {
    "lr": 1e-5,
    "weight_decay": 1e-2,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "max_grad_norm": 1.0,
    "alpha": 1.0,
    "beta": 1.0,
    "hola_reduction": "released",
    "hola_map_factor": 16,
    "steps": 100_000,
    "batch_size": 4,
    "grad_accum": 4,
    "mixed_precision": "bf16",
    "deepspeed": "zero2",
    "buckets": True,
    "bucket_step": 64,
    "bucket_max_ratio": 2.0,
    "cache_latents": False,  # a cache freezes the per-sample flip and caption draws
    "gradient_checkpointing": True,
    "checkpoint_every": 1000,
    "checkpoints_keep": 3,
    "ema_decay": 0.9999,
    "save_ema": True,
    "noise_offset": 0.05,
    "caption_dropout": 0.1,
    "flip_p": 0.5,
    "group_dropout": GROUP_DROPOUT,
    "late_group_dropout": RELEASED_LATE_GROUP_DROPOUT,
    "late_group_from": LATE_GROUP_FROM,
}

RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "pretrained": None,
        "family": "sd",
        "resolution": 64,
        # a few hundred steps instead of 100k: the lr is 300x the released one, and HOLA is Eq. 3 as printed
        # (sums over pixels and tokens), whose weight against the noise loss is what moves attention within
        # this budget; the released reduction (a mean, ~P(n+1) times smaller) barely moves it in 500 steps
        "steps": 500,
        "batch_size": 4,
        "lr": 3e-3,
        "hola_reduction": "paper",
        "hola_map_factor": 8,
        "ema_decay": 0.9999,
        "noise_offset": 0.05,
        "caption_dropout": 0.1,
    },
    "released-sd15": {
        **_RELEASED,
        "pretrained": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "family": "sd",
        "resolution": 512,
    },
    "released-sdxl": {
        **_RELEASED,
        "pretrained": "stabilityai/stable-diffusion-xl-base-1.0",
        "family": "sdxl",
        "resolution": 1024,
        "deepspeed": "zero2_offload",
    },
}

DEFAULT_RECIPE = "tiny"


def check_recipe(name: str, overrides: dict[str, Any]) -> None:
    """Unknown recipe or override names fail here, in one line that lists the valid ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown training recipe {name!r}; known: {sorted(RECIPES)}")
    TrainConfig.check_names(overrides, what="training overrides")


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The config of recipe ``name`` with ``overrides`` applied (field names of ``TrainConfig``)."""
    check_recipe(name, overrides)
    return TrainConfig(**{**RECIPES[name], **overrides})
