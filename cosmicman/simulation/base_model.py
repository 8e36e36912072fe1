"""The embedded base model: a tiny SD-1.5-layout text-to-image model pretrained by our own code on the
synthetic world, so that the local flywheel fine-tunes a model that already draws people.

What is trained, in order (one CPU core, seeded, deterministic: the same config gives the same bytes):

1. **Data.** ``images`` kept single-person renders of the world ``world_seed`` on a square
   ``render_side`` canvas (the whole person, flat colours, the world's photo finish), box-downsampled
   to ``resolution``; ``captions_per_image`` captions per image from the project's caption builder
   (``cosmicman.datasets.captions.build_caption``: adjective / group shuffle and the 10 % group drop
   drawn per caption, as the released loader does).
2. **VAE** (``AutoencoderKL``, the tiny factor-4 geometry of ``cosmicman.model.components``), trained as
   an autoencoder (MSE + a KL weight of ``vae_kl_weight``, SD's near-deterministic regime) for
   ``vae_steps``; its ``scaling_factor`` is then set to 1 / std of the latents, as SD's 0.18215 was.
3. **Text encoder** (a tiny ``CLIPTextModel``): **kept fixed at its seeded random initialisation**. The
   Daring fine-tune freezes the text encoder, so the base and every fine-tune read the same text
   features; a random 2-layer CLIP keeps each token's identity (its embedding, mixed with the tokens
   before it), which is all cross-attention needs to tie words to regions; and it costs no training
   time. Its weights are rounded to fp16 before anything reads them, so the fp16 file is exact.
4. **UNet** (``UNet2DConditionModel``, cross-attention at both levels, 16x16 and 8x8 latents) pretrained
   with the noise loss (epsilon, min-SNR-gamma weighting, ``caption_dropout`` empty prompts so that
   classifier-free guidance works) on the cached latents and text states, AdamW with warm-up, EMA
   weights published.

The result is a stock diffusers folder (``StableDiffusionPipeline.save_pretrained``): the trainer loads
it as ``TrainConfig.pretrained``, ``cosmicman.model.pipelines.load_pipeline`` draws from it. Weights are
stored as fp16 (configs ask for float32 compute, so every stock loader gives fp32 modules).
``python -m cosmicman.simulation.base_model --out DIR`` rebuilds it; :func:`ensure_base_model` builds it
once under ``$COSMICMAN_HOME/base_model/<config hash>`` when no committed copy matches the config.

The default config's build is committed (``base_model_weights/``, 5.9 MB of fp16 weights + the 3.6 MB
tokenizer file): it took 690 s of CPU on one thread (render 26 s, VAE 105 s, UNet 551 s), too long to
build on a clean clone inside ``make run``. Its ``base_model.json`` records the config, hash and timings;
``tests/simulation/test_base_model.py`` pins that it is the default config's.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the model code load only when a model is built: the code location imports this
    import torch
    from PIL import Image

BASE_MODEL_FORMAT = 1  # bump when the build changes what a config hash stands for
COMMITTED_DIR = Path(__file__).with_name("base_model_weights")
BUILD_RECORD = "base_model.json"


@dataclass(frozen=True)
class BaseModelConfig:
    """Everything the base model is a function of (its hash names the cached folder)."""

    seed: int = 0
    world_seed: int = 424_242  # a world no sourcing batch or test-prompt set uses
    resolution: int = 64
    render_side: int = 128
    images: int = 3072
    captions_per_image: int = 2
    vae_steps: int = 250
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_channels: tuple[int, ...] = (32, 64)
    unet_steps: int = 1200
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0

    @classmethod
    def from_record(cls, config: dict[str, Any]) -> BaseModelConfig:
        """The config a build record (``base_model.json``) holds (JSON turned tuples into lists)."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**fields)

    def digest(self) -> str:
        payload = json.dumps({"format": BASE_MODEL_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def quick_config(seed: int = 0) -> BaseModelConfig:
    """A seconds-long build of the same pipeline (tests: determinism, the folder's layout)."""
    return BaseModelConfig(
        seed=seed, images=16, captions_per_image=1, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1
    )


# ------------------------------------------------------------------------------------------------ data
@dataclass
class TrainingSet:
    pixels: torch.Tensor  # (N, 3, R, R) in [-1, 1]
    captions: list[list[str]]  # per image, captions_per_image texts
    attributes: list[dict[str, str]]


def render_people(world_seed: int, count: int, render_side: int, resolution: int, start: int = 0) -> list[Any]:
    """``count`` kept world samples ``start..`` on a square canvas, box-downsampled to ``resolution``:
    (PIL image, attributes) pairs."""
    from PIL import Image

    from cosmicman.simulation.world import SyntheticWorld

    world = SyntheticWorld(seed=world_seed, width=render_side, height=render_side)
    out = []
    for i in range(start, start + count):
        s = world.sample(i, case="kept")
        with Image.open(io.BytesIO(s.image_bytes)) as img:
            small = img.convert("RGB").resize((resolution, resolution), Image.Resampling.BOX)
        out.append((small, s.attributes))
    return out


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def training_set(cfg: BaseModelConfig) -> TrainingSet:
    import numpy as np

    from cosmicman.core.tokenizer import load_clip_tokenizer
    from cosmicman.datasets.captions import build_caption

    tok = load_clip_tokenizer()
    people = render_people(cfg.world_seed, cfg.images, cfg.render_side, cfg.resolution)
    captions = [
        [
            build_caption(attrs, tokenizer=tok, rng=np.random.default_rng([cfg.seed, i, k])).text
            for k in range(cfg.captions_per_image)
        ]
        for i, (_, attrs) in enumerate(people)
    ]
    return TrainingSet(to_pixels([im for im, _ in people]), captions, [dict(a) for _, a in people])


# ------------------------------------------------------------------------------------------ components
def unet_config(cfg: BaseModelConfig) -> dict[str, Any]:
    from cosmicman.model.components import tiny_unet_config

    n = len(cfg.unet_channels)
    return dict(
        tiny_unet_config(sample_size=cfg.resolution // 4),
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
    )


def _fp16_exact(module: torch.nn.Module) -> torch.nn.Module:
    """Round every weight to a float16 value (kept in float32): saving it as fp16 then loses nothing."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def untrained_components(cfg: BaseModelConfig) -> Any:
    """The components before any training, deterministic in ``cfg.seed`` (the "untrained" reference)."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel

    from cosmicman.model.components import Components, build_tiny_components, tiny_text_config, tiny_vae_config

    stock = build_tiny_components(cfg.seed, resolution=cfg.resolution)  # the tokenizer and SD's scheduler
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(**unet_config(cfg))
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL(**tiny_vae_config(cfg.resolution))
    torch.manual_seed(cfg.seed + 2)
    text = _fp16_exact(CLIPTextModel(tiny_text_config()))
    return Components(unet, vae, [text], stock.tokenizers, stock.scheduler, "sd")


# ------------------------------------------------------------------------------------------- training
def train_vae(vae: Any, pixels: torch.Tensor, cfg: BaseModelConfig, say: Callable[[str], None]) -> float:
    """Autoencoder training; returns the last reconstruction MSE (on [-1, 1] pixels)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(cfg.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    mse = float("nan")
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, len(pixels), (cfg.vae_batch,), generator=gen)
        x = pixels[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss_rec = F.mse_loss(rec, x)
        loss = loss_rec + cfg.vae_kl_weight * post.kl().mean()
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * min(1.0, (step + 1) / cfg.warmup_steps) * _cosine(step, cfg.vae_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        mse = loss_rec.item()
        if (step + 1) % 100 == 0 or step + 1 == cfg.vae_steps:
            say(f"vae step {step + 1}/{cfg.vae_steps}: reconstruction mse {mse:.4f}")
    vae.eval()
    return mse


def _cosine(step: int, total: int, floor: float = 0.1) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def encode_latents(vae: Any, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            post = vae.encode(pixels[i : i + batch]).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def encode_texts(comps: Any, texts: list[str], batch: int = 256) -> torch.Tensor:
    import torch

    tok, enc = comps.tokenizers[0], comps.text_encoders[0].eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids = tok(texts[i : i + batch], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            out.append(enc(ids.input_ids).last_hidden_state)
    return torch.cat(out)


def train_unet(
    comps: Any,
    means: torch.Tensor,
    stds: torch.Tensor,
    hidden: torch.Tensor,
    empty: torch.Tensor,
    cfg: BaseModelConfig,
    say: Callable[[str], None],
) -> float:
    """Noise-loss pretraining on cached latents (already scaled) and text states; the EMA weights end up
    in ``comps.unet``. ``hidden`` is (N * captions_per_image, 77, D), image i's captions at i * K + k.
    Returns the mean loss of the last 100 steps."""
    import torch
    import torch.nn.functional as F

    unet, sched = comps.unet, comps.scheduler
    gen = torch.Generator().manual_seed(cfg.seed + 23)
    params = [p for p in unet.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    ac = sched.alphas_cumprod.float()
    n_t = int(sched.config["num_train_timesteps"])
    unet.train()
    recent: list[float] = []
    k = cfg.captions_per_image
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(means), (cfg.unet_batch,), generator=gen)
        cap = torch.randint(0, k, (cfg.unet_batch,), generator=gen)
        latents = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        cond = hidden[idx * k + cap]
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, n_t, (cfg.unet_batch,), generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        snr = ac[t] / (1 - ac[t])
        weight = torch.clamp(snr, max=cfg.snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * min(1.0, (step + 1) / cfg.warmup_steps) * _cosine(step, cfg.unet_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # diffusers EMAModel's warm-up
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        recent = (recent + [loss.item()])[-100:]
        if (step + 1) % 100 == 0 or step + 1 == cfg.unet_steps:
            say(f"unet step {step + 1}/{cfg.unet_steps}: loss (last 100) {sum(recent) / len(recent):.4f}")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    return sum(recent) / max(1, len(recent))


# ------------------------------------------------------------------------------------------- building
def build_base_model(
    out: str | os.PathLike, cfg: BaseModelConfig | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pretrain the base model of ``cfg`` on one thread and save it at ``out`` (which must not exist);
    returns the build record (also written as ``base_model.json`` in the folder)."""
    import torch

    cfg = cfg or BaseModelConfig()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the budget is one core; one thread also makes the float sums reproducible
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        timings: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.process_time()
            timings[name] = round(now - since, 2)
            return now

        data = training_set(cfg)
        c = lap("render_cpu_s", cpu0)
        say(f"rendered {len(data.pixels)} people at {cfg.resolution}px, {cfg.captions_per_image} captions each")
        comps = untrained_components(cfg)
        vae_mse = train_vae(comps.vae, data.pixels, cfg, say)
        c = lap("vae_cpu_s", c)
        means, stds = encode_latents(comps.vae, data.pixels)
        scaling = float(1.0 / means.std())
        comps.vae.register_to_config(scaling_factor=scaling)
        flat = [t for caps in data.captions for t in caps]
        hidden = encode_texts(comps, flat)
        empty = encode_texts(comps, [""])
        c = lap("encode_cpu_s", c)
        unet_loss = train_unet(comps, means * scaling, stds * scaling, hidden, empty, cfg, say)
        lap("unet_cpu_s", c)
        record = {
            "format": BASE_MODEL_FORMAT,
            "config": dataclasses.asdict(cfg),
            "config_hash": cfg.digest(),
            "vae_reconstruction_mse": round(vae_mse, 5),
            "vae_scaling_factor": scaling,
            "unet_final_loss": round(unet_loss, 5),
            "threads": 1,
            "cpu_s": round(time.process_time() - cpu0, 1),
            "wall_s": round(time.perf_counter() - wall0, 1),
            **timings,
        }
        save_components(comps, out, record)
        say(f"base model saved at {out} ({record['cpu_s']} s CPU, {record['wall_s']} s wall)")
        return record
    finally:
        torch.set_num_threads(threads)


def save_components(comps: Any, out: Path, record: dict[str, Any]) -> None:
    """The stock pipeline folder, weights as fp16, configs asking for float32 modules; then the record."""
    from safetensors.torch import load_file, save_file

    tmp = Path(tempfile.mkdtemp(prefix=".base_model-", dir=out.parent if out.parent.exists() else None))
    try:
        comps.pipeline().save_pretrained(str(tmp))
        for weights in sorted(tmp.glob("*/*.safetensors")):
            tensors = load_file(str(weights))
            save_file(
                {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
                str(weights),
                {"format": "pt"},
            )
        te_config = tmp / "text_encoder" / "config.json"
        te = json.loads(te_config.read_text())
        te["dtype"] = "float32"  # transformers loads a model in its config's dtype: fp16 storage, fp32 compute
        te_config.write_text(json.dumps(te, indent=2, sort_keys=True) + "\n")
        (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_build_record(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / BUILD_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {BUILD_RECORD}: it is not a base model folder built here")
    return dict(json.loads(path.read_text()))


def cached_dir(home: str | os.PathLike, cfg: BaseModelConfig) -> Path:
    return Path(home) / "base_model" / cfg.digest()


def ensure_base_model(
    home: str | os.PathLike, cfg: BaseModelConfig | None = None, say: Callable[[str], None] = print
) -> Path:
    """The base model folder of ``cfg``: the committed one when its hash matches, else the one cached
    under ``home`` (built there on first use: minutes on one core, said before it starts)."""
    cfg = cfg or BaseModelConfig()
    if COMMITTED_DIR.is_dir() and read_build_record(COMMITTED_DIR).get("config_hash") == cfg.digest():
        return COMMITTED_DIR
    folder = cached_dir(home, cfg)
    if not folder.is_dir():
        say(f"building the base model {cfg.digest()} at {folder} (no committed copy of this config)")
        build_base_model(folder, cfg, say)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cosmicman.simulation.base_model",
        description="Pretrain the embedded base model on the synthetic world (one core, deterministic).",
    )
    parser.add_argument("--out", required=True, help="folder to create (a stock diffusers SD pipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a seconds-long build (checks, not a usable model)")
    args = parser.parse_args(argv)
    cfg = quick_config(args.seed) if args.quick else dataclasses.replace(BaseModelConfig(), seed=args.seed)
    build_base_model(args.out, cfg)


if __name__ == "__main__":
    main()
