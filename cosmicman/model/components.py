"""Model components of the Daring trainer: tiny ones built from configs, real ones from a pretrained folder.

Both factories return ``(unet, vae, text_encoder, tokenizer, noise_scheduler)`` in the layout of a
diffusers Stable Diffusion pipeline, so the trainer and its saved output do not care which was used.

Tiny geometry (``build_tiny_components``), chosen so one CPU train step at batch 4 takes ~0.1 s:
- VAE: 3 blocks -> downsampling factor 4, 4 latent channels; a 64x64 image gives a 16x16 latent.
- UNet: block_out_channels (32, 64), cross-attention in every block (2 levels: 16x16 and 8x8 latent),
  cross_attention_dim 32 = the text encoder's hidden size, 2 heads at the 32-channel level and 2 at the
  64-channel one (``attention_head_dim`` is a head *count* in diffusers).
  With a factor-4 VAE the paper's 1/16-of-image map level (4x4 on 64x64) does not exist; the 1/8 level
  (8x8 = 64 queries: down_blocks.1, mid_block, up_blocks.0 -> 4 cross-attention layers) does, so tiny
  runs use ``hola_map_factor=8``. SD-1.5 (factor-8 VAE) at 512 uses the default 16 (32x32 level).
- Text encoder: CLIPTextModel with the real CLIP vocabulary size 49408, hidden 32, 77 positions.

The activation is a config value (``act_fn``: silu, swish, mish, gelu, relu are what diffusers accepts);
it reaches the time embedding, every ResnetBlock2D and ``conv_act``. For pretrained weights it is passed
to ``from_pretrained`` and persists in the saved config.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cosmicman.data.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, load_clip_tokenizer

SUPPORTED_ACT_FNS = ("silu", "swish", "mish", "gelu", "relu")

TINY_TEXT_HIDDEN = 32


def _check_act_fn(act_fn: str) -> None:
    if act_fn not in SUPPORTED_ACT_FNS:
        raise ValueError(f"act_fn {act_fn!r} not supported; choose one of {SUPPORTED_ACT_FNS}")


def tiny_unet_config(act_fn: str = "silu", sample_size: int = 16) -> dict[str, Any]:
    _check_act_fn(act_fn)
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_HIDDEN,
        attention_head_dim=2,
        norm_num_groups=8,
        act_fn=act_fn,
    )


def tiny_vae_config(sample_size: int = 64) -> dict[str, Any]:
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
    )


def tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_tiny_components(seed: int = 0, act_fn: str = "silu", resolution: int = 64):
    """Tiny, randomly initialised SD-style components (deterministic in ``seed``)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(act_fn, sample_size=resolution // 4))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config(resolution))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(tiny_text_config())
    finally:
        torch.random.set_rng_state(gen_state)
    tokenizer = load_clip_tokenizer()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, prediction_type="epsilon")
    return unet, vae, text_encoder, tokenizer, scheduler


class PretrainedUnavailableError(RuntimeError):
    """A pretrained model id / folder could not be loaded (offline, missing files, bad id)."""


def load_components(pretrained: str, act_fn: str | None = None, revision: str | None = None):
    """SD-1.5-style components from a hub id or a local diffusers folder (subfolders unet, vae,
    text_encoder, tokenizer, scheduler). ``act_fn`` overrides the UNet's activation (weights unchanged).

    Raises ``PretrainedUnavailableError`` with a clear message when the model cannot be reached
    (e.g. no network / ``HF_HUB_OFFLINE=1`` and nothing cached)."""
    unet_kwargs: dict[str, Any] = {}
    if act_fn is not None:
        _check_act_fn(act_fn)
        unet_kwargs["act_fn"] = act_fn
    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", revision=revision,
                                                    **unet_kwargs)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)
        scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", revision=revision)
    except (OSError, ValueError) as exc:  # EnvironmentError / hub errors derive from OSError
        raise PretrainedUnavailableError(
            f"could not load pretrained components from {pretrained!r}: {exc}. This needs either a local "
            "diffusers folder with unet/vae/text_encoder/tokenizer/scheduler subfolders or model-hub access "
            "(or a populated HF cache). For offline work use pretrained=None (tiny components)."
        ) from exc
    return unet, vae, text_encoder, tokenizer, scheduler
