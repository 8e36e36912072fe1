"""Cross-attention capture: exact probabilities, unchanged outputs, gradients under checkpointing."""

import inspect

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from cosmicman.model.attention import (
    CaptureAttnProcessor,
    HolaContext,
    cross_attention_query_counts,
    install_capture,
    map_hw_for,
)
from cosmicman.model.components import build_tiny_components
from cosmicman.model.hola import hola_loss

MAP_HW = map_hw_for((64, 64), 8)  # tiny: factor-4 VAE, 16x16 latent; the 8x8 level has 64 queries


class RecordingAttnProcessor(AttnProcessor):
    """diffusers' explicit (non-fused) processor, recording ``attn.get_attention_scores`` of attn2 layers."""

    def __init__(self, name, sink):
        super().__init__()
        self.name, self.sink = name, sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, hola_ctx=None):
        if encoder_hidden_states is not None:
            b = hidden_states.shape[0]
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(q, k, None)  # (B*heads, Q, K)
            self.sink[self.name] = probs.view(b, attn.heads, *probs.shape[1:])
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@pytest.fixture(scope="module")
def tiny():
    unet = build_tiny_components(seed=0).unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    enc = torch.randn(2, 77, 32, generator=g)
    return unet, x, t, enc


def test_every_processor_names_hola_ctx(tiny):
    unet = tiny[0]
    install_capture(unet)
    for proc in unet.attn_processors.values():
        assert "hola_ctx" in inspect.signature(proc.__call__).parameters


def test_capture_equals_explicit_probabilities_and_stock_output(tiny):
    unet, x, t, enc = tiny
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = unet(x, t, enc).sample
    sink = {}
    unet.set_attn_processor({k: RecordingAttnProcessor(k[: -len(".processor")], sink) for k in unet.attn_processors})
    with torch.no_grad():
        explicit_out = unet(x, t, enc).sample
    store = install_capture(unet)
    with torch.no_grad():
        out = unet(x, t, enc, cross_attention_kwargs={"hola_ctx": HolaContext(MAP_HW)}).sample
    assert (out - stock).abs().max().item() <= 1e-5
    assert (out - explicit_out).abs().max().item() <= 1e-5
    expected_layers = sorted(n for n, c in cross_attention_query_counts(unet, (16, 16)).items() if c == 64)
    assert (
        store.layers()
        == expected_layers
        == [
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
        ]
    )
    for name, probs in store.maps.items():
        assert probs.dtype == torch.float32 and probs.shape == (2, 2, 64, 77)
        assert (probs - sink[name]).abs().max().item() <= 1e-5
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert all("attn1" not in n for n in store.maps)  # self-attention never materialised
    # without a context (e.g. inside a pipeline) nothing is captured and output is unchanged
    store.clear()
    with torch.no_grad():
        plain = unet(x, t, enc).sample
    assert not store.maps and (plain - stock).abs().max().item() <= 1e-5


def _grads(unet, x, t, enc, masks, spans, checkpointing):
    unet.zero_grad(set_to_none=True)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    store = install_capture(unet)
    store.clear()
    pred = unet(x, t, enc, cross_attention_kwargs={"hola_ctx": HolaContext(MAP_HW)}).sample
    loss = pred.pow(2).mean() + hola_loss(store.maps, masks, spans, map_hw=MAP_HW)
    loss.backward()  # capture stays on through backward (recompute overwrites the same keys)
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    unet.disable_gradient_checkpointing()
    return loss.item(), grads, len(store.maps)


def test_gradients_with_checkpointing_equal_without(tiny):
    unet, x, t, enc = tiny
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    spans = torch.tensor([[[1, 3], [3, 6], [-1, -1]], [[1, 2], [-1, -1], [2, 5]]])
    l0, g0, n0 = _grads(unet, x, t, enc, masks, spans, checkpointing=False)
    l1, g1, n1 = _grads(unet, x, t, enc, masks, spans, checkpointing=True)
    assert n0 == n1 == 4
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == len(list(unet.parameters()))
    worst = max(((g0[k] - g1[k]).abs().max() / (g0[k].abs().max() + 1e-12)).item() for k in g0)
    assert worst <= 1e-5
    # HOLA actually reaches the cross-attention projections of the captured level
    assert g0["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].abs().sum() > 0


def test_capture_allow_list(tiny):
    unet, x, t, enc = tiny
    only = "mid_block.attentions.0.transformer_blocks.0.attn2"
    store = install_capture(unet, layers=[only])
    with torch.no_grad():
        unet(x, t, enc, cross_attention_kwargs={"hola_ctx": HolaContext(MAP_HW)})
    assert store.layers() == [only]
    assert isinstance(unet.attn_processors[only + ".processor"], CaptureAttnProcessor)
