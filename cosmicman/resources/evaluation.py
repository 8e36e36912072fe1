"""Evaluation settings for the ``evaluation`` asset."""
from __future__ import annotations

import dagster as dg


class EvaluationResource(dg.ConfigurableResource):
    """Evaluation settings: test prompts come from held-out synthetic people (exact attributes)."""

    n_prompts: int = 16
    prompt_seed: int = 30_000
    inference_steps: int = 10
    guidance_scale: float = 5.0
    feature_seed: int = 0
