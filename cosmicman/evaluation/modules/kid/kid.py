"""KID as an ``evaluate`` metric: unbiased cubic-kernel MMD^2 between generated and real features, over subsets.

Inputs as the ``fid`` module (feature vectors with a real / generated flag, and the extractor's name).
Delegates to :func:`cosmicman.evaluation.frechet.kernel_distance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

from cosmicman.evaluation.frechet import KID_MAX_SUBSET_SIZE, KID_SUBSETS, kernel_distance

_DESCRIPTION = "Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, mean and std over subsets."
_INPUTS = """
Args:
    features: one feature vector per image (all of one length).
    real: per vector, True for the real / reference set, False for the generated set.
    feature_extractor: the extractor's name, returned with the result.
    subsets, max_subset_size, seed: as kernel_distance (clean-fid's defaults: 100 subsets of at most 1000).
Returns:
    kid_mean, kid_std, kid_subsets, kid_subset_size, n_generated, n_real, feature_extractor.
"""
_CITATION = "Binkowski et al., Demystifying MMD GANs, ICLR 2018."


class Kid(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"features": datasets.Sequence(datasets.Value("float64")), "real": datasets.Value("bool")}
            ),
        )

    def _compute(
        self,
        features: Sequence[Sequence[float]],
        real: Sequence[bool],
        feature_extractor: str,
        subsets: int = KID_SUBSETS,
        max_subset_size: int = KID_MAX_SUBSET_SIZE,
        seed: int = 0,
    ) -> dict:
        matrix = np.asarray(features, dtype=np.float64)
        is_real = np.asarray(real, dtype=bool)
        kid = kernel_distance(matrix[~is_real], matrix[is_real], subsets, max_subset_size, seed)
        return {
            "kid_mean": kid.mean,
            "kid_std": kid.std,
            "kid_subsets": kid.subsets,
            "kid_subset_size": kid.subset_size,
            "n_generated": int((~is_real).sum()),
            "n_real": int(is_real.sum()),
            "feature_extractor": feature_extractor,
        }
