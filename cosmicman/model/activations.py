"""Swapping the UNet's activation function ("Prime": SiLU replaced by another activation).

Where SiLU lives in a diffusers 0.42 ``UNet2DConditionModel`` (read from the installed source):
- ``ResnetBlock2D.nonlinearity``: one module per block, called after norm1, on the time embedding and
  after norm2 (so swapping the module covers all three calls); built by ``get_activation(act_fn)``;
- ``time_embedding.act`` (``TimestepEmbedding``), ``conv_act``, ``class_embedding.act`` for
  ``class_embed_type="timestep"`` and ``time_embed_act``: ``get_activation(act_fn / time_embedding_act_fn)``;
- hardcoded ``nn.SiLU``: SDXL's ``add_embedding`` (a ``TimestepEmbedding`` built without ``act_fn``),
  ``class_embedding`` for ``class_embed_type="projection"``, and ``nn.SiLU`` entries of Sequentials in
  rarer embeddings (image_hint ``add_embedding``, GLIGEN ``position_net``).
Downsample2D / Upsample2D, attention, norms and ``encoder_hid_proj`` hold none, and the UNet path makes
no functional ``F.silu`` call of its own (``tests/model/test_activations.py`` checks both by counting every
``F.silu`` call during a forward). So every SiLU site is a parameter-free module, and swapping modules
leaves the weights bit-identical.

The transformer feed-forward is different: ``FeedForward.net[0]`` is diffusers' ``GEGLU`` (``GELU``
for ``activation_fn="gelu"``), which owns the ``proj`` Linear and calls ``F.gelu`` functionally inside
its ``gelu()`` method, so there is no module to swap (and an instance attribute cannot shadow that
method). ``ActivationConfig.feedforward`` therefore replaces the whole ``GEGLU``/``GELU`` module by
``FeedForwardActivation``, which takes over the *same* ``proj`` Linear under the same attribute name
(state_dict keys and tensors unchanged) and applies a registry activation module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.activations import GELU as DiffusersGELU
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # not `from diffusers`: typed as dummies
from torch import nn

# Key in the UNet config (config.json) under which the choice is persisted. Private (leading underscore):
# diffusers' ``from_pretrained`` passes a config key that is not an ``__init__`` argument on silently and
# keeps it in ``unet.config``, whereas a public one draws "config attributes ... are not expected and will be
# ignored", a warning that is false here (the loader below applies the choice).
CONFIG_KEY = "_cosmicman_activation"
# Where models saved before the key became private hold their choice; still read, never written.
LEGACY_CONFIG_KEY = "cosmicman_activation"


class MPSiLU(nn.Module):
    """EDM2's magnitude-preserving SiLU: silu(x) / 0.596 (0.596 = RMS of silu(x) for x ~ N(0, 1),
    so unit-variance inputs give unit-RMS outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x) / 0.596


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "mp_silu": MPSiLU,
}

# The ``act_fn`` written to the UNet config, i.e. what a stock ``from_pretrained`` builds at the
# act_fn sites. Exact for the names diffusers' ``get_activation`` knows; for the others the nearest
# stock activation, so a stock load is the closest stock model rather than an error.
_DIFFUSERS_ACT_FN = {
    "silu": "silu",
    "gelu": "gelu",
    "mish": "mish",
    "relu": "relu",
    "leaky_relu": "relu",
    "mp_silu": "silu",
}

# A site is a standalone activation module of one of these types. In a stock UNet they are exactly
# the SiLU sites (whatever ``act_fn`` it was built with), so re-applying switches activations.
_SITE_TYPES = tuple(ACTIVATIONS.values())


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@dataclass(frozen=True)
class ActivationConfig:
    """``name``: activation for every SiLU site. ``feedforward``: if set, also the activation of the
    transformer feed-forwards (GEGLU's gate becomes ``x * act(gate)``); None keeps diffusers' GEGLU."""

    name: str = "silu"
    feedforward: str | None = None

    def __post_init__(self) -> None:
        for value in (self.name, self.feedforward):
            if value is not None and value not in ACTIVATIONS:
                raise ValueError(f"unknown activation {value!r}; choose one of {sorted(ACTIVATIONS)}")


class FeedForwardActivation(nn.Module):
    """Stand-in for diffusers' ``GEGLU`` (gated) / ``GELU`` (not gated) with a module activation.

    Keeps the original ``proj`` Linear so parameter names and values are unchanged. Unlike GEGLU it
    has no fused NPU path (that path would bypass the chosen activation anyway)."""

    def __init__(self, proj: nn.Linear, activation: nn.Module, gated: bool) -> None:
        super().__init__()
        self.proj = proj
        self.activation = activation
        self.gated = gated

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # *args/**kwargs: FeedForward may pass the deprecated ``scale`` through, as GEGLU accepts it.
        hidden_states = self.proj(hidden_states)
        if self.gated:
            hidden_states, gate = hidden_states.chunk(2, dim=-1)
            return hidden_states * self.activation(gate)
        return self.activation(hidden_states)


def _site_kind(parent_name: str, attr: str) -> str:
    # Resnet activations are reported together; everything else by the UNet component it sits in
    # (time_embedding, add_embedding, class_embedding, conv_act, time_embed_act, ...).
    if attr == "nonlinearity":
        return "resnet"
    return parent_name.split(".")[0] if parent_name else attr


def apply_activation(unet: UNet2DConditionModel, config: ActivationConfig) -> dict[str, int]:
    """Replace every SiLU site of ``unet`` (in place) by ``config.name`` and, if
    ``config.feedforward`` is set, every feed-forward GEGLU/GELU; record the choice in the config.

    Only parameter-free modules are swapped (``proj`` Linears are re-parented, not copied), so
    ``state_dict()`` is bit-identical. Returns the number of modules replaced per site kind
    (``resnet`` counts one module per ResnetBlock2D, which it calls three times).

    Persistence (``save_pretrained`` writes the config): ``act_fn`` is set to ``config.name`` when
    diffusers knows it (silu, gelu, mish, relu), else to the nearest stock one (leaky_relu -> relu,
    mp_silu -> silu); the full choice is stored under ``_cosmicman_activation``. A stock
    ``UNet2DConditionModel.from_pretrained`` loads the folder anywhere (quietly: a private key is not an
    init argument, and is kept in ``unet.config``) and gives:
    the ``act_fn`` activation at resnet / time_embedding / conv_act (and timestep-type class_embedding)
    sites; SiLU at the hardcoded sites (SDXL ``add_embedding``, ...); ``time_embedding_act_fn``
    (default None: no module) at ``time_embed_act``; diffusers' GEGLU in the feed-forwards. So it is
    the intended model only for silu, or for an SD-1.5-style UNet with gelu/mish/relu, each with
    ``feedforward=None``. ``load_unet_with_activation`` gives the intended model in every case.
    Caveat: a stock-loaded model keeps the record, so training it as loaded and re-saving leaves a
    record that describes a network other than the one trained.
    """
    feedforwards = [
        (parent, attr, child)
        for parent in unet.modules()
        for attr, child in parent.named_children()
        if isinstance(child, (GEGLU, DiffusersGELU, FeedForwardActivation))
    ]
    if config.feedforward is None and any(isinstance(c, FeedForwardActivation) for _, _, c in feedforwards):
        # Restoring GEGLU in place would need its exact GELU variant; reloading is simpler and exact.
        raise ValueError("feed-forwards already replaced; reload the UNet to get diffusers' GEGLU back")
    targets = [
        (parent_name, parent, attr)
        for parent_name, parent in unet.named_modules(remove_duplicate=False)
        if not isinstance(parent, FeedForwardActivation)  # their activation is the ff's
        for attr, child in parent.named_children()
        if isinstance(child, _SITE_TYPES)
    ]

    counts: dict[str, int] = {}
    for parent_name, parent, attr in targets:
        setattr(parent, attr, make_activation(config.name))
        kind = _site_kind(parent_name, attr)
        counts[kind] = counts.get(kind, 0) + 1
    if config.feedforward is not None:
        for parent, attr, child in feedforwards:
            gated = child.gated if isinstance(child, FeedForwardActivation) else isinstance(child, GEGLU)
            activation = make_activation(config.feedforward)
            setattr(parent, attr, FeedForwardActivation(child.proj, activation, gated))
        counts["feedforward"] = len(feedforwards)

    unet.register_to_config(act_fn=_DIFFUSERS_ACT_FN[config.name], **{CONFIG_KEY: asdict(config)})
    return counts


def load_unet_with_activation(path: str, subfolder: str | None = None, **kwargs: Any) -> UNet2DConditionModel:
    """``UNet2DConditionModel.from_pretrained`` plus re-applying the recorded activation choice.

    Folders without a recorded choice (stock checkpoints) load unchanged; folders saved with the legacy key
    load with their choice (diffusers still warns about that key for them). ``kwargs`` go to
    ``from_pretrained`` (torch_dtype, revision, ...)."""
    unet = UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, **kwargs)
    # from_pretrained keeps config keys that are not init arguments in unet.config (checked by the tests)
    recorded = unet.config.get(CONFIG_KEY, unet.config.get(LEGACY_CONFIG_KEY))
    if recorded is not None:
        apply_activation(unet, ActivationConfig(**recorded))
    return unet
