"""Evaluation settings for the ``test_prompts`` and ``evaluation`` assets."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import fsspec
from pydantic import Field

from cosmicman.evaluation.config import EvaluationConfig


class EvaluationResource(dg.ConfigurableResource):
    """Evaluation settings.

    The held-out test prompts are people described by their exact attributes: the first ``n_prompts`` lines
    (all when None) of ``prompts_url``, a JSON-lines file (any fsspec URL) with one ``{attribute: value}``
    object per line; ``expected_prompts`` makes a file of another size an error (the paper's 2,048).
    The scorers are named by local paths (nothing is downloaded); one left unset runs on a tiny stand-in
    built from a config, and the results say so.
    """

    n_prompts: int | None = 16
    expected_prompts: int | None = None
    prompt_seed: int = 30_000
    inference_steps: int = 10
    guidance_scale: float = 5.0
    overlay_prompts: int = Field(
        default=4, description="The first that many test prompts get an attention overlay per caption group."
    )
    overlay_map_factor: int | None = Field(
        default=None, description="The overlays' UNet level, image side / map side; None: 1/16 or the nearest."
    )
    prompts_url: str | None = None
    judge: dict[str, Any] = Field(
        default_factory=dict,
        description='The semantic-accuracy judge, apart from the annotator: {"kind": "vqa", "path": <VQA model '
        'folder>} or {"kind": "python", "factory": "<module>:<function>", "options": {...}}.',
    )
    inception_path: str | None = Field(default=None, description="TorchScript Inception (FID); None: stand-in.")
    feature_seed: int = 0
    clip_path: str | None = Field(default=None, description="Saved CLIP folder (CLIPScore); None: tiny stand-in.")
    hpsv2_path: str | None = Field(default=None, description="HPSv2 checkpoint; None: tiny stand-in.")
    device: str = "cpu"

    def test_attributes(self) -> list[dict[str, str]]:
        """The attributes of each test prompt (what its generated image must show)."""
        if not self.prompts_url:
            raise ValueError(
                "EvaluationResource.prompts_url is not set: name a JSON-lines file of test prompts' "
                "attributes, one {attribute: value} object per line"
            )
        with fsspec.open(self.prompts_url, "rt") as f:
            lines = [line for line in f if line.strip()]
        prompts = [json.loads(line) for line in lines[: self.n_prompts]]
        if self.expected_prompts is not None and len(prompts) != self.expected_prompts:
            raise ValueError(f"{self.prompts_url} holds {len(prompts)} test prompts, {self.expected_prompts} expected")
        return prompts

    def run_config(self, model_url: str, prompts_url: str, store_url: str, output_url: str) -> EvaluationConfig:
        """What ``python -m cosmicman.evaluation`` is told for one model."""
        if not self.judge:
            raise ValueError(
                'EvaluationResource.judge is not set: name the semantic-accuracy judge, {"kind": "vqa", "path": '
                "<local VQA model folder>}, configured apart from the flywheel's annotator"
            )
        features: dict[str, Any] = (
            {"kind": "inception", "weights_path": self.inception_path}
            if self.inception_path
            else {"kind": "random_conv", "seed": self.feature_seed}
        )
        return EvaluationConfig(
            model_url=model_url,
            prompts_url=prompts_url,
            store_url=store_url,
            output_url=output_url,
            judge=dict(self.judge),
            features=features,
            clip_path=self.clip_path,
            hpsv2_path=self.hpsv2_path,
            image_seed=self.prompt_seed,
            steps=self.inference_steps,
            guidance_scale=self.guidance_scale,
            overlay_prompts=self.overlay_prompts,
            overlay_map_factor=self.overlay_map_factor,
            device=self.device,
        )
