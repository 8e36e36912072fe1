"""Text-to-image generation from a trained model folder (diffusers ``StableDiffusionPipeline`` layout)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import torch
from PIL import Image

from cosmicman.model.notices import progress_bars_hidden, silence_torchvision_fallback

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline


@contextlib.contextmanager
def local_model_dir(url: str) -> Iterator[str]:
    """A local folder holding the model at ``url``: the folder itself when local, else a downloaded copy."""
    fs, path = fsspec.core.url_to_fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        for remote in fs.find(path):
            local = Path(tmp) / remote[len(path) :].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        yield tmp


def load_pipeline(model_dir: str | Path, device: str = "cpu") -> StableDiffusionPipeline:
    # importing the pipeline module makes transformers probe for torchvision: silence that notice first
    silence_torchvision_fallback()
    # not `from diffusers`: typed as a dummy there
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

    from cosmicman.model.activations import load_unet_with_activation

    with progress_bars_hidden():
        # the UNet goes through our loader so a Prime activation choice is re-applied at every site
        unet = load_unet_with_activation(str(model_dir), subfolder="unet")
        pipe = StableDiffusionPipeline.from_pretrained(
            str(model_dir), unet=unet, safety_checker=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    steps: int = 10,
    guidance_scale: float = 5.0,
    seed: int = 0,
    resolution: int | None = None,
    batch_size: int = 8,
) -> list[Image.Image]:
    """One image per prompt, deterministic in ``seed`` (prompt i uses generator seed ``seed + i``)."""
    size = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=gens,
            height=size,
            width=size,
            output_type="pil",
        )
        images += out.images
    return images
