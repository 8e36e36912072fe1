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

Layers: like the trainer, only cross-attention layers with ``map_hw[0] * map_hw[1]`` queries are captured
(map_hw = image size / ``map_factor``; tiny 64-px models use 8). Masks are brought to the map size with
``"area"`` when the batches carry them at another size.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

import torch

from cosmicman.model.attention import HolaContext, install_capture, map_hw_for
from cosmicman.model.hola import resize_masks, span_weights

__all__ = ["DEFAULT_TIMESTEPS", "mask_mass_share", "attention_mass_in_masks"]

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
        raise ValueError(f"masks {tuple(masks.shape)} / spans {tuple(spans.shape)} do not fit maps "
                         f"(B={B}, P={P})")
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


def _first_param_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def attention_mass_in_masks(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    scheduler: Any,
    batch_iter: Iterable[Mapping[str, Any]],
    *,
    map_factor: int,
    n_batches: int,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    device: str | torch.device | None = None,
    group_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Mean share of each group's cross-attention mass that lies inside the group's mask (module doc).

    ``batch_iter`` yields batches as ``cosmicman.model.shards.batches`` makes them (``pixel_values``,
    ``input_ids``, ``group_masks``, ``spans``); the first ``n_batches`` are used (fewer if it ends first).
    Latents are the VAE posterior means (times the scaling factor), noised at each of ``timesteps`` with
    noise from a generator seeded with ``seed`` -- so two models measured on the same batches see the
    same inputs. The models must live on ``device`` (default: the UNet's). The UNet's attention
    processors and train/eval mode are restored afterwards.

    Returns ``{"groups": {name: share}, "chance_groups": {name: area fraction}, "mean": mean over groups,
    "chance": mean area fraction (same weighting), "n_pairs": (sample, group) pairs used,
    "n_batches": batches used, "layers": captured layer names, "timesteps": [...], "map_hw": [h, w]}``.
    Group names are ``group_names[g]`` for group index g, else ``str(g)``; groups never valid are absent."""
    if n_batches <= 0 or map_factor <= 0:
        raise ValueError("n_batches and map_factor must be positive")
    if not timesteps:
        raise ValueError("timesteps is empty")
    dev = torch.device(device) if device is not None else _first_param_device(unet)
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
    gen = torch.Generator(device=dev).manual_seed(seed)

    saved_procs = dict(unet.attn_processors)
    was_training = unet.training
    store = install_capture(unet)
    unet.eval()
    share_sum: torch.Tensor | None = None  # (G,) sums over pairs
    area_sum: torch.Tensor | None = None
    count: torch.Tensor | None = None
    layers: set[str] = set()
    used = 0
    map_hw: tuple[int, int] | None = None
    try:
        for batch in itertools.islice(batch_iter, n_batches):
            pixels = batch["pixel_values"].to(dev)
            ids = batch["input_ids"].to(dev)
            map_hw = map_hw_for(tuple(pixels.shape[-2:]), map_factor)
            ctx = HolaContext(map_hw=map_hw, key_length=ids.shape[-1])
            latents = vae.encode(pixels).latent_dist.mean * scaling
            enc = text_encoder(ids)[0]
            shares = []
            area = valid = None
            for t in timesteps:
                noise = torch.randn(latents.shape, generator=gen, device=dev, dtype=latents.dtype)
                tt = torch.full((latents.shape[0],), int(t), device=dev, dtype=torch.long)
                noisy = scheduler.add_noise(latents, noise, tt)
                store.clear()
                unet(noisy, tt, enc, cross_attention_kwargs={"hola_ctx": ctx})
                if not store.maps:
                    raise ValueError(
                        f"no cross-attention layer has {map_hw[0]}x{map_hw[1]} queries (map_factor="
                        f"{map_factor}); query counts seen: {sorted(set(store.cross_query_counts.values()))}")
                layers.update(store.maps)
                s, area, valid = mask_mass_share(store.maps, batch["group_masks"], batch["spans"], map_hw)
                shares.append(s)
            share = torch.stack(shares).mean(0)  # (B, G), mean over timesteps
            G = share.shape[1]
            if share_sum is None:
                share_sum, area_sum, count = (torch.zeros(G, dtype=torch.float64) for _ in range(3))
            if G > share_sum.shape[0]:  # batches pad G to their own largest group count
                pad = G - share_sum.shape[0]
                share_sum, area_sum, count = (torch.cat([x, x.new_zeros(pad)]) for x in (share_sum, area_sum, count))
            vf = valid.double().cpu()
            share_sum[:G] += (share.double().cpu() * vf).sum(0)
            area_sum[:G] += (area.double().cpu() * vf).sum(0)
            count[:G] += vf.sum(0)
            used += 1
    finally:
        unet.set_attn_processor(saved_procs)
        unet.train(was_training)
    if used == 0 or share_sum is None:
        raise ValueError("batch_iter yielded no batches")

    groups: dict[str, float] = {}
    chance_groups: dict[str, float] = {}
    for g in range(share_sum.shape[0]):
        if count[g] == 0:
            continue
        name = group_names[g] if group_names is not None and g < len(group_names) else str(g)
        groups[name] = float(share_sum[g] / count[g])
        chance_groups[name] = float(area_sum[g] / count[g])
    if not groups:
        raise ValueError("no (sample, group) pair had a span and a non-empty mask")
    return {
        "groups": groups,
        "chance_groups": chance_groups,
        "mean": sum(groups.values()) / len(groups),
        "chance": sum(chance_groups.values()) / len(chance_groups),
        "n_pairs": int(count.sum()),
        "n_batches": used,
        "layers": sorted(layers),
        "timesteps": [int(t) for t in timesteps],
        "map_hw": list(map_hw) if map_hw else None,
    }
