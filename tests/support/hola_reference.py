"""HOLA (paper Eq. 3) loop by loop: the test oracle for ``cosmicman.model.hola.hola_loss``.

Slow and plainly written, one (sample, layer, head, group) at a time, so that a reader can check the
definition in ``cosmicman/model/hola.py``'s docstring against it; the vectorised loss must agree with it.
It lives with the tests because nothing in the package calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from cosmicman.model.hola import resize_masks


def hola_loss_reference(
    maps: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    masks: torch.Tensor,
    spans: torch.Tensor,
    reduction: str = "released",
    mask_resize: str = "area",
    map_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The loss of the same maps, masks and spans; ``map_hw`` None: the masks are at the map size."""
    layers = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    B, _, P, _ = layers[0].shape
    map_hw = map_hw or (int(masks.shape[-2]), int(masks.shape[-1]))
    assert map_hw[0] * map_hw[1] == P, (map_hw, P)
    m = resize_masks(masks, map_hw, mask_resize).flatten(2)
    sample_losses = []
    for b in range(B):
        groups = [(g, int(s), int(e)) for g, (s, e) in enumerate(spans[b].tolist()) if s >= 0 and e > s]
        if not groups:
            continue
        entries: list[torch.Tensor] = []
        for attn in layers:
            for h in range(attn.shape[1]):
                a = attn[b, h].float()  # (P, K)
                if reduction == "paper":
                    tot = torch.zeros(())
                    for g, s, e in groups:
                        tok = sum(((a[:, j] - m[b, g]) ** 2).sum() for j in range(s, e))
                        mean = ((a[:, s:e].mean(-1) - m[b, g]) ** 2).sum()
                        tot = tot + tok + mean
                    entries.append(tot / len(groups))
                else:
                    stack_a, stack_m = [], []
                    for g, s, e in groups:
                        stack_a += [a[:, s:e], a[:, s:e].mean(-1, keepdim=True)]
                        stack_m += [m[b, g][:, None].expand(-1, e - s + 1)]
                    entries.append(((torch.cat(stack_a, -1) - torch.cat(stack_m, -1)) ** 2).mean())
        sample_losses.append(torch.stack(entries).mean())
    if not sample_losses:
        return torch.zeros(())
    return torch.stack(sample_losses).mean()
