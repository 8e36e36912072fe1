"""HOLA (paper Eq. 3) against hand-computed values, for both reductions."""

import pytest
import torch

from cosmicman.model.hola import hola_loss, resize_masks, span_weights
from tests.support.hola_reference import hola_loss_reference


def toy():
    """One sample, one layer, one head; a 1x2 map (P=2 pixels), K=4 tokens.

    attention probabilities A[pixel, token]:
        pixel 0: 0.1 0.2 0.3 0.4
        pixel 1: 0.5 0.1 0.2 0.2
    group 0: span [1, 3) -> tokens 1, 2; mask (1, 0)
    group 1: span [3, 4) -> token 3;     mask (0, 1)
    group 2: no span (null)              mask (1, 1)  -> no loss
    """
    A = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.2]])
    maps = {"l0": A[None, None]}  # (B=1, heads=1, P=2, K=4)
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(1, 3, 1, 2)
    spans = torch.tensor([[[1, 3], [3, 4], [-1, -1]]])
    return maps, masks, spans


# Hand arithmetic (||.||^2 summed over the 2 pixels):
# group 0: m_1 = (0.2, 0.1): (0.2-1)^2 + (0.1-0)^2 = 0.64 + 0.01 = 0.65
#          m_2 = (0.3, 0.2): (0.3-1)^2 + (0.2-0)^2 = 0.49 + 0.04 = 0.53
#          mean = (0.25, 0.15): 0.75^2 + 0.15^2   = 0.5625 + 0.0225 = 0.585
#          total = 0.65 + 0.53 + 0.585 = 1.765
# group 1: m_3 = (0.4, 0.2) vs (0, 1): 0.16 + 0.64 = 0.80; its mean is the same map: 0.80; total 1.60
# paper    = (1.765 + 1.60) / N=2 groups                         = 1.6825
# released = (1.765 + 1.60) / (P=2 * ((2+1) + (1+1)) stacked maps) = 3.365 / 10 = 0.3365
PAPER = 1.6825
RELEASED = 0.3365


@pytest.mark.parametrize("reduction,expected", [("paper", PAPER), ("released", RELEASED)])
def test_hand_computed(reduction, expected):
    maps, masks, spans = toy()
    assert hola_loss(maps, masks, spans, reduction=reduction).item() == pytest.approx(expected, abs=1e-6)
    assert hola_loss_reference(maps, masks, spans, reduction=reduction).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("reduction,expected", [("paper", PAPER), ("released", RELEASED)])
def test_means_over_heads_layers_and_samples_without_groups(reduction, expected):
    maps, masks, spans = toy()
    A = maps["l0"]
    # a second head/layer with the same maps, and a second sample with no span at all:
    two = torch.cat([A, torch.full_like(A, 0.25)], dim=0)  # sample 1 has other maps but no spans
    maps2 = {"l0": two.repeat(1, 2, 1, 1), "l1": two}
    masks2 = torch.cat([masks, masks])
    spans2 = torch.cat([spans, torch.full_like(spans, -1)])
    assert hola_loss(maps2, masks2, spans2, reduction=reduction).item() == pytest.approx(expected, abs=1e-6)


def test_no_groups_gives_zero():
    maps, masks, spans = toy()
    assert hola_loss(maps, masks, torch.full_like(spans, -1)).item() == 0.0


def test_end_exclusive_span_weights():
    w = span_weights(torch.tensor([[[1, 3], [-1, -1], [5, 5]]]), 6)
    assert w.tolist() == [[[0, 1, 1, 0, 0, 0], [0] * 6, [0] * 6]]
    with pytest.raises(ValueError):
        span_weights(torch.tensor([[[70, 78]]]), 77)


@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_vectorised_matches_loops_on_random_maps(reduction):
    g = torch.Generator().manual_seed(0)
    B, heads, h, w, K, G = 3, 2, 4, 4, 77, 5
    maps = {f"l{i}": torch.randn(B, heads, h * w, K, generator=g).softmax(-1) for i in range(3)}
    masks = (torch.rand(B, G, 16, 16, generator=g) > 0.5).float()
    spans = torch.tensor(
        [
            [[1, 4], [4, 5], [-1, -1], [10, 20], [20, 22]],
            [[2, 3], [-1, -1], [-1, -1], [-1, -1], [-1, -1]],
            [[-1, -1]] * 5,
        ]
    )
    a = hola_loss(maps, masks, spans, reduction=reduction, map_hw=(4, 4))
    b = hola_loss_reference(maps, masks, spans, reduction=reduction, map_hw=(4, 4))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_gradient_flows_to_maps():
    maps, masks, spans = toy()
    A = maps["l0"].clone().requires_grad_(True)
    hola_loss({"l0": A}, masks, spans, reduction="paper").backward()
    # d/dA[p, j] of the paper loss for group 1 (token 3): (2 (A - h) + 2 (A - h)) / N  -> pixel 0: 4*0.4/2
    assert A.grad[0, 0, 0, 3].item() == pytest.approx(0.8, abs=1e-6)
    assert A.grad[0, 0, 0, 0].item() == 0.0  # token 0 is in no span


def test_mask_resize_area_and_nearest():
    # 4x4 mask, left 3 columns set: area at 2x2 gives coverage (1, 0.5); nearest gives {0,1}
    m = torch.zeros(1, 1, 4, 4)
    m[..., :3] = 1
    area = resize_masks(m, (2, 2), "area")
    assert area[0, 0].tolist() == [[1.0, 0.5], [1.0, 0.5]]
    near = resize_masks(m, (2, 2), "nearest")
    assert set(near.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        resize_masks(m, (2, 2), "bilinear")
