"""The training step's draws and weights at their edges: caption dropout, offset noise and min-SNR-gamma."""

import numpy as np
import pytest
import torch

from cosmicman.model.train.noising import caption_dropped, min_snr_weights, offset_noise

SHAPE = torch.Size((2, 4, 8, 8))


def test_epsilon_and_v_prediction_weights_with_the_clamp_at_gamma():
    snr = torch.tensor([1.0, 5.0, 10.0])  # under, at and over gamma 5
    assert torch.allclose(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.5, 5 / 6, 5 / 11]))
    with pytest.raises(ValueError, match="'epsilon' or 'v_prediction', got 'sample'"):
        min_snr_weights(snr, 5.0, "sample")


def first_uniform(seed: int) -> float:
    return torch.rand((), generator=torch.Generator().manual_seed(seed)).item()


def test_caption_dropout_drops_strictly_under_the_probability():
    r = first_uniform(7)
    just_over = float(np.nextafter(np.float32(r), np.float32(1.0)))
    assert caption_dropped(r, torch.Generator().manual_seed(7)) is False  # the draw equals p: kept
    assert caption_dropped(just_over, torch.Generator().manual_seed(7)) is True
    assert all(caption_dropped(1.0, torch.Generator().manual_seed(s)) for s in range(20))


def test_caption_dropout_draws_once_from_the_cpu_generator_it_is_given():
    gen, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    caption_dropped(0.5, gen)
    torch.rand((), generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())


def test_caption_dropout_off_draws_nothing():
    gen = torch.Generator().manual_seed(3)
    assert caption_dropped(0.0, gen) is False
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())


def test_offset_noise_is_one_constant_shift_per_sample_and_channel():
    plain = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    noise = offset_noise(SHAPE, 0.05, torch.Generator().manual_seed(5), torch.float32)
    shift = noise - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand(SHAPE), atol=1e-6)  # constant over the image
    reference = torch.Generator().manual_seed(5)
    torch.randn(SHAPE, generator=reference)
    expected = 0.05 * torch.randn((2, 4, 1, 1), generator=reference)
    assert torch.allclose(shift[:, :, :1, :1], expected, atol=1e-7)
    assert shift.abs().max() > 0


def test_offset_noise_off_is_plain_noise_and_draws_nothing_more():
    gen = torch.Generator().manual_seed(5)
    noise = offset_noise(SHAPE, 0.0, gen, torch.float32)
    reference = torch.Generator().manual_seed(5)
    assert torch.equal(noise, torch.randn(SHAPE, generator=reference))
    assert torch.equal(gen.get_state(), reference.get_state())


def test_offset_noise_keeps_the_latents_dtype():
    noise = offset_noise(SHAPE, 0.05, torch.Generator().manual_seed(5), torch.float64)
    reference = torch.Generator().manual_seed(5)
    expected = torch.randn(SHAPE, generator=reference, dtype=torch.float64)
    expected = expected + 0.05 * torch.randn((2, 4, 1, 1), generator=reference, dtype=torch.float64)
    assert noise.dtype == torch.float64 and torch.equal(noise, expected)  # both draws in float64
    assert offset_noise(SHAPE, 0.0, torch.Generator().manual_seed(5), torch.float64).dtype == torch.float64
