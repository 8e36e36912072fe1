r"""HOLA (paper Eq. 3): Human Body and Outfit Guided Loss for Alignment.

For one cross-attention map set M (one sample, one layer, one head) and N attribute groups, group i
having the token span [s_i, e_i) (end-exclusive) and the semantic mask h_i:

    L_paper = 1/N * sum_i ( sum_{j in [s_i, e_i)} ||m_j - h_i||^2  +  || mean_{j in [s_i, e_i)} m_j - h_i ||^2 )

where m_j is the map of token j and ||.||^2 sums over pixels. (Eq. 3 as printed sums j = s..e with
1/(e-s); with end-exclusive spans the mean is exact.)

Two reductions (``reduction=``):

- ``"paper"``: exactly the formula above per (sample, layer, head): sums over pixels and tokens, mean over
  the N groups that have a span.
- ``"released"``: what the public CosmicMan code (``loss.py``, ``HOLA_LOSS_Tools.get_map_loss``) computes:
  per (sample, layer, head) it concatenates, over all groups with a span, the token maps and the group's
  mean map into one stack and takes the mean squared error against the repeated masks over pixels *and
  all stacked maps*:  sum_i (token_sse_i + mean_sse_i) / (P * sum_i (n_i + 1)),  P = pixels, n_i = e_i - s_i.
  So a group weighs by n_i + 1 (groups with many tokens count more) and the value is ~P*(n+1) times
  smaller than the paper's. (NOTES-training.md describes this as "per group MSE, then a mean over groups";
  the code actually pools the groups before the mean; we follow the code.)

Both then average over all (layer, head) entries of the sample and over the samples that have at least
one group with a span (samples without one contribute nothing; a batch without any gives 0).

Normalisation of the maps: none beyond the attention itself. m_j are the per-head softmax probabilities
over the K (=77) text tokens, BOS/EOS/padding included, recomputed in fp32 -- as in the released code.
Masks are {0, 1} group masks (union of the group's ATR labels) resized to the map size with
``"area"`` (fraction of each map cell covered; equals one-hot-then-area on the label map) or
``"nearest"`` (nearest-exact sampling); never bilinear/Lanczos on labels. The released code bilinearly
resized one-hot masks (close to ``"area"`` for integer factors).

A group whose span is missing (null / (-1, -1)) gets no loss. A group with a span and an empty mask
(e.g. the attribute region is absent) still pulls its maps towards zero.

Only the columns of tokens inside a span enter the loss, so the trainer captures just those
(``span_token_columns``: the softmax still runs over all K keys, then the span columns are kept) and passes
them as ``token_columns``; the value and gradient are those of the full maps. The captured layers (one
level, one map size) are stacked along the head axis and reduced in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("paper", "released")
MASK_RESIZE_MODES = ("area", "nearest")


def resize_masks(masks: torch.Tensor, map_hw: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """(B, G, H, W) {0,1} group masks -> (B, G, h, w) float at the attention-map size."""
    if mode not in MASK_RESIZE_MODES:
        raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}, got {mode!r}")
    masks = masks.float()
    if tuple(masks.shape[-2:]) == tuple(map_hw):
        return masks
    if mode == "area":
        return F.interpolate(masks, size=tuple(map_hw), mode="area")
    return F.interpolate(masks, size=tuple(map_hw), mode="nearest-exact")


def span_weights(spans: torch.Tensor, n_keys: int) -> torch.Tensor:
    """(B, G, 2) end-exclusive spans -> (B, G, K) {0,1} token membership; invalid spans give all zeros."""
    s, e = spans[..., 0:1], spans[..., 1:2]
    valid = (s >= 0) & (e > s)
    if bool(((e > n_keys) & valid).any()):
        raise ValueError(f"a span ends past the {n_keys} text tokens: {spans.tolist()}")
    j = torch.arange(n_keys, device=spans.device)
    return ((j >= s) & (j < e) & valid).float()


def span_token_columns(spans: torch.Tensor, n_keys: int) -> tuple[int, ...]:
    """Ascending indices of the tokens inside any valid span of the batch: the key columns HOLA reads."""
    inside = span_weights(spans, n_keys).flatten(0, -2).amax(0) if spans.numel() else torch.zeros(n_keys)
    return tuple(int(j) for j in inside.nonzero().flatten().tolist())


def _map_grid(masks: torch.Tensor, n_cells: int, map_hw: tuple[int, int] | None) -> tuple[int, int]:
    if map_hw is not None:
        return (int(map_hw[0]), int(map_hw[1]))
    H, W = masks.shape[-2:]  # infer: n_cells cells with the masks' aspect ratio
    scale = (H * W / n_cells) ** 0.5
    return (round(H / scale), round(W / scale))


def _per_entry_terms(attn: torch.Tensor, masks_flat: torch.Tensor, w: torch.Tensor):
    """attn (B, H, P, K) fp32 probabilities, masks_flat (B, G, P), w (B, G, K).

    Returns token_sse, mean_sse: (B, H, G) sums over pixels (and over the span's tokens for token_sse)."""
    n = w.sum(-1)  # (B, G)
    # token term: sum_j w_gj sum_p (A_pj - M_gp)^2 = sum_j w_gj (sum_p A_pj^2 - 2 sum_p A_pj M_gp) + n_g sum_p M_gp^2
    a2 = attn.pow(2).sum(2)  # (B, H, K)
    am = torch.einsum("bhpk,bgp->bhgk", attn, masks_flat)  # (B, H, G, K)
    m2 = masks_flat.pow(2).sum(-1)  # (B, G)
    token_sse = torch.einsum("bgk,bhk->bhg", w, a2) - 2 * torch.einsum("bgk,bhgk->bhg", w, am) + (n * m2)[:, None, :]
    # mean-map term
    mean_map = torch.einsum("bhpk,bgk->bhgp", attn, w) / n.clamp(min=1)[:, None, :, None]  # (B, H, G, P)
    mean_sse = (mean_map - masks_flat[:, None]).pow(2).sum(-1)  # (B, H, G)
    return token_sse.clamp(min=0), mean_sse


def hola_loss(
    maps: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    masks: torch.Tensor,
    spans: torch.Tensor,
    reduction: str = "released",
    mask_resize: str = "area",
    map_hw: tuple[int, int] | None = None,
    token_columns: Sequence[int] | None = None,
) -> torch.Tensor:
    """HOLA over captured maps.

    maps: layer -> (B, heads, P, K) probabilities with P = h*w; all layers share one ``map_hw`` = (h, w)
    (the captured level); if not given it is inferred from the masks' aspect ratio. Masks may be at the
    map size or at image size. masks: (B, G, H, W) group masks. spans: (B, G, 2) long, end-exclusive,
    (-1, -1) for groups without a span (also used to pad G); keep them on the CPU (as the loader gives
    them): the span checks then cost the device no synchronisation. ``token_columns``: the maps hold only
    these key columns (ascending token indices, e.g. ``span_token_columns(spans, 77)``), every span token
    among them; None: the maps hold all keys."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    layers = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not layers:
        raise ValueError("no attention maps captured: check the HOLA map size against the UNet's levels")
    B, _, P, K = layers[0].shape
    if masks.shape[:2] != spans.shape[:2] or masks.shape[0] != B:
        raise ValueError(f"masks {tuple(masks.shape)} / spans {tuple(spans.shape)} / maps batch {B} disagree")
    map_hw = _map_grid(masks, P, map_hw)
    if map_hw[0] * map_hw[1] != P:
        raise ValueError(f"cannot infer a map grid of {P} cells for masks of {masks.shape[-2]}x{masks.shape[-1]}")
    for attn in layers:
        if attn.shape[0] != B or attn.shape[2] != P or attn.shape[3] != K:
            raise ValueError(f"captured maps have mixed shapes: {attn.shape} vs {(B, '*', P, K)}")
    device = layers[0].device
    # span bookkeeping where the spans are (the CPU, from the loader): its checks never wait for the GPU
    w = _column_weights(spans, K, token_columns)  # (B, G, K)
    n = w.sum(-1)  # (B, G)
    valid = n > 0  # (B, G)
    n_valid = valid.sum(-1)  # (B,)
    sample_ok = n_valid > 0
    if not bool(sample_ok.any()):
        return layers[0].new_zeros(())
    m = resize_masks(masks, map_hw, mask_resize).flatten(2).to(device, non_blocking=True)  # (B, G, P)
    w, n, valid, n_valid, sample_ok = (x.to(device, non_blocking=True) for x in (w, n, valid, n_valid, sample_ok))

    # one level: every layer has (B, *, P, K), so (layer, head) entries stack along the head axis
    attn = torch.cat([a.float() for a in layers], dim=1) if len(layers) > 1 else layers[0].float()
    token_sse, mean_sse = _per_entry_terms(attn, m, w)
    per_group = (token_sse + mean_sse) * valid[:, None, :]  # (B, entries, G)
    if reduction == "paper":
        per_entry = per_group.sum(-1) / n_valid.clamp(min=1)[:, None]
    else:
        denom = (P * (n + 1) * valid).sum(-1)  # (B,)
        per_entry = per_group.sum(-1) / denom.clamp(min=1)[:, None]
    per_sample = per_entry.mean(1)  # mean over (layer, head) entries
    return per_sample[sample_ok].mean()


def _column_weights(spans: torch.Tensor, K: int, token_columns: Sequence[int] | None) -> torch.Tensor:
    """(B, G, K) span membership of the maps' K key columns (all keys, or ``token_columns``)."""
    if token_columns is None:
        return span_weights(spans, K)
    if len(token_columns) != K:
        raise ValueError(f"{len(token_columns)} token columns for maps with {K} key columns")
    if any(b <= a for a, b in zip(token_columns, token_columns[1:])):
        raise ValueError(f"token columns must be ascending without repeats: {tuple(token_columns)}")
    n_keys = max([0, int(spans[..., 1].max()) if spans.numel() else 0, *(j + 1 for j in token_columns)])
    full = span_weights(spans, n_keys)
    w = full[..., list(token_columns)]
    if bool((w.sum(-1) != full.sum(-1)).any()):
        raise ValueError(f"a span token is not among the captured columns {tuple(token_columns)}")
    return w
