"""Attention overlays: where each caption group's words look in a generated test image.

For the first ``overlay_prompts`` test prompts the evaluation captures the UNet's cross-attention while it
generates their images, in the main generation pass (the same call, seeds and batches: the images are the
samples, bit for bit; only those prompts' batches carry the capture, the rest run on the stock processors).

Which maps. All cross-attention layers at one level of the UNet, by default the released HOLA level, 1/16 of
the image (:data:`OVERLAY_MAP_FACTOR`: SD-1.5's 32x32 at 512 px, SDXL's 64x64 at 1024 px), or, for a model
without cross-attention there, the level nearest to it (the embedded 64 px models: 1/8, 8x8, their tiny
recipe's HOLA level); ``overlay_map_factor`` names another. The HOLA level, because that is where HOLA pulls
the maps into the masks; one level, because maps of different sizes cannot be averaged cell by cell; chosen
from the UNet alone, so every model of one architecture is shown at the same level (the untuned base too,
which has no training record). The report records the level. The captured probabilities are those of the
conditional branch (the last ``B`` rows of a classifier-free-guidance batch), averaged with equal weight over
the denoising steps, the layers and the heads.

Normalisation. At every map cell the averaged maps over the 77 text tokens sum to 1 (a mean of softmax
distributions over the tokens). A caption group's map is the mean over its token span (end-exclusive, the
spans the trainer uses for HOLA, from :func:`cosmicman.datasets.captions.build_caption`) of its tokens' maps:
at each cell, the mean probability that the cell attends to one of the group's tokens. The report keeps each
group's ``mean`` (over cells) and ``peak``; the heatmap shows the map divided by its own peak (where the group
looks, not how much: the groups' magnitudes are the report's numbers). A group without a span (its words do
not occur exactly once in the prompt) has no map; the report lists it under ``groups_without_span``.

The picture (``overlays/NNN.png``): the generated image, then one panel per group with a span, in caption
order (wrapped into lines of :data:`PANELS_PER_LINE`): the heatmap (blue, low -> red, high) blended on the
image, below it the group name and its peak / mean (near 1.0x: the group attends everywhere alike). Images
smaller than :data:`PANEL_MIN_SIDE` are enlarged by an integer factor, pixel-repeated, so the first panel is
the sample's pixels exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cosmicman.core.caption_draw import Caption
from cosmicman.core.imageio import encode_png
from cosmicman.core.store import Store
from cosmicman.model.attention import (
    AttentionMapStore,
    CaptureAttnProcessor,
    HolaContext,
    cross_attention_query_counts,
)
from cosmicman.model.train.recipes import RECIPES

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

#: the released recipe's HOLA map factor (image side / map side), the overlays' level unless one is named
OVERLAY_MAP_FACTOR: int = RECIPES["released-sd15"]["hola_map_factor"]
#: panels narrower than this are pixel-repeated by an integer factor (a 64 px sample becomes 192 px)
PANEL_MIN_SIDE = 192
#: height of the name strip below each panel
LABEL_HEIGHT = 16
#: panels per line of an overlay picture (7 x 192 px: what the UI's markdown dialog shows unscaled)
PANELS_PER_LINE = 7
#: weight of the heatmap in the blend
HEAT_ALPHA = 0.5
# blue -> cyan -> green -> yellow -> red at 0, 1/4, 1/2, 3/4, 1 (a jet-like ramp: low and high read apart)
_RAMP = np.array([[0, 0, 160], [0, 200, 255], [60, 200, 60], [255, 220, 0], [220, 0, 0]], dtype=np.float64)


@dataclass(frozen=True)
class AttentionLevel:
    """The UNet level the overlays read: its maps' (h, w), the image-to-map factor, the layers captured there."""

    map_hw: tuple[int, int]
    map_factor: int
    layers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"map_hw": list(self.map_hw), "map_factor": self.map_factor, "layers": list(self.layers)}


def attention_level(unet: UNet2DConditionModel, side: int, vae_factor: int, map_factor: int | None) -> AttentionLevel:
    """The level of ``map_factor`` (image side / map side) for ``side`` px images; None: the level with
    cross-attention nearest to :data:`OVERLAY_MAP_FACTOR` (in octaves; the finer of two as near). A named
    factor without cross-attention is a one-line error naming the factors that have it."""
    latent = (side // vae_factor, side // vae_factor)
    counts = cross_attention_query_counts(unet, latent)
    levels = {}  # factor -> map_hw, for every level that has a cross-attention layer
    for level in range(len(unet.config["block_out_channels"])):
        hw = (-(-latent[0] // 2**level), -(-latent[1] // 2**level))
        if hw[0] * hw[1] in counts.values():
            levels[vae_factor * 2**level] = hw
    if not levels:
        raise ValueError("the UNet has no cross-attention layer: there is nothing to overlay")
    if map_factor is None:
        factor = min(levels, key=lambda f: (abs(math.log2(f / OVERLAY_MAP_FACTOR)), f))
    else:
        factor = map_factor
    if factor not in levels:
        raise ValueError(
            f"overlay_map_factor {map_factor} has no cross-attention level for {side} px images; "
            f"levels with cross-attention: {', '.join(str(f) for f in sorted(levels))}"
        )
    hw = levels[factor]
    return AttentionLevel(hw, factor, tuple(sorted(n for n, c in counts.items() if c == hw[0] * hw[1])))


class StepMeanMaps:
    """Sum and count of captured (B, P, K) maps, each already the mean over heads of the conditional rows."""

    def __init__(self, n_prompts: int) -> None:
        self.n_prompts = n_prompts
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, probs: torch.Tensor) -> None:
        """``probs``: (N, heads, P, K) of one layer at one step; the conditional prompts are the last B rows."""
        if probs.shape[0] not in (self.n_prompts, 2 * self.n_prompts):
            raise ValueError(f"captured {probs.shape[0]} rows for {self.n_prompts} prompts (expected B or 2B)")
        cond = probs[-self.n_prompts :].mean(1).double()
        self.total = cond if self.total is None else self.total + cond
        self.count += 1

    def mean(self) -> np.ndarray:
        """(B, P, K): the maps averaged over every captured (layer, step), each with equal weight."""
        if self.total is None:
            raise ValueError("no cross-attention was captured at the chosen level during generation")
        return (self.total / self.count).cpu().numpy()


class _StepMeanProcessor(CaptureAttnProcessor):
    """``CaptureAttnProcessor`` with a standing context (a pipeline call forwards none): every forward of a
    captured layer hands its maps to ``maps`` and keeps none in the store."""

    def __init__(self, name: str, store: AttentionMapStore, ctx: HolaContext, maps: StepMeanMaps, capture: bool):
        super().__init__(name, store, capture=capture)
        self.ctx = ctx
        self.maps = maps

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        hola_ctx: HolaContext | None = None,
    ) -> torch.Tensor:
        out = super().__call__(
            attn,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            temb,
            hola_ctx if hola_ctx is not None else self.ctx,
        )
        probs = self.store.maps.pop(self.name, None)
        if probs is not None:
            self.maps.add(probs)
        return out


@contextlib.contextmanager
def capturing(unet: UNet2DConditionModel, level: AttentionLevel, n_prompts: int) -> Iterator[StepMeanMaps]:
    """Within the block, every forward of ``unet`` (one pipeline call of ``n_prompts`` prompts) adds the
    cross-attention maps of ``level``'s layers to the yielded sums; the UNet's own processors come back after."""
    saved = dict(unet.attn_processors)
    store, maps = AttentionMapStore(), StepMeanMaps(n_prompts)
    ctx = HolaContext(map_hw=level.map_hw)
    names = {key: key.removesuffix(".processor") for key in saved}
    procs = {key: _StepMeanProcessor(name, store, ctx, maps, name in level.layers) for key, name in names.items()}
    unet.set_attn_processor(procs)  # type: ignore[arg-type]  # diffusers annotates only its own classes
    try:
        yield maps
    finally:
        unet.set_attn_processor(saved)


@dataclass(frozen=True)
class GroupMap:
    name: str
    span: tuple[int, int]
    map: np.ndarray  # (h, w) float64: mean over the span's tokens of the averaged token maps

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "span": list(self.span),
            "mean": float(self.map.mean()),
            "peak": float(self.map.max()),
        }


def group_maps(token_maps: np.ndarray, caption: Caption, map_hw: tuple[int, int]) -> list[GroupMap]:
    """``token_maps`` (P, K) of one prompt -> one map per caption group with a span, in caption order."""
    out = []
    for group in caption.groups:
        if group.span is not None:
            s, e = group.span
            out.append(GroupMap(group.name, (s, e), token_maps[:, s:e].mean(-1).reshape(map_hw)))
    return out


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(..., ) values in [0, 1] -> (..., 3) RGB floats on the blue-to-red ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return _RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t


def overlay_panel(image: Image.Image, group_map: np.ndarray, side: int) -> Image.Image:
    """``image`` (already ``side`` px) with ``group_map`` / its peak as a heatmap blended on it."""
    peak = float(group_map.max())
    scaled = (group_map / peak if peak > 0 else group_map).astype(np.float32)
    heat = np.asarray(Image.fromarray(scaled, mode="F").resize((side, side), Image.Resampling.BILINEAR))
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    blended = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * heat_colours(heat)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def panel_scale(width: int) -> int:
    """The integer factor that makes a panel at least :data:`PANEL_MIN_SIDE` px wide."""
    return max(1, math.ceil(PANEL_MIN_SIDE / width))


def overlay_row(image: Image.Image, groups: Sequence[GroupMap]) -> Image.Image:
    """The generated image, then one overlay per group, wrapped after :data:`PANELS_PER_LINE` panels; below each
    overlay the group's name and its peak / mean (1.0x: the group looks everywhere alike)."""
    scale = panel_scale(image.width)
    big = Image.fromarray(np.repeat(np.repeat(np.asarray(image.convert("RGB")), scale, axis=0), scale, axis=1))
    w, h = big.size
    panels = [("generated", big)] + [
        (f"{g.name} {g.map.max() / g.map.mean():.1f}x", overlay_panel(big, g.map, w)) for g in groups
    ]
    cols = min(PANELS_PER_LINE, len(panels))
    lines = -(-len(panels) // cols)
    row = Image.new("RGB", (w * cols, (h + LABEL_HEIGHT) * lines), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default()
    for i, (label, panel) in enumerate(panels):
        x, y = (i % cols) * w, (i // cols) * (h + LABEL_HEIGHT)
        row.paste(panel, (x, y))
        while len(label) > 1 and draw.textlength(label, font=font) > w - 4:
            label = label[:-1]
        draw.text((x + 2, y + h + 2), label, fill="black", font=font)
    return row


def overlay_key(i: int) -> str:
    return f"overlays/{i:03d}.png"


def write_overlays(
    out: Store,
    images: Sequence[Image.Image],
    token_maps: Sequence[np.ndarray],
    captions: Sequence[Caption],
    level: AttentionLevel,
) -> list[dict[str, Any]]:
    """``overlays/NNN.png`` of prompt i (``images[i]``, its (P, K) ``token_maps[i]``, ``captions[i]``) for each
    captured prompt; the report's entries, one per prompt."""
    entries = []
    for i, (image, maps, caption) in enumerate(zip(images, token_maps, captions)):
        groups = group_maps(maps, caption, level.map_hw)
        key = overlay_key(i)
        out.write_bytes(key, encode_png(overlay_row(image, groups)))
        entries.append(
            {
                "key": key,
                "caption": caption.text,
                "groups": [g.to_json() for g in groups],
                "groups_without_span": [g.name for g in caption.groups if g.span is None],
            }
        )
    return entries
