"""One evaluation: generate one image per test prompt with a trained model, then score the images.

The paper's four measures, each from :mod:`cosmicman.evaluation`'s scorers:

- semantic accuracy Acc_obj / tex / shape / all: DSG-style yes/no questions from each prompt's attributes,
  answered by the judge the config names (never the flywheel's annotator);
- FID and KID against I_e, the held-out real images (the same feature extractor on both sides);
- CLIPScore of each image against its caption, HPSv2 of each image against its caption.

The same judge and scorers on the real I_e images (each against its own attributes and caption) give the
ceiling row: what the scorers allow, so a generated figure reads against it. The report, the per-question
table, the first samples and the first ``overlay_prompts`` prompts' attention overlays per caption group
(:mod:`cosmicman.evaluation.attention_overlays`, captured while those very samples are drawn) are written
under ``output_url``; the report is also returned.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from PIL import Image

from cosmicman.annotation.eval_set import read_eval_items
from cosmicman.core.caption_draw import Caption
from cosmicman.core.imageio import encode_png
from cosmicman.core.keys import EVALUATION_REPORT_FILE
from cosmicman.core.store import Store
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption
from cosmicman.evaluation.clip_score import ClipScorer, clip_score
from cosmicman.evaluation.config import EvaluationConfig
from cosmicman.evaluation.features import FeatureExtractor, InceptionFeatures, RandomConvFeatures
from cosmicman.evaluation.frechet import frechet_distance, kernel_distance
from cosmicman.evaluation.hpsv2 import HpsV2Scorer, hpsv2_score
from cosmicman.evaluation.judge import Judge, JudgeSpec, load_judge
from cosmicman.evaluation.prompt_set import read_prompt_set
from cosmicman.evaluation.reference_side import RealItem, ReferenceSide, reference_side
from cosmicman.evaluation.semantic_accuracy import judge_semantic_accuracy

if TYPE_CHECKING:
    from cosmicman.evaluation.attention_overlays import AttentionLevel

log = logging.getLogger(__name__)

QUESTIONS_FILE = "questions.parquet"
SAMPLES_SHOWN = 12


def build_judge(spec: dict[str, Any]) -> Judge:
    """The judge ``spec`` names: a local VQA model (``kind="vqa"``), or ``kind="python"``: the judge that
    ``factory`` ("<module>:<function>") builds from ``options`` (how an environment brings its own)."""
    if spec.get("kind") == "python":
        module_name, _, function = str(spec.get("factory", "")).partition(":")
        if not module_name or not function:
            raise ValueError(f'judge factory {spec.get("factory")!r} must read "<module>:<function>"')
        factory: Callable[..., Judge] = getattr(importlib.import_module(module_name), function)
        return factory(**spec.get("options", {}))
    return load_judge(JudgeSpec(**spec))


def build_features(spec: dict[str, Any]) -> FeatureExtractor:
    options = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "inception":
        return InceptionFeatures(**options)
    return RandomConvFeatures(**options)


def _scorers(cfg: EvaluationConfig) -> tuple[ClipScorer, HpsV2Scorer]:
    clip = ClipScorer.from_pretrained(cfg.clip_path, device=cfg.device) if cfg.clip_path else ClipScorer.tiny()
    hps = HpsV2Scorer.from_checkpoint(cfg.hpsv2_path, device=cfg.device) if cfg.hpsv2_path else HpsV2Scorer.tiny()
    return clip, hps


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"the evaluation produced non-finite metrics: {', '.join(bad)}")
    return metrics


#: prompts per pipeline call (``render_images``' batches): the capture for the overlays rides on whole calls,
#: so it never changes how the images are batched (a different batching may change their last bits)
GENERATION_BATCH = 8


@dataclass
class GeneratedImages:
    """The images of every caption and, for the first captured ones, their step-averaged cross-attention maps
    ((P, K) each, at ``level``: see :mod:`cosmicman.evaluation.attention_overlays`)."""

    images: list[Image.Image]
    token_maps: list[np.ndarray]
    level: AttentionLevel | None


def generate_test_images(cfg: EvaluationConfig, captions: Sequence[str]) -> list[Image.Image]:
    """One image per caption, image i from seed ``image_seed + i``, on the model's own pipeline family."""
    return generate_capturing(cfg, captions, 0).images


def generate_capturing(cfg: EvaluationConfig, captions: Sequence[str], n_captured: int) -> GeneratedImages:
    """``generate_test_images``' images, the same pixels, with the cross-attention of the first ``n_captured``
    prompts captured during the very pipeline calls that draw them."""
    from cosmicman.evaluation.attention_overlays import attention_level, capturing  # diffusers: heavy
    from cosmicman.model.pipelines import default_size, load_pipeline, local_model_dir, render_images

    seeds = [cfg.image_seed + i for i in range(len(captions))]
    generated = GeneratedImages([], [], None)
    with local_model_dir(cfg.model_url) as model_dir:
        pipe = load_pipeline(model_dir, device=cfg.device, scheduler=cfg.scheduler)
        if n_captured > 0:
            side, vae_factor = default_size(pipe), int(pipe.vae_scale_factor)
            generated.level = attention_level(pipe.unet, side, vae_factor, cfg.overlay_map_factor)
        for start in range(0, len(captions), GENERATION_BATCH):
            chunk = slice(start, start + GENERATION_BATCH)
            with contextlib.ExitStack() as stack:
                maps = None
                if generated.level is not None and start < n_captured:
                    maps = stack.enter_context(capturing(pipe.unet, generated.level, len(captions[chunk])))
                generated.images += render_images(
                    pipe,
                    list(captions[chunk]),
                    seeds=seeds[chunk],
                    steps=cfg.steps,
                    guidance_scale=cfg.guidance_scale,
                    batch_size=GENERATION_BATCH,
                )
            if maps is not None:
                generated.token_maps += list(maps.mean()[: n_captured - start])
    return generated


def score(
    cfg: EvaluationConfig,
    images: Sequence[Image.Image],
    prompts: Sequence[dict[str, str]],
    captions: Sequence[str],
    prompt_set_version: str,
    real: Sequence[RealItem],
    references: Store,
    log_fn: Callable[[str], None] = log.info,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """The report of ``images`` (``images[i]`` from ``prompts[i]`` / ``captions[i]``) and its ceiling on ``real``
    (image, attributes, caption); the per-question table of the generated images beside it. The real side
    (ceiling and reference features) is kept in ``references`` and reused by every model scored alike."""
    judge = build_judge(cfg.judge)
    features = build_features(cfg.features)
    clip, hps = _scorers(cfg)
    accuracy = judge_semantic_accuracy(judge, images, prompts, prompt_set_version)
    real_images = [image for image, _, _ in real]

    def real_side() -> ReferenceSide:
        ceiling_accuracy = judge_semantic_accuracy(judge, real_images, [a for _, a, _ in real], prompt_set_version)
        real_captions = [c for *_, c in real]
        ceiling = {
            **ceiling_accuracy.metrics(),
            "clip_score": clip_score(real_images, real_captions, clip).mean,
            "hpsv2": hpsv2_score(real_images, real_captions, hps).mean,
        }
        return ReferenceSide(ceiling=ceiling, features=np.asarray(features(real_images)))

    settings = {
        "judge": [judge.name, judge.version, cfg.judge],
        "features": [features.name, cfg.features],
        "clip": [clip.name, cfg.clip_path],
        "hpsv2": [hps.name, cfg.hpsv2_path],
        "device": cfg.device,
        "prompt_set_version": prompt_set_version,
    }
    reference = reference_side(references, settings, real, real_side, log_fn)
    generated_clip, generated_hps = clip_score(images, captions, clip), hpsv2_score(images, captions, hps)
    fake_feats, real_feats = np.asarray(features(images)), reference.features
    kid = kernel_distance(fake_feats, real_feats, subsets=50, max_subset_size=min(len(images), len(real_images)))
    metrics = _finite(
        {
            **accuracy.metrics(),
            "frechet_distance": frechet_distance(fake_feats, real_feats),
            "kid": kid.mean,
            "kid_std": kid.std,
            "clip_score": generated_clip.mean,
            "hpsv2": generated_hps.mean,
        }
    )
    ceiling = _finite(dict(reference.ceiling))
    report = {
        "metrics": metrics,
        "ceiling": ceiling,
        "prompt_set_version": prompt_set_version,
        "n_prompts": len(prompts),
        "n_real": len(real),
        "judge": {"name": judge.name, "version": judge.version},
        "feature_extractor": features.name,
        "clip_model": generated_clip.model,
        "hpsv2_model": generated_hps.model,
        "long_captions": generated_clip.long_captions,
        "model_url": cfg.model_url,
        "image_seed": cfg.image_seed,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
    }
    return report, pl.DataFrame(accuracy.table())


def prompt_captions(prompts: Sequence[Mapping[str, str]], tokenizer: Any) -> list[Caption]:
    """The caption of each test prompt with its groups and token spans: every group kept (the caption says
    all the judge will ask), prompt i's adjective and group order drawn from seed i."""
    return [build_caption(p, tokenizer=tokenizer, rng=i, group_dropout=0.0) for i, p in enumerate(prompts)]


def test_captions(prompts: Sequence[Mapping[str, str]], tokenizer: Any) -> list[str]:
    """The text of :func:`prompt_captions`."""
    return [c.text for c in prompt_captions(prompts, tokenizer)]


def _real_references(store: Store, tokenizer: Any) -> list[RealItem]:
    items = [it for it in read_eval_items(store) if it.attributes is not None]
    if len(items) < 2:
        raise ValueError(f"I_e holds {len(items)} images with attributes: the distances need at least 2")
    attributes = [dict(it.attributes or {}) for it in items]
    captions = test_captions(attributes, tokenizer)
    return [(it.image, a, c) for it, a, c in zip(items, attributes, captions)]


def evaluate_model(cfg: EvaluationConfig, log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Generate, score and write the report of one model (see the module docstring); the report."""
    prompt_set = read_prompt_set(cfg.prompts_url, limit=cfg.n_prompts, **cfg.storage_options)
    tokenizer = load_clip_tokenizer()
    prompts = [dict(p) for p in prompt_set.prompts]
    records = prompt_captions(prompts, tokenizer)
    captions = [c.text for c in records]
    n_overlays = min(cfg.overlay_prompts, len(captions))
    log_fn(
        f"generating {len(captions)} images for prompt set {prompt_set.version} with {cfg.model_url} "
        f"(cross-attention of the first {n_overlays} captured for the overlays)"
    )
    generated = generate_capturing(cfg, captions, n_overlays)
    images = generated.images
    store = Store(cfg.store_url, **cfg.storage_options)
    real = _real_references(store, tokenizer)
    log_fn(f"scoring {len(images)} generated and {len(real)} real images")
    report, questions = score(cfg, images, prompts, captions, prompt_set.version, real, store, log_fn)
    out = Store(cfg.output_url, **cfg.storage_options)
    samples = []
    for i, image in enumerate(images[:SAMPLES_SHOWN]):
        key = f"samples/{i:03d}.png"
        out.write_bytes(key, encode_png(image))
        samples.append({"key": key, "caption": captions[i]})
    out.write_table(QUESTIONS_FILE, questions)
    report["samples"] = samples
    report["overlays"] = []
    if generated.level is not None:
        from cosmicman.evaluation.attention_overlays import write_overlays

        report["overlays"] = write_overlays(out, images, generated.token_maps, records, generated.level)
        report["overlay_attention"] = generated.level.to_json()
    report["output_url"] = cfg.output_url
    # written last: a folder with a report is a finished evaluation
    out.write_json(EVALUATION_REPORT_FILE, report)
    return report
