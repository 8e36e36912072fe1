"""``cosmicman generate``: images from a model folder, from free text, a person description or a settings file.

- ``--prompt TEXT``: the text as given.
- ``--person FILE.json``: a JSON object of protocol attributes (``{"gender": "woman", "top_exists": "yes",
  "top_color": "red"}``); any subset of the protocol's categories whose requirements hold. It becomes a
  prompt with the project's caption builder, the way the flywheel captions a person: every described group,
  no group dropped, the adjective and group order drawn with ``CAPTION_SEED``.
- ``--from-json generation.json``: the settings a previous run wrote beside its images; the run is redone
  with exactly those settings (``--model`` may point at the model's new place; its content must match) and
  the new images are compared with the recorded pixel hashes.

One image per seed: ``--seed 3 7`` draws two; ``--seed 3 --num-images 4`` draws seeds 3, 4, 5, 6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosmicman.cli.errors import UserError

# the adjective and group order of a person's caption (build_caption's rng): fixed, so a person file always
# gives the same prompt; the prompt itself is recorded in the settings file
CAPTION_SEED = 0
# generation knobs a settings file fixes: with --from-json they are refused rather than silently ignored
KNOBS = (
    "scheduler",
    "steps",
    "guidance",
    "height",
    "width",
    "seed",
    "num_images",
    "batch_size",
    "negative_prompt",
    "device",
)


def add_generate_parser(sub: Any) -> None:
    """The ``generate`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("generate", help="draw images from a trained model folder (SD-1.5 or SDXL layout)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="free text prompt")
    what.add_argument("--person", metavar="FILE", help="JSON object of protocol attributes, captioned as in training")
    what.add_argument("--from-json", metavar="FILE", help="redo the run a generation.json records, bit for bit")
    p.add_argument(
        "--model",
        help="model folder (path or URL) as the trainer publishes it; with --from-json: "
        "where the recorded model is now (default: the recorded URL)",
    )
    p.add_argument("--scheduler", help="diffusers scheduler class, e.g. EulerDiscreteScheduler (default: the model's)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--height", type=int, help="image height, a multiple of 8 (default: the model's size)")
    p.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the model's size)")
    p.add_argument("--seed", type=int, nargs="+", help="one image per seed (default 0)")
    p.add_argument("--num-images", type=int, help="with one --seed S: seeds S, S+1, ... S+N-1")
    p.add_argument("--batch-size", type=int, help="images per pipeline call (default 4)")
    p.add_argument("--negative-prompt", help="what the images should not show")
    p.add_argument("--device", help="torch device (default cpu: bit-for-bit reruns hold there)")
    p.add_argument(
        "--out",
        default=str(Path(os.environ.get("COSMICMAN_HOME", ".cosmicman"), "generated")),
        help="folder for the images and generation.json (default $COSMICMAN_HOME/generated)",
    )


def run_generate(args: argparse.Namespace) -> int:
    """Run the parsed ``generate`` command; bad input raises ``UserError``."""
    from cosmicman.model.generate import SETTINGS_FILE, generate, read_settings, request_from_settings
    from cosmicman.model.pipelines import GenerationError

    try:
        if args.from_json:
            given = [f"--{k.replace('_', '-')}" for k in KNOBS if getattr(args, k) is not None]
            if given:
                raise UserError(f"--from-json takes every setting from {args.from_json}; drop {', '.join(given)}")
            settings = read_settings(args.from_json)
            paths = generate(request_from_settings(settings, model_url=args.model), args.out)
        else:
            settings = None
            paths = generate(_request(args), args.out)
    except GenerationError as exc:
        raise UserError(str(exc)) from exc
    for path in paths:
        print(path)
    print(Path(args.out, SETTINGS_FILE))
    return 0 if settings is None else _report_reproduction(settings, paths)


def _report_reproduction(settings: Mapping[str, Any], paths: list[Path]) -> int:
    from cosmicman.model.generate import differing_images, version_differences

    differing = differing_images(settings, paths)
    if not differing:
        print(f"reproduced {len(paths)}/{len(paths)} images bit for bit")
        return 0
    changed = version_differences(settings)
    print(
        f"error: {len(differing)}/{len(paths)} images differ from the recorded ones ({', '.join(differing)}); "
        + (
            f"libraries changed: {', '.join(changed)}"
            if changed
            else "same library versions: another machine or thread count?"
        ),
        file=sys.stderr,
    )
    return 1


def _request(args: argparse.Namespace) -> Any:
    from cosmicman.model.generate import GenerationRequest

    if not args.model:
        raise UserError("--model is required with --prompt or --person: the model folder (path or URL)")
    person = read_person(args.person) if args.person else None
    prompt = person_prompt(person) if person is not None else args.prompt
    knobs = {
        "scheduler": args.scheduler,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "negative_prompt": args.negative_prompt,
        "device": args.device,
    }
    return GenerationRequest(
        model_url=args.model,
        prompt=prompt,
        seeds=seeds_of(args.seed, args.num_images),
        person=person,
        **{k: v for k, v in knobs.items() if v is not None},
    )


def seeds_of(seeds: list[int] | None, num_images: int | None) -> tuple[int, ...]:
    """The run's seeds from ``--seed`` and ``--num-images`` (see the module doc)."""
    seeds = seeds or [0]
    if num_images is None or num_images == len(seeds):
        return tuple(seeds)
    if num_images < 1:
        raise UserError(f"--num-images {num_images}: must be at least 1")
    if len(seeds) != 1:
        raise UserError(f"--num-images {num_images} with {len(seeds)} seeds: give one seed, or one seed per image")
    return tuple(range(seeds[0], seeds[0] + num_images))


def read_person(path: str | Path) -> dict[str, str]:
    """A person description file: a JSON object of protocol attributes, checked against the protocol."""
    from cosmicman.core.protocol import load_protocol

    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"no person file {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, str) for v in raw.values()):
        raise UserError(
            f'{path} must be a JSON object of protocol attributes, e.g. {{"gender": "woman", "age": "adult"}}'
        )
    protocol = load_protocol()
    by_name = protocol.by_name
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        raise UserError(f"unknown attributes in {path}: {', '.join(unknown)}; the protocol's: {', '.join(by_name)}")
    for name, answer in raw.items():
        category = by_name[name]
        if answer not in category.answers:
            raise UserError(f"{path}: {name}={answer!r} is not one of {', '.join(category.answers)}")
        if not category.applies(raw):
            need = ", ".join(f"{k}={v!r}" for k, v in category.requires.items())
            raise UserError(f"{path}: {name} describes something absent; it needs {need}")
    return raw


def person_prompt(attributes: Mapping[str, str]) -> str:
    """The caption the flywheel would give this person, with every group kept (no dropout)."""
    from cosmicman.datasets.captions import build_caption

    return build_caption(attributes, rng=CAPTION_SEED, group_dropout=0.0).text
