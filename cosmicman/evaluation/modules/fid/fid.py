"""FID as an ``evaluate`` metric: the Fréchet distance between the generated and the real feature sets.

Inputs are one feature vector per image with a flag saying which set it belongs to (the two sets may
differ in size, which ``predictions`` / ``references`` pairs cannot). ``feature_extractor`` names the
extractor the vectors came from and is returned with the number: an FID over the local stand-in is not
an Inception FID. Delegates to :func:`cosmicman.evaluation.frechet.frechet_distance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

from cosmicman.evaluation.frechet import frechet_distance

_DESCRIPTION = "Fréchet distance (the FID formula) between generated and real image features."
_INPUTS = """
Args:
    features: one feature vector per image (all of one length).
    real: per vector, True for the real / reference set, False for the generated set.
    feature_extractor: the extractor's name (e.g. ``InceptionFeatures.name``), returned with the result.
Returns:
    fid, n_generated, n_real, feature_extractor.
"""
_CITATION = "Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, 2017."


class Fid(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"features": datasets.Sequence(datasets.Value("float64")), "real": datasets.Value("bool")}
            ),
        )

    def _compute(self, features: Sequence[Sequence[float]], real: Sequence[bool], feature_extractor: str) -> dict:
        matrix = np.asarray(features, dtype=np.float64)
        is_real = np.asarray(real, dtype=bool)
        return {
            "fid": frechet_distance(matrix[~is_real], matrix[is_real]),
            "n_generated": int((~is_real).sum()),
            "n_real": int(is_real.sum()),
            "feature_extractor": feature_extractor,
        }
