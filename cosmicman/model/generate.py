"""Generation as a reproducible request: images in a folder, and beside them the settings that remake them.

``generate(request, out_dir)`` draws one image per seed from one prompt and writes ``generation.json``
beside the PNGs: the model (URL, pipeline class, a SHA-256 of what the pipeline loads), the scheduler (class
and full config), prompt, negative prompt, the person attributes the prompt was built from (when it was),
steps, guidance, size, batch size, device, each image's seed and a SHA-256 of its pixels, and the library
versions. ``request_from_settings`` turns that file back into the same request: on the CPU, with the same
library versions and the model unchanged (the recorded SHA-256 is checked before anything is drawn), the
images come out bit for bit the same (``differing_images`` checks it against the recorded pixel hashes).

The prompt is text here; a structured person description becomes text with the project's caption builder
in the caller (``cosmicman.cli.generate``), since the model package does not import the dataset stage.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosmicman.model.pipelines import (
    GenerationError,
    family_of,
    load_pipeline,
    local_model_dir,
    model_sha256,
    read_model_index,
    render_images,
)

SETTINGS_FILE = "generation.json"
SETTINGS_FORMAT = 1
# the distributions whose versions can change the pixels; recorded with every run
PIXEL_LIBRARIES = ("torch", "diffusers", "transformers", "numpy", "pillow", "cosmicman-prime")


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, one image per seed. ``scheduler`` is a diffusers scheduler class name (None: the model
    folder's own), built from ``scheduler_config`` when given (a recorded run) else from the folder's
    config. ``height``/``width`` default to the model's own size. ``person`` holds the protocol attributes
    ``prompt`` was built from (recorded, not re-read). ``model_sha256``, when set, is the model the images
    must come from: a different folder content is refused."""

    model_url: str
    prompt: str
    seeds: tuple[int, ...] = (0,)
    scheduler: str | None = None
    steps: int = 25
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    negative_prompt: str | None = None
    person: Mapping[str, str] | None = None
    device: str = "cpu"
    scheduler_config: Mapping[str, Any] | None = field(default=None, repr=False)
    model_sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise GenerationError("the prompt is empty: give a text prompt or a person description")
        if not self.seeds:
            raise GenerationError("no seeds: give at least one (one image per seed)")
        if len(set(self.seeds)) != len(self.seeds):
            raise GenerationError(f"seeds repeat ({list(self.seeds)}): a repeated seed draws the same image again")
        if self.steps < 1 or self.batch_size < 1:
            raise GenerationError(f"steps ({self.steps}) and batch size ({self.batch_size}) must be at least 1")
        for name, side in (("height", self.height), ("width", self.width)):
            if side is not None and (side < 8 or side % 8):
                raise GenerationError(f"{name} {side} is not a positive multiple of 8")
        if self.scheduler_config is not None and self.scheduler is None:
            raise GenerationError("a scheduler config needs its scheduler class name")


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's mode, size and pixel bytes (not of its PNG encoding)."""
    array = np.asarray(image)
    return hashlib.sha256(f"{image.mode}{array.shape}".encode() + array.tobytes()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in PIXEL_LIBRARIES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def image_name(index: int, seed: int) -> str:
    return f"{index:03d}_seed{seed}.png"


def generate(request: GenerationRequest, out_dir: str | Path) -> list[Path]:
    """Draw the request's images into ``out_dir`` (created), write ``generation.json`` beside them, and
    return the image paths in seed order."""
    with local_model_dir(request.model_url) as model_dir:
        read_model_index(model_dir, shown_as=request.model_url)
        digest = model_sha256(model_dir)
        if request.model_sha256 is not None and digest != request.model_sha256:
            raise GenerationError(
                f"the model at {request.model_url} is not the one the settings record (sha256 {digest[:12]}, "
                f"recorded {request.model_sha256[:12]}): pass --model with the folder the images were made from"
            )
        pipe = load_pipeline(model_dir, request.device, request.scheduler, request.scheduler_config)
        images = render_images(
            pipe,
            [request.prompt] * len(request.seeds),
            request.seeds,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            height=request.height,
            width=request.width,
            batch_size=request.batch_size,
            negative_prompt=request.negative_prompt,
        )
        model = {"url": request.model_url, "pipeline": type(pipe).__name__, "family": family_of(pipe)}
        scheduler = {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / image_name(i, seed) for i, seed in enumerate(request.seeds)]
    for image, path in zip(images, paths):
        image.save(path)
    settings = {
        "format": SETTINGS_FORMAT,
        "model": {**model, "sha256": digest},
        "scheduler": scheduler,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "person": dict(request.person) if request.person is not None else None,
        "steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "height": images[0].height,
        "width": images[0].width,
        "batch_size": request.batch_size,
        "device": request.device,
        "torch_threads": torch.get_num_threads(),
        "images": [
            {"file": path.name, "seed": seed, "pixels_sha256": pixels_sha256(image)}
            for path, seed, image in zip(paths, request.seeds, images)
        ],
        "versions": library_versions(),
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=_json_value) + "\n")
    return paths


def _json_value(value: Any) -> Any:
    """Scheduler configs may hold tuples or numpy scalars/arrays: their JSON form."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_REQUIRED_SETTINGS = {
    "model": dict,
    "scheduler": dict,
    "prompt": str,
    "steps": int,
    "guidance_scale": float | int,
    "height": int,
    "width": int,
    "batch_size": int,
    "images": list,
}


def read_settings(path: str | Path) -> dict[str, Any]:
    """A settings file written by :func:`generate`, checked for what a request needs."""
    try:
        settings = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise GenerationError(f"no settings file {path} (generate writes {SETTINGS_FILE} beside the images)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{path} is not valid JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(settings, dict) or settings.get("format") != SETTINGS_FORMAT:
        raise GenerationError(
            f"{path} is not a generation settings file (format {SETTINGS_FORMAT}, from {SETTINGS_FILE})"
        )
    wrong = [k for k, kind in _REQUIRED_SETTINGS.items() if not isinstance(settings.get(k), kind)]
    nested = {
        "model.url": (settings.get("model"), "url", str),
        "model.sha256": (settings.get("model"), "sha256", str),
        "scheduler.class": (settings.get("scheduler"), "class", str),
        "scheduler.config": (settings.get("scheduler"), "config", dict),
    }
    wrong += [
        name
        for name, (part, key, kind) in nested.items()
        if isinstance(part, dict) and not isinstance(part.get(key), kind)
    ]
    images = settings.get("images")
    if isinstance(images, list) and not (
        images and all(isinstance(i, dict) and isinstance(i.get("seed"), int) for i in images)
    ):
        wrong.append("images[].seed")
    if wrong:
        raise GenerationError(f"{path} is missing or mistypes: {', '.join(wrong)}")
    return settings


def request_from_settings(settings: Mapping[str, Any], model_url: str | None = None) -> GenerationRequest:
    """The request that made the settings' images; ``model_url`` replaces the recorded URL (a moved model:
    its content must still match the recorded SHA-256)."""
    return GenerationRequest(
        model_url=model_url or settings["model"]["url"],
        prompt=settings["prompt"],
        seeds=tuple(int(i["seed"]) for i in settings["images"]),
        scheduler=settings["scheduler"]["class"],
        scheduler_config=settings["scheduler"]["config"],
        steps=settings["steps"],
        guidance_scale=float(settings["guidance_scale"]),
        height=settings["height"],
        width=settings["width"],
        batch_size=settings["batch_size"],
        negative_prompt=settings.get("negative_prompt"),
        person=settings.get("person"),
        device=settings.get("device", "cpu"),
        model_sha256=settings["model"]["sha256"],
    )


def version_differences(settings: Mapping[str, Any]) -> list[str]:
    """``"diffusers 0.42.1 (recorded 0.41.0)"`` for each pixel-relevant library that changed since the run."""
    recorded = settings.get("versions") or {}
    now = library_versions()
    return [
        f"{name} {now[name]} (recorded {recorded[name]})" for name in now if recorded.get(name, now[name]) != now[name]
    ]


def differing_images(settings: Mapping[str, Any], paths: Sequence[Path]) -> list[str]:
    """Names of the images in ``paths`` whose pixels differ from the settings' recorded ones."""
    recorded = [i.get("pixels_sha256") for i in settings["images"]]
    return [p.name for p, want in zip(paths, recorded) if pixels_sha256(Image.open(p)) != want]


if __name__ == "__main__":
    # this is the library behind the command; running it as a script would otherwise silently do nothing
    print(
        "error: cosmicman.model.generate is a library; run `cosmicman generate` (python -m cosmicman.cli generate)",
        file=sys.stderr,
    )
    raise SystemExit(2)
