"""Daring trainer: fine-tune the whole UNet with ``alpha * L_noise + beta * L_HOLA`` (paper Eq. 4).

    python -m cosmicman.model.train --config <json path or fsspec URL>
    torchrun --nproc_per_node=8 -m cosmicman.model.train --config <url>      # with "deepspeed": "zero2"

Launched by Dagster Pipes (``PipesSubprocessClient`` / ``PipesK8sClient`` / the TrainJob launcher) rank 0
logs progress through the pipes context and reports one asset materialization; the config then may also
come from the pipes extras (``extras["config"]``: a dict or a URL). Other ranks only log to stderr.
Standalone it prints the summary JSON on stdout (progress on stderr).

The work is split so each piece can be benchmarked and tested alone:

- ``DaringTrainer`` holds the components and the optimizer and runs one (micro-)step on a batch:
  encode (or read cached encodings), noise, UNet forward with HOLA capture, loss, backward, and on the
  accumulation boundary clip + AdamW (or the DeepSpeed engine's step) + EMA.
- ``train()`` builds the data stream (square or aspect buckets; optionally from the latent cache), resumes,
  checkpoints, and publishes.

Output (published to ``output_url`` by rank 0): a diffusers ``StableDiffusionPipeline`` (or
``StableDiffusionXLPipeline``) folder plus ``training_run.json`` (config, shard list, code version,
metrics). Publishing is atomic: files go to ``<output_url>.tmp-<id>`` first; on a local filesystem that
folder is renamed into place; on object stores the files are copied to the final prefix with
``training_run.json`` last -- it is the completion marker readers must check. With ``ema_decay > 0`` and
``save_ema`` (the defaults, as released) ``unet/`` holds the EMA weights (``metrics.published_unet``).

Checkpoints (``checkpoint_every`` N > 0) go to ``<checkpoint_url or output_url + ".checkpoints">``; see
``cosmicman.model.checkpoints``. ``resume=true`` continues from the latest complete one: the data stream is
deterministic (seeded shard order, shuffle buffer, rank split), and consumed samples are skipped *without
decoding* (their stream positions are recorded), so the run continues bit-for-bit as if uninterrupted.

Distribution: ``deepspeed`` names a ZeRO config (``zero2``, ``zero2_offload`` or a JSON path / URL, see
``cosmicman.model.distributed``); ranks come from the launcher's environment. Without it the trainer is
plain PyTorch on one device. Each rank reads its own share of the stream (position p goes to rank
p % world_size); rank 0 publishes.

Loss options (defaults off for the tiny setup; released values in brackets): ``noise_offset`` [0.05],
``caption_dropout`` per micro-batch [0.1] (the whole batch gets "" and no HOLA), ``snr_gamma`` (min-SNR
weighting), ``prediction_type`` (overrides the scheduler's; the published scheduler carries it),
``grad_accum`` [4], ``mixed_precision`` "bf16" [bf16], ``buckets`` [aspect buckets], ``cache_url``
(latent + text-embedding cache; see ``cosmicman.model.latent_cache``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import posixpath
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import torch.nn.functional as F

from cosmicman.core.store import is_local
from cosmicman.model.alignment import DEFAULT_TIMESTEPS, AlignmentTally, mask_mass_share
from cosmicman.model.attention import HolaContext, cross_attention_query_counts, install_capture, uninstall_capture
from cosmicman.model.checkpoints import (
    fs_and_path,
    list_checkpoints,
    load_checkpoint,
    load_engine_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cosmicman.model.components import FAMILIES, Components
from cosmicman.model.conditioning import TextConditioner, TextConditioning, sdxl_time_ids
from cosmicman.model.distributed import DistEnv, barrier, load_deepspeed_config
from cosmicman.model.hola import MASK_RESIZE_MODES, REDUCTIONS, hola_loss
from cosmicman.model.run_record import summary
from cosmicman.model.shards import expand_shard_urls

log = logging.getLogger("cosmicman.train")

RUN_FILE = "training_run.json"


@dataclass
class TrainConfig:
    shards: list[str]                      # shard URLs (brace / glob / directory expanded)
    output_url: str                        # where the diffusers folder is published (path, file://, s3://)
    pretrained: str | None = None          # hub id / local diffusers folder (SD or SDXL); None: tiny components
    family: str = "sd"                     # tiny components' family ("sd" | "sdxl"); pretrained: detected
    resolution: int = 512                  # square side, or the buckets' target area side (pixels)
    steps: int = 1000                      # optimizer steps
    batch_size: int = 4                    # micro-batch per rank
    grad_accum: int = 1                    # micro-batches per optimizer step (released: 4)
    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0             # 0 disables clipping
    alpha: float = 1.0                     # weight of L_noise
    beta: float = 1.0                      # weight of L_HOLA (0: plain fine-tuning, no capture)
    hola_reduction: str = "released"       # "released" | "paper"
    hola_map_factor: int = 16              # HOLA maps at (H/f, W/f) of the image; tiny 64px models use 8
    mask_resize: str = "area"              # "area" (one-hot then area) | "nearest"
    gradient_checkpointing: bool = False
    seed: int = 0
    act_fn: str = "silu"                   # any name in model.activations.ACTIVATIONS (Prime)
    ff_act_fn: str | None = None           # also replace the feed-forward GEGLU's GELU (None: keep it)
    shuffle_buffer: int = 64
    log_every: int = 10
    device: str = "auto"                   # "auto" | "cpu" | "cuda" | "cuda:1" ... (ranks: cuda:LOCAL_RANK)
    overwrite: bool = False                # replace a published output_url
    tiny_seed: int | None = None           # seed of the tiny components (default: seed)
    # -- data geometry / caching -------------------------------------------------------------------
    buckets: bool = False                  # aspect-ratio buckets of about resolution^2 pixels (released: on)
    bucket_step: int = 64                  # bucket sides are multiples of this
    bucket_max_ratio: float = 2.0
    cache_url: str | None = None           # latent + text-embedding cache root (None: encode every step)
    # -- checkpoints / resume --------------------------------------------------------------------
    checkpoint_every: int = 0              # save a checkpoint every N steps (0: never)
    checkpoints_keep: int = 3              # keep the last K complete checkpoints (released: 1000 / 3)
    checkpoint_url: str | None = None      # default: <output_url>.checkpoints
    resume: bool = False                   # resume from the latest complete checkpoint, if one exists
    # -- EMA ---------------------------------------------------------------------------------------
    ema_decay: float = 0.9999              # released 0.9999 (diffusers EMAModel warm-up cap); 0 disables
    save_ema: bool = True                  # publish the EMA weights as unet/ (else the raw weights)
    # -- loss / conditioning -------------------------------------------------------------------------
    noise_offset: float = 0.0              # released 0.05
    caption_dropout: float = 0.0           # per micro-batch (released 0.1): "" prompt, no HOLA for the batch
    snr_gamma: float | None = None         # min-SNR weighting gamma (None disables)
    prediction_type: str | None = None     # override the scheduler's: "epsilon" | "v_prediction"
    mixed_precision: str = "no"            # "bf16": autocast (plain) / bf16 engine (DeepSpeed); fp32 master weights
    # -- distribution ----------------------------------------------------------------------------------
    deepspeed: str | None = None           # "zero2" | "zero2_offload" | JSON path / URL; None: plain PyTorch
    # -- report ------------------------------------------------------------------------------------------
    alignment_batches: int = 3             # fixed batches for the attention-in-mask share at the end (0: skip)
    prefetch_batches: int = 2              # batches the loader thread prepares ahead of the step

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if not self.shards:
            raise ValueError("config.shards is empty")
        from cosmicman.model.activations import ActivationConfig

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
            raise ValueError(f"bucket_step {self.bucket_step} must be a multiple of hola_map_factor "
                             f"{self.hola_map_factor}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.checkpoint_every < 0 or self.checkpoints_keep < 1:
            raise ValueError("checkpoint_every must be >= 0 and checkpoints_keep >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError("caption_dropout must be in [0, 1]")
        if self.noise_offset < 0:
            raise ValueError("noise_offset must be >= 0")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError("snr_gamma must be > 0 (or None to disable)")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError("prediction_type must be None, 'epsilon' or 'v_prediction'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def load(cls, url: str) -> TrainConfig:
        with fsspec.open(url, "rt") as f:
            return cls.from_dict(json.load(f))


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf: training stops, nothing is published."""


# --------------------------------------------------------------------------------------------------
def code_version() -> str | None:
    """$COSMICMAN_CODE_VERSION, else the git sha of this checkout (with '-dirty' if modified), else None."""
    if os.environ.get("COSMICMAN_CODE_VERSION"):
        return os.environ["COSMICMAN_CODE_VERSION"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str, dist: DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # one GPU per rank; an explicit index is also what torch.cuda.set_device needs
        name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def build_components(cfg: TrainConfig) -> Components:
    from cosmicman.model.activations import ActivationConfig, apply_activation
    from cosmicman.model.components import build_tiny_components, load_components

    if cfg.pretrained:
        comps = load_components(cfg.pretrained)
    else:
        comps = build_tiny_components(cfg.seed if cfg.tiny_seed is None else cfg.tiny_seed,
                                      resolution=cfg.resolution, family=cfg.family)
    # Prime: every SiLU site (SDXL's hard-coded add_embedding included) gets the configured activation;
    # the choice is recorded in the UNet config and survives save / load_unet_with_activation.
    apply_activation(comps.unet, ActivationConfig(cfg.act_fn, cfg.ff_act_fn))
    return comps


# --------------------------------------------------------------------------------------------------
def check_output_free(url: str, overwrite: bool) -> None:
    fs, path = fs_and_path(url)
    if fs.exists(posixpath.join(path, RUN_FILE)) and not overwrite:
        raise FileExistsError(f"{url} already holds a published model ({RUN_FILE}); set overwrite=true "
                              "or choose another output_url")


def publish_folder(local_dir: str | Path, url: str, overwrite: bool = False) -> None:
    """Copy ``local_dir`` to ``url`` so that a crash leaves nothing half-visible (see module doc)."""
    local_dir = Path(local_dir)
    fs, final = fs_and_path(url)
    check_output_free(url, overwrite)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    marker = [p for p in files if p.relative_to(local_dir).as_posix() == RUN_FILE]
    others = [p for p in files if p not in marker]
    try:
        for p in others + marker:
            dest = posixpath.join(tmp, p.relative_to(local_dir).as_posix())
            if is_local(fs):
                fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            fs.put_file(str(p), dest)
        if fs.exists(final):
            fs.rm(final, recursive=True)  # an overwrite, or the remains of a crashed publish (no marker)
        if is_local(fs):
            fs.makedirs(posixpath.dirname(final) or "/", exist_ok=True)
            os.replace(tmp, final)  # atomic rename of the whole folder
        else:
            for p in others + marker:  # the marker last
                rel = p.relative_to(local_dir).as_posix()
                fs.copy(posixpath.join(tmp, rel), posixpath.join(final, rel))
            fs.rm(tmp, recursive=True)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
        finally:
            raise


# --------------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow on the parameters' device).

    Same schedule as diffusers' ``EMAModel`` defaults (what the released code used): at optimization
    step n the decay is 0 for n = 1 (shadow = weights) and ``min(decay, (1 + s) / (10 + s))`` with
    s = n - 1 afterwards. One fused ``_foreach_lerp_`` per step."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.decay = float(decay)
        self.optimization_step = 0
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        s = self.optimization_step - 1
        return 0.0 if s <= 0 else min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def step(self, params: list[torch.Tensor]) -> None:
        self.optimization_step += 1
        w = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], w)

    @torch.no_grad()
    def copy_to(self, params: list[torch.Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "optimization_step": self.optimization_step, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimization_step = int(state["optimization_step"])
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)


def checkpoint_root(cfg: TrainConfig) -> str:
    return (cfg.checkpoint_url or f"{cfg.output_url.rstrip('/')}.checkpoints").rstrip("/")


# checkpoint config keys that must match on resume (the rest, e.g. steps / log_every, may change)
RESUME_MUST_MATCH = ("shards", "pretrained", "family", "resolution", "batch_size", "grad_accum", "seed",
                     "tiny_seed", "act_fn", "ff_act_fn", "shuffle_buffer", "hola_map_factor", "ema_decay",
                     "buckets", "bucket_step", "bucket_max_ratio", "deepspeed", "mask_resize")


# --------------------------------------------------------------------------------------------------
class DaringTrainer:
    """Components, optimizer (or DeepSpeed engine), EMA and one training (micro-)step.

    ``step(batch)`` takes a collated batch -- decoded (``pixel_values``, ``input_ids``) or from the latent
    cache (``latent_mean``, ``latent_std``, ``hidden``, ``pooled``) -- and returns the step record on an
    accumulation boundary (after the optimizer step), None before it. Random draws per micro-batch, in
    order: latent sample, noise, offset noise, timesteps (device generator); caption dropout (CPU
    generator, so deciding it never waits for the device)."""

    def __init__(self, cfg: TrainConfig, dist: DistEnv | None = None, comps: Components | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or DistEnv()
        self.say = say or (lambda msg: None)
        self.device = resolve_device(cfg.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + self.dist.rank)
        self.cpu_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 + self.dist.rank)

        self.comps = comps or build_components(cfg)
        c = self.comps
        if cfg.prediction_type:
            c.scheduler.register_to_config(prediction_type=cfg.prediction_type)  # also what gets published
        self.unet = c.unet.to(self.device).train()
        self.vae = c.vae.to(self.device).eval().requires_grad_(False)
        for enc in c.text_encoders:
            enc.to(self.device).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.conditioner = TextConditioner(c)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.pred_type = c.scheduler.config.prediction_type
        if self.pred_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.pred_type!r}")
        self.n_t = c.scheduler.config.num_train_timesteps
        self.alphas_cumprod = c.scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        tok = c.tokenizers[0]
        self.max_len = tok.model_max_length if tok.model_max_length < 10_000 else 77
        self.store = install_capture(self.unet) if cfg.beta > 0 else None
        self.empty_cond = (self.conditioner.encode(tok("", padding="max_length", max_length=self.max_len,
                                                       truncation=True, return_tensors="pt"
                                                       ).input_ids.to(self.device))
                           if cfg.caption_dropout > 0 else None)

        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                                           fused=self.device.type == "cuda")
        self.engine = None
        self.model: Any = self.unet
        self.model_dtype: torch.dtype | None = None   # inputs cast to it (DeepSpeed bf16 engine)
        if cfg.deepspeed:
            self._init_deepspeed()
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.micro = 0
        self.steps_done = 0
        self._acc: list[torch.Tensor] = []
        self._dropped = 0

    def _init_deepspeed(self) -> None:
        import deepspeed

        cfg = self.cfg
        ds_cfg = load_deepspeed_config(cfg.deepspeed, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
                                       grad_clip=cfg.max_grad_norm, bf16=cfg.mixed_precision == "bf16")
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            deepspeed.init_distributed()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.unet, optimizer=self.optimizer,
                                                                 model_parameters=self.params, config=ds_cfg)
        self.model = self.engine
        self.params = [p for p in self.engine.module.parameters() if p.requires_grad]
        if ds_cfg["bf16"]["enabled"]:
            self.model_dtype = torch.bfloat16
        self.say(f"DeepSpeed ZeRO-{ds_cfg['zero_optimization'].get('stage', 0)} on {self.dist.world_size} "
                 f"rank(s), bf16={ds_cfg['bf16']['enabled']}, offload="
                 f"{ds_cfg['zero_optimization'].get('offload_optimizer', {}).get('device', 'none')}")

    # -- pieces of a step ---------------------------------------------------------------------------
    def hola_layers(self, image_hw: tuple[int, int]) -> list[str]:
        """Cross-attention layers whose maps are at (H/f, W/f) for an image of ``image_hw`` pixels."""
        f = self.cfg.hola_map_factor
        want = (image_hw[0] // f) * (image_hw[1] // f)
        counts = cross_attention_query_counts(
            self.unet, (image_hw[0] // self.vae_factor, image_hw[1] // self.vae_factor))
        return sorted(n for n, q in counts.items() if q == want)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], posterior_mean: bool = False) -> tuple[torch.Tensor, TextConditioning]:
        """(latents * scaling, text conditioning): sampled (or the mean) from the cached posterior, or
        encoded here."""
        if "latent_mean" in batch:
            latents = batch["latent_mean"].to(self.device, non_blocking=True)
            if not posterior_mean:
                std = batch["latent_std"].to(self.device, non_blocking=True)
                # the same draw DiagonalGaussianDistribution.sample makes
                latents = latents + std * torch.randn(latents.shape, generator=self.gen, device=self.device,
                                                      dtype=latents.dtype)
            cond = TextConditioning(batch["hidden"], batch.get("pooled")).to(self.device)
        else:
            posterior = self.vae.encode(batch["pixel_values"].to(self.device, non_blocking=True)).latent_dist
            latents = posterior.mean if posterior_mean else posterior.sample(generator=self.gen)
            cond = self.conditioner.encode(batch["input_ids"].to(self.device, non_blocking=True))
        return latents * self.scaling, cond

    def encode_for_cache(self, pixels: torch.Tensor, ids: torch.Tensor, batch: dict[str, Any]
                         ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device)).latent_dist
            cond = self.conditioner.encode(ids.to(self.device))
        out = {"latent_mean": dist.mean, "latent_std": dist.std, "hidden": cond.hidden}
        if cond.pooled is not None:
            out["pooled"] = cond.pooled
        return out

    def _unet_inputs(self, batch: dict[str, Any], latents: torch.Tensor, cond: TextConditioning,
                     capture: bool) -> tuple[dict[str, Any], HolaContext | None]:
        """UNet keyword arguments (conditioning, SDXL time ids, the HOLA context when capturing)."""
        image_hw = (latents.shape[-2] * self.vae_factor, latents.shape[-1] * self.vae_factor)
        time_ids = None
        if self.comps.family == "sdxl":
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], image_hw)
        kwargs = self.conditioner.unet_kwargs(cond, time_ids, self.model_dtype)
        ctx = None
        if capture:
            f = self.cfg.hola_map_factor
            ctx = HolaContext(map_hw=(image_hw[0] // f, image_hw[1] // f), key_length=self.max_len)
            kwargs["cross_attention_kwargs"] = {"hola_ctx": ctx}
        return kwargs, ctx

    def micro_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Forward and backward of one micro-batch: (loss, noise loss, HOLA loss, caption dropped)."""
        cfg = self.cfg
        latents, cond = self.encode(batch)
        B = latents.shape[0]
        dropped = False
        if cfg.caption_dropout > 0:  # per micro-batch, as released: empty prompt, no HOLA
            dropped = bool(torch.rand((), generator=self.cpu_gen) < cfg.caption_dropout)
            if dropped:
                cond = self.empty_cond.expand(B)
        noise = torch.randn(latents.shape, generator=self.gen, device=self.device, dtype=latents.dtype)
        if cfg.noise_offset > 0:
            noise = noise + cfg.noise_offset * torch.randn(
                (B, latents.shape[1], 1, 1), generator=self.gen, device=self.device, dtype=latents.dtype)
        t = torch.randint(0, self.n_t, (B,), generator=self.gen, device=self.device).long()
        sched = self.comps.scheduler
        noisy = sched.add_noise(latents, noise, t)
        target = noise if self.pred_type == "epsilon" else sched.get_velocity(latents, noise, t)

        kwargs, ctx = self._unet_inputs(batch, latents, cond, capture=self.store is not None)
        if self.store is not None:
            self.store.clear()
        inp = noisy if self.model_dtype is None else noisy.to(self.model_dtype)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.mixed_precision == "bf16" and self.engine is None):
            pred = self.model(inp, t, **kwargs).sample
        if cfg.snr_gamma is None:
            noise_loss = F.mse_loss(pred.float(), target.float())
        else:  # min-SNR-gamma (Hang et al. 2023), as diffusers' train_text_to_image.py
            ac = self.alphas_cumprod[t]
            snr = ac / (1.0 - ac)
            w = torch.clamp(snr, max=cfg.snr_gamma)
            w = w / snr if self.pred_type == "epsilon" else w / (snr + 1.0)
            per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
            noise_loss = (per * w).mean()
        if self.store is not None and not dropped:
            if not self.store.maps:
                raise ValueError(f"no cross-attention layer has {ctx.map_hw[0]}x{ctx.map_hw[1]} queries for "
                                 f"latents of {tuple(latents.shape[-2:])} (hola_map_factor={cfg.hola_map_factor})")
            hola = hola_loss(self.store.maps, batch["group_masks"], batch["spans"],
                             reduction=cfg.hola_reduction, map_hw=ctx.map_hw)
        else:
            hola = noise_loss.new_zeros(())
        loss = cfg.alpha * noise_loss + cfg.beta * hola
        if self.engine is not None:
            # no finiteness check here (it would stall the device mid-step): a non-finite step is caught
            # right after the engine's update, before anything is checkpointed or published
            self.engine.backward(loss)
        else:
            if self.micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
            (loss / cfg.grad_accum).backward()
        return loss.detach(), noise_loss.detach(), hola.detach(), dropped

    def step(self, batch: dict[str, Any]) -> dict[str, float] | None:
        loss, noise_loss, hola, dropped = self.micro_step(batch)
        self._acc.append(torch.stack([loss, noise_loss, hola.float()]))
        self._dropped += int(dropped)
        self.micro += 1
        if self.engine is not None:
            self.engine.step()  # steps the optimizer on the accumulation boundary only
        if self.micro < self.cfg.grad_accum:
            return None
        self.micro = 0
        if self.engine is not None:
            gnorm = torch.as_tensor(self.engine.get_global_grad_norm() or 0.0, dtype=torch.float32)
        else:
            if self.cfg.max_grad_norm and self.cfg.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            else:
                gnorm = torch.linalg.vector_norm(
                    torch.stack([p.grad.detach().float().norm() for p in self.params if p.grad is not None]))
        means = torch.stack(self._acc).mean(dim=0)
        if self.dist.world_size > 1:
            # losses reported as the mean over ranks; a NaN on any rank reaches all, so all stop together
            torch.distributed.all_reduce(means)
            means = means / self.dist.world_size
        values = torch.cat([means, gnorm.detach().float().reshape(1).to(means.device)]).tolist()  # one sync
        self._acc = []
        if not all(map(math.isfinite, values)):
            raise NonFiniteLossError(f"non-finite loss at step {self.steps_done + 1}/{self.cfg.steps} "
                                     f"(loss={values[0]} noise={values[1]} hola={values[2]} "
                                     f"grad_norm={values[3]}; batch keys {batch['keys']}); "
                                     "stopping without publishing")
        if self.engine is None:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.params)
        self.steps_done += 1
        rec = {"loss": values[0], "noise": values[1], "hola": values[2], "grad_norm": values[3]}
        if self.cfg.caption_dropout > 0:
            rec["caption_dropped"] = self._dropped
        self._dropped = 0
        return rec

    # -- state ----------------------------------------------------------------------------------------
    def generators(self) -> dict[str, torch.Generator]:
        return {"device": self.gen, "cpu": self.cpu_gen}

    def shared_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ema": self.ema.state_dict() if self.ema is not None else None}
        if self.engine is None:
            state.update(unet=self.unet.state_dict(), optimizer=self.optimizer.state_dict())
        return state

    def load_shared_state(self, state: dict[str, Any], ckpt_path: str) -> None:
        if self.engine is not None:
            load_engine_checkpoint(ckpt_path, self.engine)
        else:
            self.unet.load_state_dict(state["unet"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint holds no EMA state but ema_decay > 0")
            self.ema.load_state_dict(state["ema"])

    def publish_weights(self) -> str:
        """EMA weights into the UNet when those are published; returns which weights it now holds."""
        if self.ema is not None and self.cfg.save_ema:
            self.ema.copy_to(self.params)
            return "ema"
        return "raw"

    @torch.no_grad()
    def attention_alignment(self, batches: list[dict[str, Any]],
                            timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, seed: int = 0) -> dict[str, Any]:
        """Share of each group's cross-attention mass inside its mask (``cosmicman.model.alignment``), on
        ``batches`` (posterior means noised at ``timesteps``, fixed seed), whatever ``beta`` was."""
        store = self.store if self.store is not None else install_capture(self.unet)
        was_training = self.unet.training
        self.unet.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tally = AlignmentTally()
        try:
            for batch in batches:
                latents, cond = self.encode(batch, posterior_mean=True)
                kwargs, ctx = self._unet_inputs(batch, latents, cond, capture=True)
                shares = []
                for step_t in timesteps:
                    noise = torch.randn(latents.shape, generator=gen, device=self.device, dtype=latents.dtype)
                    t = torch.full((latents.shape[0],), int(step_t), device=self.device, dtype=torch.long)
                    noisy = self.comps.scheduler.add_noise(latents, noise, t)
                    store.clear()
                    with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                        enabled=self.cfg.mixed_precision == "bf16"):
                        self.unet(noisy if self.model_dtype is None else noisy.to(self.model_dtype), t, **kwargs)
                    share, area, valid = mask_mass_share(store.maps, batch["group_masks"].to(self.device),
                                                         batch["spans"].to(self.device))
                    shares.append(share)
                tally.add(torch.stack(shares).mean(0), area, valid, batch["group_names"])
        finally:
            if self.store is None:
                uninstall_capture(self.unet)
            self.unet.train(was_training)
        return {**tally.summary(), "timesteps": list(timesteps), "batches": len(batches),
                "map_factor": self.cfg.hola_map_factor}

    def finish(self) -> None:
        """Stock attention processors back and the UNet in eval mode, ready to be saved."""
        if self.store is not None:
            uninstall_capture(self.unet)
        if self.cfg.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()
        self.unet.eval()


# --------------------------------------------------------------------------------------------------
class DataStream:
    """The deterministic batch stream of one rank, with what exact resume needs.

    Samples a batch has not yet taken (other buckets' partial batches) are *pending*; the resume point
    is the lowest pending position (``start``) plus the positions at or above it already used
    (``exclude``): re-reading from ``start`` and dropping ``exclude`` rebuilds the same buffers."""

    def __init__(self, cfg: TrainConfig, trainer: DaringTrainer, dist: DistEnv,
                 resume: dict[str, Any] | None, say: Callable[[str], None]) -> None:
        from cosmicman.model.buckets import aspect_buckets, bucket_batches

        self.cfg = cfg
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
                    raise ValueError(f"no cross-attention layer has maps at 1/{cfg.hola_map_factor} of a {hw} "
                                     f"image; choose another hola_map_factor / resolution / bucket_step")
        self.cache = None
        self.cache_stats: dict[str, int] = {}
        if cfg.cache_url:
            from cosmicman.model.latent_cache import LatentCache, build_cache, cache_fingerprint, weights_digest

            c = trainer.comps
            geometry.update(map_factor=cfg.hola_map_factor, mask_resize=cfg.mask_resize,
                            vae_factor=trainer.vae_factor)
            self.cache = LatentCache(cfg.cache_url, cache_fingerprint(weights_digest(c.vae, *c.text_encoders),
                                                                      c.family, geometry))
            self.cache_stats = build_cache(self.cache, self._reader(decoding=True), trainer.encode_for_cache,
                                           cfg.batch_size, dist.rank, dist.world_size, say)
            barrier()  # every rank's units are in before anyone reads
            self.cache_url = self.cache.url
        self.dataset = self._reader(shuffle_buffer=cfg.shuffle_buffer, repeat=True, rank=dist.rank,
                                    world_size=dist.world_size, start=(resume or {}).get("start", 0),
                                    exclude=(resume or {}).get("exclude", ()))
        # resume bookkeeping, shared with the loader thread
        self._lock = threading.Lock()
        self.pending: set[int] = set()
        self.used: set[int] = set()
        self.next_pos = (resume or {}).get("start", 0)  # every yielded sample below it is used or pending
        # a loader thread decodes (and pins, for a GPU) the next batches while the device trains
        self._pin = trainer.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch_batches))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(bucket_batches(self._tracked(), cfg.batch_size),),
                                        name="cosmicman-loader", daemon=True)
        self._thread.start()

    def _reader(self, decoding: bool = False, **order: Any):
        """A dataset over the shards with this run's geometry: decoding images, or from the cache."""
        from cosmicman.model.buckets import BucketedShardDataset
        from cosmicman.model.shards import ShardDataset

        cfg = self.cfg
        order["seed"] = cfg.seed
        if self.cache is not None and not decoding:
            from cosmicman.model.latent_cache import CachedShardDataset

            return CachedShardDataset(self.urls, self.cache, **order)
        if cfg.buckets:
            return BucketedShardDataset(self.urls, self.tokenizer, self.sizes, map_factor=cfg.hola_map_factor,
                                        mask_resize=cfg.mask_resize, **order)
        f = cfg.hola_map_factor
        return ShardDataset(self.urls, self.tokenizer, cfg.resolution, mask_size=(cfg.resolution // f,) * 2,
                            mask_resize=cfg.mask_resize, **order)

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


def _ensure_dist_env(cfg: TrainConfig) -> None:
    """One process without a launcher: the rendezvous variables torch.distributed needs for DeepSpeed."""
    if cfg.deepspeed and "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))


def train(cfg: TrainConfig, log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the training loop, checkpoint, and publish (rank 0); returns the training_run record."""
    t_start = time.perf_counter()
    _ensure_dist_env(cfg)
    dist = DistEnv.from_env()
    if dist.world_size > 1 and not cfg.deepspeed:
        raise ValueError(f"WORLD_SIZE={dist.world_size}: several ranks need a DeepSpeed config "
                         "(deepspeed: zero2 | zero2_offload | a JSON path); ZeRO stage 0 is plain data parallel")
    base_say = log_fn or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def say(msg: str) -> None:
        base_say(msg if dist.world_size == 1 else f"[rank {dist.rank}] {msg}")

    if dist.is_main:
        check_output_free(cfg.output_url, cfg.overwrite)
    ckpt_root = checkpoint_root(cfg)
    resume_from = None
    if cfg.resume:
        found = list_checkpoints(ckpt_root)
        if found:
            resume_from = found[-1][1]
        else:
            say(f"resume: no complete checkpoint under {ckpt_root}; starting from step 0")

    trainer = DaringTrainer(cfg, dist, say=say)
    state = rank_state = None
    if resume_from:
        say(f"resuming from {resume_from}")
        state, rank_state = load_checkpoint(resume_from, dist)
        old = state["config"]
        bad = [k for k in RESUME_MUST_MATCH if old.get(k) != getattr(cfg, k)]
        if bad:
            raise ValueError(f"cannot resume from {resume_from}: config keys {bad} differ "
                             f"({ {k: old.get(k) for k in bad} } in the checkpoint)")
    resume_data = rank_state["data"] if rank_state else None

    history: list[dict[str, Any]] = []
    start_step = 0
    samples_seen = 0
    if state is not None:
        trainer.load_shared_state(state, resume_from)
        start_step = trainer.steps_done = int(state["step"])
        history = list(state["history"])
        samples_seen = int(rank_state["samples_seen"])
        set_rng_state(trainer.generators(), rank_state["rng"])
        state = rank_state = None  # free memory
    data = DataStream(cfg, trainer, dist, resume_data, say)
    n_params = sum(p.numel() for p in trainer.params)
    hola_layers = trainer.hola_layers(data.sizes[len(data.sizes) // 2]) if trainer.store is not None else []
    say(f"training {cfg.pretrained or 'tiny ' + cfg.family} UNet ({n_params / 1e6:.2f}M params) on "
        f"{trainer.device} x {dist.world_size} for {cfg.steps} steps, micro-batch {cfg.batch_size} x "
        f"accumulation {cfg.grad_accum}, {len(data.urls)} shard(s), {len(data.sizes)} bucket(s)"
        f"{', latent cache ' + data.cache_url if cfg.cache_url else ''}; HOLA {cfg.hola_reduction} at "
        f"1/{cfg.hola_map_factor} over {len(hola_layers)} layers")
    try:
        t_loop = time.perf_counter()
        t_data = 0.0
        for step in range(start_step + 1, cfg.steps + 1):
            rec = None
            while rec is None:
                t0 = time.perf_counter()
                batch = next(data)
                t_data += time.perf_counter() - t0
                samples_seen += len(batch["keys"])
                rec = trainer.step(batch)
            rec = {"step": step, **rec}
            history.append(rec)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                t0 = time.perf_counter()
                shared = None
                if dist.is_main:
                    shared = {"step": step, "history": history, "config": dataclasses.asdict(cfg),
                              **trainer.shared_state()}
                where = save_checkpoint(ckpt_root, step, shared, {
                    "rng": rng_state(trainer.generators()), "data": data.resume_point(),
                    "samples_seen": samples_seen}, cfg.checkpoints_keep, dist, trainer.engine)
                say(f"checkpoint {where} ({time.perf_counter() - t0:.1f} s)")
            if step == start_step + 1 or step == cfg.steps or step % max(1, cfg.log_every) == 0:
                dt = (time.perf_counter() - t_loop) / (step - start_step)
                say(f"step {step}/{cfg.steps} loss={rec['loss']:.5f} noise={rec['noise']:.5f} "
                    f"hola={rec['hola']:.5f} grad_norm={rec['grad_norm']:.3f} ({dt:.3f} s/step)")
    finally:
        data.close()  # the loader thread stops with the loop, also on an error
    train_seconds = time.perf_counter() - t_loop

    published = trainer.publish_weights()
    alignment = None
    if dist.is_main and cfg.alignment_batches > 0:
        t0 = time.perf_counter()
        alignment = trainer.attention_alignment(data.fixed_batches(cfg.alignment_batches))
        say(f"attention inside group masks: {alignment['mean']:.3f} (chance {alignment['chance']:.3f}, "
            f"{alignment['n_pairs']} sample-groups; {time.perf_counter() - t0:.1f} s)")
    trainer.finish()
    steps_run = cfg.steps - start_step
    last = history[-1]
    k = min(10, len(history))
    metrics = {
        "loss_first": history[0]["loss"], "loss_last": last["loss"],
        "noise_loss_first": history[0]["noise"], "noise_loss_last": last["noise"],
        "hola_loss_first": history[0]["hola"], "hola_loss_last": last["hola"],
        "loss_mean_first10": sum(h["loss"] for h in history[:k]) / k,
        "loss_mean_last10": sum(h["loss"] for h in history[-k:]) / k,
        "steps": cfg.steps, "samples_seen": samples_seen * dist.world_size,
        "seconds": None,  # filled below
        "train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, steps_run),
        "resumed_from_step": start_step, "steps_run": steps_run, "published_unet": published,
        "caption_dropped_batches": sum(h.get("caption_dropped", 0) for h in history),
        "data_seconds": t_data, "world_size": dist.world_size,
        "hola_layers": hola_layers, "hola_map_factor": cfg.hola_map_factor, "buckets": [list(b) for b in data.sizes],
        "dataset_stats": dict(data.dataset.stats), "latent_cache": data.cache_stats,
        "device": str(trainer.device), "attention_alignment": alignment,
    }
    record = {
        "config": dataclasses.asdict(cfg),
        "data": {"shards": data.urls},
        "code_version": code_version(),
        "metrics": metrics,
        "loss_history": history,
        "versions": {"torch": torch.__version__, "diffusers": _version("diffusers"),
                     "transformers": _version("transformers"), "deepspeed": _version("deepspeed")},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if dist.is_main:
        with tempfile.TemporaryDirectory(prefix="cosmicman-train-") as tmp:
            trainer.comps.pipeline().save_pretrained(tmp)
            metrics["seconds"] = time.perf_counter() - t_start
            Path(tmp, RUN_FILE).write_text(json.dumps(record, indent=2))
            publish_folder(tmp, cfg.output_url, overwrite=cfg.overwrite)
        say(f"published {cfg.output_url} ({metrics['seconds']:.1f} s)")
    barrier()
    return record


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------
def _config_from(arg: str | None, extras: dict[str, Any] | None) -> TrainConfig:
    if arg:
        return TrainConfig.load(arg)
    raw = (extras or {}).get("config")
    if raw is None:
        raise SystemExit("no config: pass --config <json path or URL> (or pipes extras['config'])")
    if isinstance(raw, str):
        return TrainConfig.load(raw)
    return TrainConfig.from_dict(dict(raw))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmicman.model.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config: local path or fsspec URL")
    # the `deepspeed` launcher passes --local_rank; the rank comes from the environment it also sets
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    # Pipes only on rank 0: every rank inherits the launcher's environment, one reports.
    # (dagster_pipes 1.13 has no module-level is_dagster_pipes_process(); the env-var loader's check is it)
    if DistEnv.from_env().is_main and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        from cosmicman.model.pipes_channel import ObjectStoreMessageWriter

        with open_dagster_pipes(message_writer=ObjectStoreMessageWriter()) as context:
            cfg = _config_from(args.config, dict(context.extras or {}))

            def say(msg: str) -> None:
                context.log.info(msg)
                print(msg, file=sys.stderr, flush=True)

            record = train(cfg, log_fn=say)
            context.report_asset_materialization(metadata={
                k: {"raw_value": v, "type": "json"} if isinstance(v, dict) else v for k, v in summary(record).items()})
        return 0
    if not args.config and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        # a non-zero rank under Pipes: the config comes from the extras rank 0 reads; read them too
        from dagster_pipes import PipesDefaultContextLoader

        params = PipesEnvVarParamsLoader().load_context_params()
        with PipesDefaultContextLoader().load_context(params) as data:
            cfg = _config_from(None, dict(data.get("extras") or {}))
    else:
        cfg = _config_from(args.config, None)
    try:
        # stdout carries only the summary: libraries that log to stdout (DeepSpeed) go to stderr meanwhile
        with contextlib.redirect_stdout(sys.stderr):
            record = train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if DistEnv.from_env().is_main:
        print(json.dumps(summary(record), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
