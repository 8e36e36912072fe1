"""Evaluation settings for the ``evaluation`` asset."""

from __future__ import annotations

import json

import dagster as dg
import fsspec


class EvaluationResource(dg.ConfigurableResource):
    """Evaluation settings. The held-out test prompts are people described by their exact attributes:
    the first ``n_prompts`` lines of ``prompts_url``, a JSON-lines file (any fsspec URL) with one
    ``{attribute: value}`` object per line."""

    n_prompts: int = 16
    prompt_seed: int = 30_000
    inference_steps: int = 10
    guidance_scale: float = 5.0
    feature_seed: int = 0
    prompts_url: str | None = None

    def test_attributes(self) -> list[dict[str, str]]:
        """The attributes of each test prompt (what its generated image must show)."""
        if not self.prompts_url:
            raise ValueError(
                "EvaluationResource.prompts_url is not set: name a JSON-lines file of test prompts' "
                "attributes, one {attribute: value} object per line"
            )
        with fsspec.open(self.prompts_url, "rt") as f:
            lines = [line for line in f if line.strip()]
        return [json.loads(line) for line in lines[: self.n_prompts]]
