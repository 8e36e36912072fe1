"""Daring trainer: fine-tune the whole UNet with ``alpha * L_noise + beta * L_HOLA`` (paper Eq. 4).

    python -m cosmicman.model.train --config <json path or fsspec URL>

Launched by Dagster Pipes (``PipesSubprocessClient`` / ``PipesK8sClient``) it logs progress through the
pipes context and reports one asset materialization; the config then may also come from the pipes extras
(``extras["config"]``: a dict or a URL). Standalone it prints the summary JSON on stdout (progress on
stderr).

Output (published to ``output_url``): a diffusers ``StableDiffusionPipeline`` folder (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``) plus ``training_run.json`` (config,
shard list, code version, metrics). Publishing is atomic: files go to ``<output_url>.tmp-<id>`` first; on
a local filesystem that folder is renamed into place; on object stores the files are copied to the final
prefix with ``training_run.json`` last -- it is the completion marker readers must check.

Published UNet: with ``ema_decay > 0`` and ``save_ema`` (the defaults, as released) ``unet/`` holds the
EMA weights; otherwise the raw trained weights. ``training_run.json`` says which (``metrics.published_unet``);
the raw weights of the last step are in the last checkpoint when checkpointing is on.

Checkpoints (``checkpoint_every`` N > 0): ``<checkpoint_url or output_url + ".checkpoints">/step-%08d/``
with ``state.pt`` (UNet, AdamW, EMA, RNG states -- torch CPU/CUDA, the trainer's generator, python,
numpy --, data position, loss history, config) and a ``COMPLETE`` marker. Written atomically (local:
tmp folder + rename; object stores: marker last, folders without it are ignored); the last
``checkpoints_keep`` are kept. ``resume=true`` continues from the latest complete one (if any): the data
stream is deterministic (seeded shard order and shuffle buffer), so the consumed batches are skipped
(re-read, one batch per step) and the run continues bit-for-bit as if uninterrupted.

Loss options (defaults off for the tiny setup; released values in brackets): ``noise_offset`` [0.05],
``caption_dropout`` per batch [0.1] (the whole batch gets "" and no HOLA), ``snr_gamma`` (min-SNR
weighting, diffusers' formulas for epsilon / v-prediction), ``prediction_type`` (overrides the
scheduler's; the published scheduler carries it). Later work (DeepSpeed, aspect buckets, latent caching,
mixed precision) plugs in around ``train()``'s step; nothing here assumes a single device beyond ``device``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import posixpath
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from cosmicman.model.attention import (HolaContext, cross_attention_query_counts, install_capture,
                                       map_hw_for, uninstall_capture)
from cosmicman.model.hola import MASK_RESIZE_MODES, REDUCTIONS, hola_loss
from cosmicman.model.shards import ShardDataset, batches, expand_shard_urls

log = logging.getLogger("cosmicman.train")

RUN_FILE = "training_run.json"
CKPT_STATE = "state.pt"
CKPT_MARKER = "COMPLETE"          # written last: a checkpoint folder without it is ignored
CKPT_PREFIX = "step-"


@dataclass
class TrainConfig:
    shards: list[str]                      # shard URLs (brace / glob / directory expanded)
    output_url: str                        # where the diffusers folder is published (path, file://, s3://)
    pretrained: str | None = None          # hub id / local diffusers folder; None: tiny components
    resolution: int = 512                  # square training resolution (pixels)
    steps: int = 1000
    batch_size: int = 4
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
    device: str = "auto"                   # "auto" | "cpu" | "cuda" | "cuda:1" ...
    overwrite: bool = False                # replace a published output_url
    tiny_seed: int | None = None           # seed of the tiny components (default: seed)
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
    caption_dropout: float = 0.0           # per batch (released 0.1): "" prompt, no HOLA for the batch
    snr_gamma: float | None = None         # min-SNR weighting gamma (None disables)
    prediction_type: str | None = None     # override the scheduler's: "epsilon" | "v_prediction"
    mixed_precision: str = "no"            # "bf16": autocast the UNet forward; weights and AdamW state stay fp32

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if not self.shards:
            raise ValueError("config.shards is empty")
        from cosmicman.model.activations import ActivationConfig

        ActivationConfig(self.act_fn, self.ff_act_fn)  # rejects unknown activation names before any work
        if self.hola_reduction not in REDUCTIONS:
            raise ValueError(f"hola_reduction must be one of {REDUCTIONS}")
        if self.mask_resize not in MASK_RESIZE_MODES:
            raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}")
        for name in ("steps", "batch_size", "resolution", "hola_map_factor"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
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
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def load(cls, url: str) -> "TrainConfig":
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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _build_components(cfg: TrainConfig):
    from cosmicman.model.components import build_tiny_components, load_components

    from cosmicman.model.activations import ActivationConfig, apply_activation

    if cfg.pretrained:
        parts = load_components(cfg.pretrained)
    else:
        seed = cfg.seed if cfg.tiny_seed is None else cfg.tiny_seed
        parts = build_tiny_components(seed, resolution=cfg.resolution)
    # Prime: every SiLU site (SDXL's hard-coded add_embedding included) gets the configured activation;
    # the choice is recorded in the UNet config and survives save / load_unet_with_activation.
    apply_activation(parts[0], ActivationConfig(cfg.act_fn, cfg.ff_act_fn))
    return parts


# --------------------------------------------------------------------------------------------------
def _fs_and_path(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _is_local(fs) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protos or "local" in protos


def check_output_free(url: str, overwrite: bool) -> None:
    fs, path = _fs_and_path(url)
    if fs.exists(posixpath.join(path, RUN_FILE)) and not overwrite:
        raise FileExistsError(f"{url} already holds a published model ({RUN_FILE}); set overwrite=true "
                              "or choose another output_url")


def publish_folder(local_dir: str | Path, url: str, overwrite: bool = False) -> None:
    """Copy ``local_dir`` to ``url`` so that a crash leaves nothing half-visible (see module doc)."""
    local_dir = Path(local_dir)
    fs, final = _fs_and_path(url)
    check_output_free(url, overwrite)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    marker = [p for p in files if p.relative_to(local_dir).as_posix() == RUN_FILE]
    others = [p for p in files if p not in marker]
    try:
        for p in others + marker:
            dest = posixpath.join(tmp, p.relative_to(local_dir).as_posix())
            if _is_local(fs):
                fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            fs.put_file(str(p), dest)
        if fs.exists(final):
            fs.rm(final, recursive=True)  # an overwrite, or the remains of a crashed publish (no marker)
        if _is_local(fs):
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


def checkpoint_root(cfg: "TrainConfig") -> str:
    return (cfg.checkpoint_url or f"{cfg.output_url.rstrip('/')}.checkpoints").rstrip("/")


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints under ``root`` (those holding the marker), by step."""
    fs, path = _fs_and_path(root)
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        if not name.startswith(CKPT_PREFIX) or ".tmp-" in name:
            continue
        try:
            step = int(name[len(CKPT_PREFIX):])
        except ValueError:
            continue
        if fs.exists(posixpath.join(p, CKPT_MARKER)):
            out.append((step, p))
    return sorted(out)


def save_checkpoint(root: str, step: int, state: dict[str, Any], keep: int) -> str:
    """Write ``state`` as ``<root>/step-<step>/`` atomically, then keep only the last ``keep``.

    Local filesystem: written into ``step-N.tmp-<id>`` and renamed into place. Object stores: the state
    file first, the ``COMPLETE`` marker last (readers ignore folders without it)."""
    fs, path = _fs_and_path(root)
    final = posixpath.join(path, f"{CKPT_PREFIX}{step:08d}")
    marker = json.dumps({"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if _is_local(fs):
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
        os.makedirs(tmp)
        try:
            torch.save(state, os.path.join(tmp, CKPT_STATE))
            Path(tmp, CKPT_MARKER).write_text(marker)
            if os.path.exists(final):
                fs.rm(final, recursive=True)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                fs.rm(tmp, recursive=True)
            raise
    else:
        if fs.exists(final):
            fs.rm(final, recursive=True)
        with fs.open(posixpath.join(final, CKPT_STATE), "wb") as f:
            torch.save(state, f)
        with fs.open(posixpath.join(final, CKPT_MARKER), "wt") as f:
            f.write(marker)
    complete = list_checkpoints(root)
    for _, old in complete[:-keep]:
        fs.rm(old, recursive=True)
    for p in fs.ls(path, detail=False):  # remains of a checkpoint write killed half-way
        if ".tmp-" in posixpath.basename(p.rstrip("/")):
            fs.rm(p, recursive=True)
    return final


def load_checkpoint(path: str) -> dict[str, Any]:
    fs, p = _fs_and_path(path)
    with fs.open(posixpath.join(p, CKPT_STATE), "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=False)  # our own file: holds RNG tuples


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "generator": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(gen: torch.Generator, st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["generator"])
    if st.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])


# checkpoint config keys that must match on resume (the rest, e.g. steps / log_every, may change)
RESUME_MUST_MATCH = ("shards", "pretrained", "resolution", "batch_size", "seed", "tiny_seed", "act_fn", "ff_act_fn",
                     "shuffle_buffer", "hola_map_factor", "ema_decay")


# --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the training loop, save and publish; returns the training_run record."""
    say = log_fn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    check_output_free(cfg.output_url, cfg.overwrite)
    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    ckpt_root = checkpoint_root(cfg)
    resume_state = None
    if cfg.resume:
        found = list_checkpoints(ckpt_root)
        if found:
            say(f"resuming from {found[-1][1]}")
            resume_state = load_checkpoint(found[-1][1])
            old = resume_state["config"]
            bad = [k for k in RESUME_MUST_MATCH if old.get(k) != getattr(cfg, k)]
            if bad:
                raise ValueError(f"cannot resume from {found[-1][1]}: config keys {bad} differ "
                                 f"({ {k: old.get(k) for k in bad} } in the checkpoint)")
        else:
            say(f"resume: no complete checkpoint under {ckpt_root}; starting from step 0")

    unet, vae, text_encoder, tokenizer, scheduler = _build_components(cfg)
    if cfg.prediction_type:
        scheduler.register_to_config(prediction_type=cfg.prediction_type)  # also what gets published
    unet.to(device).train()
    vae.to(device).eval().requires_grad_(False)
    text_encoder.to(device).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # HOLA level: (H/f, W/f); fail before training if no cross-attention layer has that query count
    res = cfg.resolution
    map_hw = map_hw_for((res, res), cfg.hola_map_factor)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if res % vae_factor:
        raise ValueError(f"resolution {res} is not a multiple of the VAE factor {vae_factor}")
    counts = cross_attention_query_counts(unet, (res // vae_factor, res // vae_factor))
    hola_layers = sorted(n for n, c in counts.items() if c == map_hw[0] * map_hw[1])
    store = None
    if cfg.beta > 0:
        if not hola_layers:
            raise ValueError(
                f"no cross-attention layer has {map_hw[0]}x{map_hw[1]} queries at resolution {res} "
                f"(hola_map_factor={cfg.hola_map_factor}); available query counts: "
                f"{sorted(set(counts.values()))}")
        store = install_capture(unet)
    max_len = tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77
    ctx = HolaContext(map_hw=map_hw, key_length=max_len)

    shard_urls = expand_shard_urls(cfg.shards)
    dataset = ShardDataset(shard_urls, tokenizer, res, mask_size=map_hw, mask_resize=cfg.mask_resize,
                           seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, repeat=True)
    data = batches(dataset, cfg.batch_size)
    empty_ids = tokenizer("", padding="max_length", max_length=max_len, truncation=True,
                          return_tensors="pt").input_ids.to(device) if cfg.caption_dropout > 0 else None

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
    n_t = scheduler.config.num_train_timesteps
    pred_type = scheduler.config.prediction_type
    if pred_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {pred_type!r}")
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    history: list[dict[str, float]] = []
    start_step = 0
    samples_seen = 0
    if resume_state is not None:
        unet.load_state_dict(resume_state["unet"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if ema is not None:
            if resume_state.get("ema") is None:
                raise ValueError("the checkpoint holds no EMA state but ema_decay > 0")
            ema.load_state_dict(resume_state["ema"])
        start_step = int(resume_state["step"])
        history = list(resume_state["history"])
        samples_seen = int(resume_state["data"]["samples_seen"])
        t0 = time.perf_counter()
        for _ in range(int(resume_state["data"]["batches"])):  # the stream is deterministic: skip
            next(data)
        say(f"skipped {resume_state['data']['batches']} consumed batches "
            f"({time.perf_counter() - t0:.1f} s)")
        _set_rng_state(gen, resume_state["rng"])
        resume_state = None  # free memory
    say(f"training {'tiny' if not cfg.pretrained else cfg.pretrained} UNet "
        f"({sum(p.numel() for p in params) / 1e6:.2f}M params) on {device} for {cfg.steps} steps, "
        f"batch {cfg.batch_size}, {len(shard_urls)} shard(s); HOLA {cfg.hola_reduction} at "
        f"{map_hw[0]}x{map_hw[1]} over {len(hola_layers) if store else 0} layers")

    t_loop = time.perf_counter()
    t_data = 0.0
    for step in range(start_step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        batch = next(data)
        t_data += time.perf_counter() - t0
        pixels = batch["pixel_values"].to(device)
        ids = batch["input_ids"].to(device)
        dropped = False
        if cfg.caption_dropout > 0:  # per batch, as released: empty prompt, no HOLA for this batch
            dropped = bool(torch.rand((), generator=gen, device=device).item() < cfg.caption_dropout)
            if dropped:
                ids = empty_ids.expand(ids.shape[0], -1)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=gen) * scaling
            enc = text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
        if cfg.noise_offset > 0:
            noise = noise + cfg.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=device, dtype=latents.dtype)
        t = torch.randint(0, n_t, (latents.shape[0],), generator=gen, device=device).long()
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if pred_type == "epsilon" else scheduler.get_velocity(latents, noise, t)

        if store is not None:
            store.clear()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            pred = unet(noisy, t, enc,
                        cross_attention_kwargs={"hola_ctx": ctx} if store is not None else None).sample
        if cfg.snr_gamma is None:
            noise_loss = F.mse_loss(pred.float(), target.float())
        else:  # min-SNR-gamma (Hang et al. 2023), as diffusers' train_text_to_image.py
            ac = alphas_cumprod[t]
            snr = ac / (1.0 - ac)
            w = torch.clamp(snr, max=cfg.snr_gamma)
            w = w / snr if pred_type == "epsilon" else w / (snr + 1.0)
            per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
            noise_loss = (per * w).mean()
        if store is not None and not dropped:
            hola = hola_loss(store.maps, batch["group_masks"].to(device), batch["spans"].to(device),
                             reduction=cfg.hola_reduction, map_hw=map_hw)
        else:
            hola = noise_loss.new_zeros(())
        loss = cfg.alpha * noise_loss + cfg.beta * hola
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss at step {step}/{cfg.steps}: noise={noise_loss.item()} hola={hola.item()} "
                f"(batch keys {batch['keys']}); stopping without publishing")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            gnorm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None))
        if not torch.isfinite(gnorm):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step}/{cfg.steps}; stopping "
                                     "without publishing")
        optimizer.step()
        if ema is not None:
            ema.step(params)
        samples_seen += pixels.shape[0]
        rec = {"step": step, "loss": loss.item(), "noise": noise_loss.item(), "hola": float(hola.item()),
               "grad_norm": float(gnorm)}
        if cfg.caption_dropout > 0:
            rec["caption_dropped"] = dropped
        history.append(rec)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            t0 = time.perf_counter()
            where = save_checkpoint(ckpt_root, step, {
                "step": step, "unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "rng": _rng_state(gen),
                "data": {"batches": step, "samples_seen": samples_seen},  # one batch per step
                "history": history, "config": dataclasses.asdict(cfg)}, cfg.checkpoints_keep)
            say(f"checkpoint {where} ({time.perf_counter() - t0:.1f} s)")
        if step == start_step + 1 or step == cfg.steps or step % max(1, cfg.log_every) == 0:
            dt = (time.perf_counter() - t_loop) / (step - start_step)
            say(f"step {step}/{cfg.steps} loss={rec['loss']:.5f} noise={rec['noise']:.5f} "
                f"hola={rec['hola']:.5f} grad_norm={rec['grad_norm']:.3f} ({dt:.3f} s/step)")
    train_seconds = time.perf_counter() - t_loop

    # ---- save ------------------------------------------------------------------------------------
    from diffusers import StableDiffusionPipeline

    if store is not None:
        uninstall_capture(unet)
    if cfg.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    unet.eval()
    published = "raw"
    if ema is not None and cfg.save_ema:
        ema.copy_to(params)
        published = "ema"
    steps_run = cfg.steps - start_step
    last = history[-1]
    k = min(10, len(history))
    metrics = {
        "loss_first": history[0]["loss"], "loss_last": last["loss"],
        "noise_loss_first": history[0]["noise"], "noise_loss_last": last["noise"],
        "hola_loss_first": history[0]["hola"], "hola_loss_last": last["hola"],
        "loss_mean_first10": sum(h["loss"] for h in history[:k]) / k,
        "loss_mean_last10": sum(h["loss"] for h in history[-k:]) / k,
        "steps": cfg.steps, "samples_seen": samples_seen,
        "seconds": None,  # filled below
        "train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, steps_run),
        "resumed_from_step": start_step, "steps_run": steps_run, "published_unet": published,
        "caption_dropped_batches": sum(1 for h in history if h.get("caption_dropped")),
        "data_seconds": t_data,
        "hola_layers": hola_layers if store is not None else [], "hola_map_hw": list(map_hw),
        "dataset_stats": dict(dataset.stats),
        "device": str(device),
    }
    with tempfile.TemporaryDirectory(prefix="cosmicman-train-") as tmp:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(tmp)
        metrics["seconds"] = time.perf_counter() - t_start
        record = {
            "config": dataclasses.asdict(cfg),
            "data": {"shards": shard_urls},
            "code_version": code_version(),
            "metrics": metrics,
            "loss_history": history,
            "versions": {"torch": torch.__version__, "diffusers": _version("diffusers"),
                         "transformers": _version("transformers")},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        Path(tmp, RUN_FILE).write_text(json.dumps(record, indent=2))
        publish_folder(tmp, cfg.output_url, overwrite=cfg.overwrite)
    say(f"published {cfg.output_url} ({metrics['seconds']:.1f} s)")
    return record


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:
        return None


def summary(record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"]
    return {
        "output_url": record["config"]["output_url"],
        "loss_first": m["loss_first"], "loss_last": m["loss_last"],
        "noise_loss_last": m["noise_loss_last"], "hola_loss_last": m["hola_loss_last"],
        "steps": m["steps"], "seconds": m["seconds"], "seconds_per_step": m["seconds_per_step"],
        "n_shards": len(record["data"]["shards"]), "code_version": record["code_version"] or "",
        "hola_reduction": record["config"]["hola_reduction"], "act_fn": record["config"]["act_fn"],
    }


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    # dagster_pipes 1.13 has no module-level is_dagster_pipes_process(); the env-var loader's check is it
    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_dagster_pipes() as context:
            cfg = _config_from(args.config, dict(context.extras or {}))

            def say(msg: str) -> None:
                context.log.info(msg)
                print(msg, file=sys.stderr, flush=True)

            record = train(cfg, log_fn=say)
            context.report_asset_materialization(metadata=summary(record))
        return 0
    cfg = _config_from(args.config, None)
    try:
        record = train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary(record), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
