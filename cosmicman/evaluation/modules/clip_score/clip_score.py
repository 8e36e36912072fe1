"""CLIPScore as an ``evaluate`` metric: ``100 * max(cos, 0)`` per image-caption pair under a given CLIP.

The model is not chosen here: the caller builds a :class:`cosmicman.evaluation.clip_score.ClipScorer`
(from a local folder, or ``ClipScorer.tiny()`` locally) and passes it as ``scorer``; its name comes back
with the score. Delegates to :func:`cosmicman.evaluation.clip_score.clip_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from cosmicman.evaluation.clip_score import ClipScorer, clip_score

_DESCRIPTION = "CLIPScore: 100 * max(cos(image, caption), 0); captions over 77 tokens scored by chunk averaging."
_INPUTS = """
Args:
    images: one image per pair (PIL images or HxWx3 uint8 arrays).
    captions: one caption per image.
    scorer: a cosmicman.evaluation.clip_score.ClipScorer.
Returns:
    clip_score (the mean), clip_scores (per pair), model, long_captions.
"""
_CITATION = "Hessel et al., CLIPScore: A Reference-free Evaluation Metric for Image Captioning, EMNLP 2021."


class ClipScore(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"images": datasets.Image(), "captions": datasets.Value("string")}),
        )

    def _compute(self, images: Sequence[Any], captions: Sequence[str], scorer: ClipScorer) -> dict:
        result = clip_score(list(images), list(captions), scorer)
        return {
            "clip_score": result.mean,
            "clip_scores": list(result.scores),
            "model": result.model,
            "long_captions": result.long_captions,
        }
