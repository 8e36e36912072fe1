"""Model components of the Daring trainer: tiny ones built from configs, real ones from a pretrained folder.

Two families, both stock diffusers / transformers classes (no fork), so a trained UNet loads wherever
SD loads:

- ``"sd"`` (SD-1.5 layout): one CLIP text encoder; the UNet is conditioned on its last hidden state.
- ``"sdxl"``: two text encoders (CLIP-L and OpenCLIP-bigG layouts); the UNet is conditioned on the
  concatenation of both penultimate hidden states, plus SDXL's "text_time" added condition: the second
  encoder's pooled, projected embedding and six size/crop ids (see ``cosmicman.model.conditioning``).

Both factories return a ``Components`` record. Tiny geometry (``build_tiny_components``), chosen so one
CPU train step at batch 4 takes ~0.1 s:
- VAE: 3 blocks -> downsampling factor 4, 4 latent channels; a 64x64 image gives a 16x16 latent.
- SD UNet: block_out_channels (32, 64), cross-attention in every block (2 levels: 16x16 and 8x8 latent),
  cross_attention_dim 32 = the text encoder's hidden size, 2 heads per level (``attention_head_dim`` is a
  head *count* in diffusers). With a factor-4 VAE the paper's 1/16-of-image map level (4x4 on 64x64) does
  not exist; the 1/8 level (8x8 = 64 queries: 4 cross-attention layers) does, so tiny runs use
  ``hola_map_factor=8``. SD-1.5 (factor-8 VAE) at 512 uses the default 16 (32x32 level).
- SDXL UNet: SDXL's layout at that size -- plain first level, cross-attention (2 transformer layers,
  linear projections) at the 8x8 level only, cross_attention_dim 64 (= 32 + 32 from the two encoders).
- Text encoders: CLIP with the real CLIP vocabulary size 49408, hidden 32, 77 positions; SDXL's second
  one with a 32-d projection.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # not `from diffusers`: typed as dummies
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from cosmicman.core.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, load_clip_tokenizer

SUPPORTED_ACT_FNS = ("silu", "swish", "mish", "gelu", "relu")
FAMILIES = ("sd", "sdxl")

TINY_TEXT_HIDDEN = 32
TINY_TIME_EMBED = 8  # SDXL addition_time_embed_dim at tiny size (256 in SDXL)


@dataclass
class Components:
    """Everything a Stable Diffusion (``family="sd"``) or SDXL pipeline holds, minus the safety checker."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    scheduler: DDPMScheduler
    family: str = "sd"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        want = 1 if self.family == "sd" else 2
        if len(self.text_encoders) != want or len(self.tokenizers) != want:
            raise ValueError(f"{self.family} needs {want} text encoder(s) and tokenizer(s)")

    def pipeline(self):
        """The diffusers pipeline over these components (what the trainer saves)."""
        if self.family == "sd":
            from diffusers import StableDiffusionPipeline

            return StableDiffusionPipeline(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                tokenizer=self.tokenizers[0],
                unet=self.unet,
                scheduler=self.scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            text_encoder_2=self.text_encoders[1],
            tokenizer=self.tokenizers[0],
            tokenizer_2=self.tokenizers[1],
            unet=self.unet,
            scheduler=self.scheduler,
        )


def _check_act_fn(act_fn: str) -> None:
    if act_fn not in SUPPORTED_ACT_FNS:
        raise ValueError(f"act_fn {act_fn!r} not supported; choose one of {SUPPORTED_ACT_FNS}")


def tiny_unet_config(act_fn: str = "silu", sample_size: int = 16, family: str = "sd") -> dict[str, Any]:
    _check_act_fn(act_fn)
    common = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        attention_head_dim=2,
        norm_num_groups=8,
        act_fn=act_fn,
    )
    if family == "sd":
        return dict(
            common,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_TEXT_HIDDEN,
        )
    return dict(
        common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * TINY_TEXT_HIDDEN,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED,
        projection_class_embeddings_input_dim=TINY_TEXT_HIDDEN + 6 * TINY_TIME_EMBED,
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


def tiny_text_config(projection_dim: int | None = None) -> CLIPTextConfig:
    kw: dict[str, Any] = {"projection_dim": projection_dim} if projection_dim else {}
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
        **kw,
    )


def build_tiny_components(seed: int = 0, act_fn: str = "silu", resolution: int = 64, family: str = "sd") -> Components:
    """Tiny, randomly initialised SD- or SDXL-style components (deterministic in ``seed``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(act_fn, sample_size=resolution // 4, family=family))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config(resolution))
        torch.manual_seed(seed + 2)
        encoders: list[torch.nn.Module] = [CLIPTextModel(tiny_text_config())]
        if family == "sdxl":
            torch.manual_seed(seed + 3)
            encoders.append(CLIPTextModelWithProjection(tiny_text_config(projection_dim=TINY_TEXT_HIDDEN)))
    finally:
        torch.random.set_rng_state(gen_state)
    tokenizers = [load_clip_tokenizer()]
    if family == "sdxl":
        # SDXL's second tokenizer is the same BPE but pads with "!" (id 0), as OpenCLIP does
        tok2 = copy.deepcopy(load_clip_tokenizer())  # the loader's instance is shared: never mutate it
        tok2.pad_token = "!"
        tokenizers.append(tok2)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )  # as SD-1.5's scheduler config
    return Components(unet, vae, encoders, tokenizers, scheduler, family)


class PretrainedUnavailableError(RuntimeError):
    """A pretrained model id / folder could not be loaded (offline, missing files, bad id)."""


def detect_family(pretrained: str, revision: str = "main") -> str:
    """ "sdxl" when the pipeline's ``model_index.json`` names a ``text_encoder_2``, else "sd"."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(pretrained, revision=revision)
    return "sdxl" if index.get("text_encoder_2") else "sd"


def load_components(pretrained: str, act_fn: str | None = None, revision: str = "main") -> Components:
    """SD-1.5- or SDXL-style components from a hub id or a local diffusers folder (family detected from
    ``model_index.json``). ``act_fn`` overrides the UNet's activation (weights unchanged).

    Raises ``PretrainedUnavailableError`` with a clear message when the model cannot be reached
    (e.g. no network / ``HF_HUB_OFFLINE=1`` and nothing cached)."""
    unet_kwargs: dict[str, Any] = {}
    if act_fn is not None:
        _check_act_fn(act_fn)
        unet_kwargs["act_fn"] = act_fn
    try:
        family = detect_family(pretrained, revision)
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", revision=revision, **unet_kwargs)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", revision=revision)
        encoders: list[torch.nn.Module] = [
            CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", revision=revision)
        ]
        tokenizers = [CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)]
        if family == "sdxl":
            encoders.append(
                CLIPTextModelWithProjection.from_pretrained(pretrained, subfolder="text_encoder_2", revision=revision)
            )
            tokenizers.append(CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer_2", revision=revision))
        scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", revision=revision)
    except (OSError, ValueError, json.JSONDecodeError) as exc:  # hub errors derive from OSError
        raise PretrainedUnavailableError(
            f"could not load pretrained components from {pretrained!r}: {exc}. This needs either a local "
            "diffusers folder (model_index.json; unet, vae, text_encoder(_2), tokenizer(_2), scheduler "
            "subfolders) or model-hub access (or a populated HF cache). For offline work use "
            "pretrained=None (tiny components)."
        ) from exc
    return Components(unet, vae, encoders, tokenizers, scheduler, family)
