"""HPSv2 as an ``evaluate`` metric: the cosine of HPSv2's image and prompt embeddings per pair.

The caller builds a :class:`cosmicman.evaluation.hpsv2.HpsV2Scorer` (``from_checkpoint`` on a local
``HPS_v2_compressed.pt``, or ``HpsV2Scorer.tiny()`` locally) and passes it as ``scorer``; its name comes
back with the score. Delegates to :func:`cosmicman.evaluation.hpsv2.hpsv2_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from cosmicman.evaluation.hpsv2 import HpsV2Scorer, hpsv2_score

_DESCRIPTION = "HPSv2: human preference score, cos(image, prompt) under the HPSv2-tuned OpenCLIP ViT-H/14."
_INPUTS = """
Args:
    images: one image per pair (PIL images or HxWx3 uint8 arrays).
    prompts: one prompt per image.
    scorer: a cosmicman.evaluation.hpsv2.HpsV2Scorer.
Returns:
    hpsv2 (the mean), hpsv2_scores (per pair), model, truncated_prompts.
"""
_CITATION = "Wu et al., Human Preference Score v2, 2023."


class HpsV2(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"images": datasets.Image(), "prompts": datasets.Value("string")}),
        )

    def _compute(self, images: Sequence[Any], prompts: Sequence[str], scorer: HpsV2Scorer) -> dict:
        result = hpsv2_score(list(images), list(prompts), scorer)
        return {
            "hpsv2": result.mean,
            "hpsv2_scores": list(result.scores),
            "model": result.model,
            "truncated_prompts": result.truncated_prompts,
        }
