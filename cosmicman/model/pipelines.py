"""Text-to-image pipelines from a model folder: SD-1.5 or SDXL by its ``model_index.json``, on any scheduler.

A model folder is what the trainer publishes (``diffusers`` ``save_pretrained`` layout): ``model_index.json``
names the pipeline class, ``StableDiffusionPipeline`` (family "sd") or ``StableDiffusionXLPipeline``
("sdxl"). The UNet goes through :func:`cosmicman.model.activations.load_unet_with_activation` so a Prime
activation choice is re-applied at every site. Generation and evaluation both load through here.

A scheduler is chosen by class name among the ones diffusers declares compatible with the folder's own
(``scheduler.compatibles``), built from the folder's scheduler config (or from a recorded config, to
reproduce a run). Images are drawn with one explicitly seeded CPU ``torch.Generator`` per image, so an image
depends on its seed and not on what else was in the batch's random stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import torch
from PIL import Image

from cosmicman.model.notices import progress_bars_hidden, silence_torchvision_fallback

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

    TextToImagePipeline = StableDiffusionPipeline | StableDiffusionXLPipeline

MODEL_INDEX = "model_index.json"
# model_index.json's _class_name -> family (the names components.FAMILIES uses)
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


class GenerationError(ValueError):
    """Bad input to generation (no model folder, unknown scheduler, bad settings); the message is one line
    that says what exists or what to set."""


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


def read_model_index(model_dir: str | Path, shown_as: str | None = None) -> dict[str, Any]:
    """The folder's ``model_index.json``; a ``GenerationError`` when the folder holds no supported pipeline.
    ``shown_as`` names the folder in that message (the model's URL when ``model_dir`` is a downloaded copy)."""
    index_path = Path(model_dir, MODEL_INDEX)
    if not index_path.is_file():
        exists = Path(model_dir).is_dir() and any(Path(model_dir).iterdir())
        raise GenerationError(
            f"model folder {shown_as or model_dir} {f'has no {MODEL_INDEX}' if exists else 'is missing or empty'}: "
            f"pass a diffusers model folder as the trainer publishes it ({MODEL_INDEX}, unet, vae, "
            "text_encoder, tokenizer, scheduler)"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{index_path} is not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or index.get("_class_name") not in PIPELINE_FAMILIES:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise GenerationError(f"{index_path} names pipeline {found!r}; supported: {', '.join(PIPELINE_FAMILIES)}")
    return index


def model_sha256(model_dir: str | Path) -> str:
    """SHA-256 over what the pipeline loads: ``model_index.json`` and every file of its component folders
    (weights, configs, tokenizer files), each as its relative path and bytes, in path order. Files beside
    them (the trainer's ``training_run.json``) do not change the images and are left out."""
    root = Path(model_dir)
    components = sorted(k for k, v in read_model_index(root).items() if not k.startswith("_") and isinstance(v, list))
    files = [root / MODEL_INDEX] + sorted(
        p for name in components if (root / name).is_dir() for p in (root / name).rglob("*") if p.is_file()
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# a scheduler is typed Any: diffusers splits it over SchedulerMixin (compatibles) and ConfigMixin (config,
# from_config), and no one type names both
def scheduler_classes(scheduler: Any) -> dict[str, Any]:
    """Class name -> class of the schedulers diffusers declares compatible with ``scheduler`` (itself too)."""
    classes = {cls.__name__: cls for cls in scheduler.compatibles}
    classes[type(scheduler).__name__] = type(scheduler)
    return dict(sorted(classes.items()))


def make_scheduler(current: Any, name: str, config: Mapping[str, Any] | None = None) -> Any:
    """Scheduler ``name`` built from ``config`` (default: ``current``'s config, i.e. the model folder's)."""
    classes = scheduler_classes(current)
    if name not in classes:
        raise GenerationError(f"unknown scheduler {name!r}; this model's compatible schedulers: {', '.join(classes)}")
    try:
        return classes[name].from_config(dict(config if config is not None else current.config))
    except ImportError as exc:  # diffusers' stand-in for a scheduler whose extra package is missing
        raise GenerationError(f"scheduler {name} cannot be built here: {' '.join(str(exc).split())}") from exc


def load_pipeline(
    model_dir: str | Path,
    device: str = "cpu",
    scheduler: str | None = None,
    scheduler_config: Mapping[str, Any] | None = None,
) -> TextToImagePipeline:
    """The folder's SD or SDXL pipeline on ``device``; ``scheduler`` (a class name) replaces the folder's
    scheduler, built from ``scheduler_config`` when given (a recorded run) else from the folder's config."""
    index = read_model_index(model_dir)
    # importing a pipeline module makes transformers probe for torchvision: silence that notice first
    silence_torchvision_fallback()
    from cosmicman.model.activations import load_unet_with_activation

    pipe: TextToImagePipeline
    with progress_bars_hidden():
        unet = load_unet_with_activation(str(model_dir), subfolder="unet")
        if PIPELINE_FAMILIES[index["_class_name"]] == "sd":
            # not `from diffusers`: the names are typed as dummies there
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                str(model_dir), unet=unet, safety_checker=None, requires_safety_checker=False
            )
        else:
            from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
                StableDiffusionXLPipeline,
            )

            # no invisible watermark: it would change the pixels a settings file pins, and its package is
            # not a dependency (diffusers would add it whenever the package happens to be installed)
            pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir), unet=unet, add_watermarker=False)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(pipe.scheduler, scheduler, scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def family_of(pipe: TextToImagePipeline) -> str:
    """ "sd" or "sdxl" (the names ``cosmicman.model.components.FAMILIES`` uses)."""
    return PIPELINE_FAMILIES[type(pipe).__name__]


def default_size(pipe: TextToImagePipeline) -> int:
    """The side the model was built for: its UNet's sample size times the VAE's downsampling factor."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def render_images(
    pipe: TextToImagePipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 10,
    guidance_scale: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    negative_prompt: str | None = None,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order; image i starts from ``torch.Generator().manual_seed(seeds[i])``.

    Images are drawn ``batch_size`` at a time: the same seeds in the same batches give the same pixels on
    the same machine and library versions (a different batching may differ in the last bits of the UNet's
    float sums)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: one seed per image")
    side = default_size(pipe)
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        out = pipe(
            chunk,
            negative_prompt=[negative_prompt] * len(chunk) if negative_prompt is not None else None,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            height=height or side,
            width=width or side,
            output_type="pil",
        )
        images += out.images
    return images
