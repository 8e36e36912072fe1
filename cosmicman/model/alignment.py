r"""Attention–mask alignment: how much of a group's cross-attention lies inside the group's mask.

For one attention map set (one sample, one captured layer, one head), a group i with the token span
[s_i, e_i) (end-exclusive) and the area mask h_i (cell coverage in [0, 1], as the trainer builds it),
the *mass share* of token j is

    share_j = sum_p h_i(p) * m_j(p) / sum_p m_j(p)

(m_j: the map of token j, i.e. the softmax probabilities of token j over the P map cells). With {0, 1}
masks this is the fraction of token j's attention mass that falls inside the mask; with fractional
(``"area"``) masks each cell counts by the fraction of it the group covers. The share is averaged over
the span's tokens, the heads, the captured layers, the timesteps, and then, per group, over the samples
in which the group has a span and a non-empty mask; ``"mean"`` is the mean of the per-group means.

Why this metric. HOLA (``cosmicman.model.hola``) pulls every m_j towards h_i in squared error; the part
of that objective that is about *where* the text attends is the overlap <m_j, h_i> relative to the mass
outside the mask. The raw HOLA value mixes this with the *scale* of the maps: the softmax runs over the
77 tokens, so sum_p m_j(p) varies freely between tokens, layers and models, and shrinking all maps also
lowers the squared error without moving any attention into the mask. The share divides that scale out:
it is invariant to multiplying m_j by a constant, lies in [0, 1] (1: all of the token's mass inside the
mask), and is comparable across models, layers, heads and training setups (noise-only vs HOLA).

Chance level. A map that carries no spatial information (uniform, m_j(p) = c) has share
sum_p h(p) / P, the mask's area fraction. ``"chance"`` is that area fraction averaged exactly like the
shares (per group over the same (sample, group) pairs, then over groups), so ``mean - chance`` is the
alignment beyond a spatially uninformed model.

Where it is measured: ``DaringTrainer.attention_alignment`` runs the trained UNet (the published weights: EMA
when that is what is saved) on fixed, unshuffled batches of the training data, VAE posterior
means noised at ``DEFAULT_TIMESTEPS`` with a fixed seed, capturing the HOLA layers (maps at 1/``map_factor``
of the image); every variant -- noise-only baseline included -- is measured the same way, and the result
is in ``training_run.json`` and the ``daring_unet`` asset's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cosmicman.model.hola import resize_masks, span_weights

#: fixed evaluation timesteps (of a 1000-step training schedule): low, middle and high noise
DEFAULT_TIMESTEPS: tuple[int, ...] = (200, 500, 800)

_EPS = 1e-12


def mask_mass_share(
    maps: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    masks: torch.Tensor,
    spans: torch.Tensor,
    map_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mass share of each (sample, group) over captured maps.

    maps: layer -> (B, heads, P, K) probabilities (P = h*w, all layers at one map size). masks: (B, G, h, w)
    group masks at the map size (or any size when ``map_hw`` is given: then area-resized). spans: (B, G, 2)
    end-exclusive, (-1, -1) for none.

    Returns ``share`` (B, G): sum_p mask(p) m_j(p) / sum_p m_j(p) averaged over the span's tokens, the heads
    and the layers; ``area`` (B, G): the mask's area fraction sum_p mask(p) / P (the share of a uniform
    map); ``valid`` (B, G) bool: the group has a span and a non-empty mask (``share`` is 0 elsewhere)."""
    layers = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not layers:
        raise ValueError("no attention maps captured: check map_factor against the UNet's levels")
    B, _, P, K = layers[0].shape
    if map_hw is not None:
        if int(map_hw[0]) * int(map_hw[1]) != P:
            raise ValueError(f"map_hw {tuple(map_hw)} does not have the maps' {P} cells")
        masks = resize_masks(masks, (int(map_hw[0]), int(map_hw[1])), "area")
    m = masks.float().flatten(2).to(layers[0].device)  # (B, G, P)
    if m.shape[0] != B or m.shape[-1] != P or spans.shape[:2] != m.shape[:2]:
        raise ValueError(f"masks {tuple(masks.shape)} / spans {tuple(spans.shape)} do not fit maps (B={B}, P={P})")
    w = span_weights(spans.to(m.device), K)  # (B, G, K)
    n = w.sum(-1)  # (B, G)
    area = m.sum(-1) / P  # (B, G)
    valid = (n > 0) & (area > 0)
    per_layer = []
    for attn in layers:
        if tuple(attn.shape[:1]) + tuple(attn.shape[2:]) != (B, P, K):
            raise ValueError(f"captured maps have mixed shapes: {tuple(attn.shape)} vs {(B, '*', P, K)}")
        a = attn.float()
        inside = torch.einsum("bhpk,bgp->bhgk", a, m)  # (B, H, G, K)
        total = a.sum(2)[:, :, None, :]  # (B, H, 1, K)
        token_share = inside / total.clamp(min=_EPS)
        per_head = (token_share * w[:, None]).sum(-1) / n.clamp(min=1)[:, None]  # (B, H, G)
        per_layer.append(per_head.mean(1))
    share = torch.stack(per_layer).mean(0) * valid
    return share, area, valid


class AlignmentTally:
    """Sums of (sample, group) shares over batches, reported per group name (see module doc)."""

    def __init__(self) -> None:
        self.share: dict[str, float] = {}
        self.area: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, share: torch.Tensor, area: torch.Tensor, valid: torch.Tensor, names: Sequence[Sequence[str]]) -> None:
        """(B, G) shares / areas / validity of one batch; ``names[b][g]`` names group g of sample b."""
        share, area, valid = share.double().cpu(), area.double().cpu(), valid.cpu()
        for b, sample_names in enumerate(names):
            for g, name in enumerate(sample_names):
                if g < valid.shape[1] and valid[b, g]:
                    self.share[name] = self.share.get(name, 0.0) + float(share[b, g])
                    self.area[name] = self.area.get(name, 0.0) + float(area[b, g])
                    self.count[name] = self.count.get(name, 0) + 1

    def summary(self) -> dict[str, Any]:
        if not self.count:
            raise ValueError("no (sample, group) pair had a span and a non-empty mask")
        groups = {n: self.share[n] / c for n, c in sorted(self.count.items())}
        chance = {n: self.area[n] / c for n, c in sorted(self.count.items())}
        return {
            "groups": groups,
            "chance_groups": chance,
            "mean": sum(groups.values()) / len(groups),
            "chance": sum(chance.values()) / len(chance),
            "n_pairs": sum(self.count.values()),
        }
