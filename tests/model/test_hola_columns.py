"""HOLA on the span tokens' columns only: the same value and gradient as on the full maps."""

import pytest
import torch

from cosmicman.model.attention import HolaContext, install_capture, map_hw_for
from cosmicman.model.components import build_tiny_components
from cosmicman.model.hola import hola_loss, span_token_columns
from tests.support.hola_reference import hola_loss_reference

SPANS = torch.tensor(
    [
        [[1, 4], [4, 5], [-1, -1], [10, 20], [20, 22]],
        [[2, 3], [-1, -1], [-1, -1], [-1, -1], [30, 31]],
        [[-1, -1]] * 5,
    ]
)


def test_span_token_columns_union_over_the_batch():
    assert span_token_columns(SPANS, 77) == (1, 2, 3, 4, *range(10, 22), 30)
    assert span_token_columns(torch.full((2, 3, 2), -1), 77) == ()
    assert span_token_columns(torch.tensor([[[5, 5], [76, 77]]]), 77) == (76,)  # empty span: nothing; end 77 ok
    with pytest.raises(ValueError):
        span_token_columns(torch.tensor([[[70, 78]]]), 77)


@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_columns_give_the_full_maps_value_and_gradient(reduction):
    g = torch.Generator().manual_seed(0)
    B, P, K = 3, 16, 77
    logits = [torch.randn(B, heads, P, K, generator=g, requires_grad=True) for heads in (2, 2, 4)]
    masks = (torch.rand(B, 5, 16, 16, generator=g) > 0.5).float()
    cols = span_token_columns(SPANS, K)
    index = torch.tensor(cols)

    def loss_and_grads(columns):
        maps = [x.softmax(-1) if columns is None else x.softmax(-1).index_select(-1, index) for x in logits]
        loss = hola_loss(maps, masks, SPANS, reduction=reduction, map_hw=(4, 4), token_columns=columns)
        return loss, torch.autograd.grad(loss, logits)

    full, full_grads = loss_and_grads(None)
    part, part_grads = loss_and_grads(cols)
    reference = hola_loss_reference([x.softmax(-1) for x in logits], masks, SPANS, reduction=reduction, map_hw=(4, 4))
    assert part.item() == pytest.approx(full.item(), rel=1e-6)
    assert part.item() == pytest.approx(reference.item(), rel=1e-5)
    for a, b in zip(full_grads, part_grads, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-9)


def test_columns_must_hold_every_span_token():
    maps = [torch.rand(3, 1, 4, 3)]
    masks = torch.ones(3, 5, 2, 2)
    spans = torch.full_like(SPANS, -1)
    spans[0, 0] = torch.tensor([1, 4])
    assert hola_loss(maps, masks, spans, token_columns=(1, 2, 3)).item() > 0
    with pytest.raises(ValueError, match="not among"):
        hola_loss(maps, masks, spans, token_columns=(1, 2, 5))
    with pytest.raises(ValueError, match="ascending"):
        hola_loss(maps, masks, spans, token_columns=(3, 2, 1))
    with pytest.raises(ValueError, match="token columns"):
        hola_loss(maps, masks, spans, token_columns=(1, 2))
    no_spans = torch.full_like(SPANS, -1)
    assert hola_loss([torch.rand(3, 1, 4, 0)], masks, no_spans, token_columns=()).item() == 0.0


def test_capture_of_span_columns_trains_the_unet_like_full_maps():
    """Through a tiny UNet: the captured columns are the full probabilities' columns, and the loss and
    every parameter gradient equal those of the full capture."""
    unet = build_tiny_components(seed=0).unet.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    enc = torch.randn(2, 77, 32, generator=g)
    masks = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    spans = torch.tensor([[[1, 3], [3, 6], [-1, -1]], [[1, 2], [-1, -1], [9, 12]]])
    map_hw = map_hw_for((64, 64), 8)
    store = install_capture(unet)

    def run(columns):
        unet.zero_grad(set_to_none=True)
        store.clear()
        ctx = HolaContext(map_hw, token_columns=columns)
        pred = unet(x, t, enc, cross_attention_kwargs={"hola_ctx": ctx}).sample
        maps = dict(store.maps)
        loss = pred.pow(2).mean() + hola_loss(maps, masks, spans, map_hw=map_hw, token_columns=columns)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
        return loss.item(), grads, {n: m.detach() for n, m in maps.items()}

    cols = span_token_columns(spans, 77)
    assert cols == (1, 2, 3, 4, 5, 9, 10, 11)
    l_full, g_full, m_full = run(None)
    l_cols, g_cols, m_cols = run(cols)
    assert m_cols.keys() == m_full.keys() and len(m_full) == 4
    for name, m in m_cols.items():
        assert m.shape == (2, 2, 64, len(cols))
        assert torch.equal(m, m_full[name][..., list(cols)])
    assert l_cols == pytest.approx(l_full, rel=1e-6)
    assert g_cols.keys() == g_full.keys()
    worst = max(((g_full[k] - g_cols[k]).abs().max() / (g_full[k].abs().max() + 1e-12)).item() for k in g_full)
    assert worst <= 1e-5
    assert g_cols["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].abs().sum() > 0
