"""Min-SNR-gamma at its edges: the weights the training step multiplies each sample's noise loss by."""

import pytest
import torch

from cosmicman.model.train.step import min_snr_weights


def test_epsilon_and_v_prediction_weights_with_the_clamp_at_gamma():
    snr = torch.tensor([1.0, 5.0, 10.0])  # under, at and over gamma 5
    assert torch.allclose(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.5, 5 / 6, 5 / 11]))
    with pytest.raises(ValueError, match="'epsilon' or 'v_prediction', got 'sample'"):
        min_snr_weights(snr, 5.0, "sample")
