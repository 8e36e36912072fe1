"""What a training step draws and how it weighs the result: caption dropout, offset noise and min-SNR weights.

Plain functions of tensors and generators, so each rule's edge has a fast test and the draws stay in the
order exact resume depends on (see ``DaringTrainer``): noise, then offset noise, from the device generator;
the dropout decision from the CPU generator."""

from __future__ import annotations

import torch


def caption_dropped(probability: float, cpu_gen: torch.Generator) -> bool:
    """Whether this micro-batch trains on the empty prompt (released: per micro-batch, p = 0.1). A
    probability of 0 draws nothing, so turning dropout off leaves every later draw where it was."""
    if probability <= 0:
        return False
    return bool(torch.rand((), generator=cpu_gen) < probability)


def offset_noise(shape: torch.Size, offset: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise plus ``offset`` times one draw per (sample, channel), constant over the image
    (Guttenberg's offset noise, released 0.05): it lets the model move an image's mean brightness. An
    offset of 0 draws nothing more."""
    noise = torch.randn(shape, generator=gen, device=gen.device, dtype=dtype)
    if offset > 0:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen, device=gen.device, dtype=dtype)
    return noise


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights per timestep (Hang et al. 2023): ``min(SNR, gamma) / SNR`` for epsilon
    prediction, ``min(SNR, gamma) / (SNR + 1)`` for v-prediction (its target's scale differs by SNR + 1)."""
    clamped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clamped / snr
    if prediction_type == "v_prediction":
        return clamped / (snr + 1.0)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
