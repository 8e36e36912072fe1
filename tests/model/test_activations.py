"""Activation swapping ("Prime") on tiny SD-1.5-style and SDXL-style UNets (CPU, a few seconds)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # not `from diffusers`: typed as dummies
from torch import nn

from cosmicman.model.activations import (
    ACTIVATIONS,
    ActivationConfig,
    FeedForwardActivation,
    MPSiLU,
    apply_activation,
    load_unet_with_activation,
    make_activation,
)
from cosmicman.model.components import tiny_unet_config

NAMES = sorted(ACTIVATIONS)
TEXT_DIM = 32
TIME_IDS_DIM = 8


def sdxl_tiny_config() -> dict[str, Any]:
    # SDXL layout at tiny size: plain first level, linear projections, 2 transformer layers at the
    # deeper level, text_time additional embedding (pooled text + 6 time ids, each sinusoid-embedded).
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_IDS_DIM,
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * TIME_IDS_DIM,
    )


# Expected SiLU sites: resnets = 2 down + 2 mid + 2x2 up; one time_embedding, one conv_act; SDXL adds
# the hardcoded add_embedding. Feed-forwards (GEGLU): SD 2 down + 1 mid + 4 up transformer layers;
# SDXL 2 down + 2 mid + 4 up (2 layers each at the deep level only).
KINDS = {
    "sd15": {"resnet": 8, "time_embedding": 1, "conv_act": 1},
    "sdxl": {"resnet": 8, "time_embedding": 1, "add_embedding": 1, "conv_act": 1},
}
FEEDFORWARDS = {"sd15": 7, "sdxl": 8}


@pytest.fixture(scope="module")
def base_unets() -> dict[str, UNet2DConditionModel]:
    torch.manual_seed(0)
    sd15 = UNet2DConditionModel(**tiny_unet_config())
    torch.manual_seed(0)
    sdxl = UNet2DConditionModel(**sdxl_tiny_config())
    return {"sd15": sd15.eval(), "sdxl": sdxl.eval()}


def run(unet: UNet2DConditionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    kwargs: dict[str, Any] = {}
    if unet.config["addition_embed_type"] == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, TEXT_DIM, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    with torch.no_grad():
        return unet(
            torch.randn(2, 4, 16, 16, generator=g),
            torch.tensor([10, 500]),
            encoder_hidden_states=torch.randn(2, 8, TEXT_DIM, generator=g),
            **kwargs,
        ).sample


def silu_census(unet: UNet2DConditionModel, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One forward, counting every F.silu call (modules and functional call sites alike), the calls
    of nn.SiLU / MPSiLU modules (both go through F.silu), and which SiLU modules ran."""
    calls: Counter[str] = Counter()
    real_silu = F.silu

    def counting_silu(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["F.silu"] += 1
        return real_silu(*args, **kwargs)

    def hook(module: nn.Module, *_: Any) -> None:
        calls["module"] += 1
        ran.add(id(module))

    ran: set[int] = set()
    monkeypatch.setattr(torch.nn.functional, "silu", counting_silu)
    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, (nn.SiLU, MPSiLU))]
    try:
        out = run(unet)
    finally:
        for h in handles:
            h.remove()
        monkeypatch.undo()
    silu_modules = {id(m) for m in unet.modules() if isinstance(m, nn.SiLU)}
    return {"calls": calls, "ran": ran, "silu_modules": silu_modules, "out": out}


def site_types(unet: UNet2DConditionModel) -> list[tuple[str, str, str]]:
    sites = (nn.SiLU, nn.GELU, nn.Mish, nn.ReLU, nn.LeakyReLU, MPSiLU, GEGLU, FeedForwardActivation)
    return [
        (name, type(m).__name__, type(getattr(m, "activation", None)).__name__)
        for name, m in unet.named_modules()
        if isinstance(m, sites)
    ]


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mp_silu_numerics() -> None:
    x = torch.tensor([1.0, -2.0, 0.0])
    assert torch.allclose(MPSiLU()(x), F.silu(x) / 0.596)
    assert MPSiLU()(torch.tensor(1.0)).item() == pytest.approx(0.7310586 / 0.596, rel=1e-6)
    # magnitude-preserving: unit-variance input -> unit-RMS output
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert MPSiLU()(z).pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name, rms", [("mish", 0.080), ("gelu", 0.0995), ("relu", 0.209)])
def test_rms_distance_from_silu_matches_notes(name: str, rms: float) -> None:
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    distance = (make_activation(name)(z) - F.silu(z)).pow(2).mean().sqrt().item()
    assert distance == pytest.approx(rms, abs=0.002)


def test_unknown_activation_rejected() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        ActivationConfig("swishy")
    with pytest.raises(ValueError, match="unknown activation"):
        ActivationConfig("gelu", feedforward="tanh")


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_stock_unet_silu_sites_are_all_modules(arch: str, base_unets, monkeypatch) -> None:
    census = silu_census(copy.deepcopy(base_unets[arch]), monkeypatch)
    # no functional F.silu call site besides the nn.SiLU modules, and every SiLU module is live
    assert census["calls"]["F.silu"] == census["calls"]["module"] > 0
    assert census["ran"] == census["silu_modules"]
    assert len(census["silu_modules"]) == sum(KINDS[arch].values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_apply_replaces_every_silu_site(arch: str, name: str, base_unets, monkeypatch) -> None:
    base = base_unets[arch]
    unet = copy.deepcopy(base)
    counts = apply_activation(unet, ActivationConfig(name))
    assert counts == KINDS[arch]

    census = silu_census(unet, monkeypatch)
    if name == "silu":
        assert census["calls"]["F.silu"] == census["calls"]["module"]  # fresh nn.SiLU modules
    else:
        assert not census["silu_modules"]
        # the only F.silu calls left are MPSiLU's own
        assert census["calls"]["F.silu"] == (census["calls"]["module"] if name == "mp_silu" else 0)
    assert sum(isinstance(m, ACTIVATIONS[name]) for m in unet.modules()) == sum(KINDS[arch].values())
    assert_same_state(unet, base)

    out, ref = census["out"], run(base)
    assert torch.isfinite(out).all()
    if name == "silu":
        assert torch.equal(out, ref)
    else:
        assert not torch.allclose(out, ref)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_feedforward_replacement(arch: str, base_unets) -> None:
    base = base_unets[arch]
    unet = copy.deepcopy(base)
    # GELU as the feed-forward activation is diffusers' GEGLU exactly: checks the stand-in module
    counts = apply_activation(unet, ActivationConfig("silu", feedforward="gelu"))
    assert counts["feedforward"] == FEEDFORWARDS[arch]
    assert not any(isinstance(m, GEGLU) for m in unet.modules())
    assert_same_state(unet, base)
    assert torch.equal(run(unet), run(base))

    # switching again acts on the stand-ins; the feed-forward activation is not a SiLU site
    counts = apply_activation(unet, ActivationConfig("mish", feedforward="mp_silu"))
    assert counts == {**KINDS[arch], "feedforward": FEEDFORWARDS[arch]}
    assert sum(isinstance(m, MPSiLU) for m in unet.modules()) == FEEDFORWARDS[arch]
    assert_same_state(unet, base)
    out = run(unet)
    assert torch.isfinite(out).all() and not torch.allclose(out, run(base))

    before = site_types(unet)
    with pytest.raises(ValueError, match="reload"):
        apply_activation(unet, ActivationConfig("gelu"))
    assert site_types(unet) == before  # refused before touching anything


def test_loader_leaves_stock_checkpoints_alone(base_unets, tmp_path) -> None:
    base_unets["sdxl"].save_pretrained(tmp_path)
    reloaded = load_unet_with_activation(str(tmp_path))
    assert site_types(reloaded) == site_types(base_unets["sdxl"])
    assert sum(isinstance(m, nn.SiLU) for m in reloaded.modules()) == sum(KINDS["sdxl"].values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_save_reload_keeps_activation(arch: str, name: str, base_unets, tmp_path) -> None:
    unet = copy.deepcopy(base_unets[arch])
    feedforward = "relu" if name == "mp_silu" else None
    apply_activation(unet, ActivationConfig(name, feedforward=feedforward))
    unet.save_pretrained(tmp_path / "unet")

    reloaded = load_unet_with_activation(str(tmp_path), subfolder="unet").eval()
    assert site_types(reloaded) == site_types(unet)
    assert_same_state(reloaded, unet)
    assert torch.equal(run(reloaded), run(unet))

    # what a stock diffusers load gives: act_fn (exact or nearest stock) at the act_fn sites, SiLU at
    # SDXL's add_embedding, GEGLU in the feed-forwards
    stock = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    fallback = {"leaky_relu": nn.ReLU, "mp_silu": nn.SiLU}.get(name, ACTIVATIONS[name])
    assert type(stock.conv_act) is fallback and type(stock.time_embedding.act) is fallback
    assert all(type(r.nonlinearity) is fallback for b in stock.down_blocks for r in b.resnets)
    if arch == "sdxl":
        assert type(stock.add_embedding.act) is nn.SiLU
    assert sum(isinstance(m, GEGLU) for m in stock.modules()) == FEEDFORWARDS[arch]
    assert_same_state(stock, unet)
