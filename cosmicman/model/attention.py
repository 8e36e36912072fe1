"""Cross-attention capture for HOLA without giving up fused attention.

Every attention layer of the UNet gets a ``CaptureAttnProcessor``. All of them compute their output
with ``F.scaled_dot_product_attention`` (as diffusers' ``AttnProcessor2_0`` does). Only cross-attention
layers whose query count equals the per-batch target ``map_hw[0] * map_hw[1]`` (and, by default, whose
key length is 77) additionally recompute ``softmax(q k^T * scale)`` in fp32, per head, and store it in the
shared ``AttentionMapStore`` keyed by layer name (only the key columns ``HolaContext.token_columns`` names,
when it names any). Self-attention probabilities are never materialised.

Facts this design relies on (NOTES-training.md, re-verified by tests/model/test_attention.py):
- Per-batch context reaches processors only through ``unet(..., cross_attention_kwargs={"hola_ctx": ctx})``
  and only if the processor *names* ``hola_ctx`` in its ``__call__`` signature (``Attention.forward``
  filters by signature; ``**kwargs`` does not count) -- so every processor here names it.
- Under gradient checkpointing the processors run again during backward. Capture stays on through
  backward and each layer's maps are *overwritten* (never appended), which yields the same gradients as
  without checkpointing. Call ``store.clear()`` at the start of every step.
- Without a ``hola_ctx`` (e.g. inside a pipeline at inference) nothing is captured: the processors then
  behave exactly like ``AttnProcessor2_0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # not `from diffusers`: typed as dummies


@dataclass
class HolaContext:
    """Per-batch context handed to every processor through ``cross_attention_kwargs``.

    ``map_hw``: the (height, width) of the attention maps to capture; layers whose query count equals
    ``map_hw[0] * map_hw[1]`` are captured. ``key_length``: only cross-attention with this many keys (77
    CLIP tokens) is captured; None captures any key length. ``token_columns``: keep only these key columns
    (ascending token indices: HOLA reads only the tokens inside spans, ``hola.span_token_columns``) of the
    probabilities, which are still normalised over all keys; None keeps every column."""

    map_hw: tuple[int, int]
    key_length: int | None = 77
    token_columns: tuple[int, ...] | None = None
    #: ``token_columns`` as an index tensor on the device of the maps, built by the first layer that needs it
    _column_index: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def query_count(self) -> int:
        return int(self.map_hw[0]) * int(self.map_hw[1])

    def column_index(self, device: torch.device) -> torch.Tensor | None:
        if self.token_columns is None:
            return None
        if self._column_index is None or self._column_index.device != device:
            self._column_index = torch.tensor(self.token_columns, dtype=torch.long).to(device, non_blocking=True)
        return self._column_index


def map_hw_for(image_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """Map size for an image of ``image_hw`` pixels at 1/``factor`` (released: ``round(H / 16)``)."""
    return (round(image_hw[0] / factor), round(image_hw[1] / factor))


@dataclass
class AttentionMapStore:
    """Captured cross-attention probabilities of the current step: ``maps[layer] -> (B, heads, Q, K)`` fp32
    (K: the context's ``token_columns`` when it names them)."""

    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    #: query counts seen at cross-attention layers during the last forward (for diagnostics)
    cross_query_counts: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps.clear()
        self.cross_query_counts.clear()

    def layers(self) -> list[str]:
        return sorted(self.maps)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.maps.values())


class CaptureAttnProcessor:
    """SDPA attention processor that also records cross-attention probabilities (see module doc)."""

    def __init__(self, name: str, store: AttentionMapStore, capture: bool = True) -> None:
        if not hasattr(F, "scaled_dot_product_attention"):
            raise ImportError("CaptureAttnProcessor requires torch>=2.0")
        self.name = name
        self.store = store
        self.capture = capture

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        hola_ctx: HolaContext | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if is_cross and self.capture and hola_ctx is not None:
            q_len, k_len = query.shape[-2], key.shape[-2]
            self.store.cross_query_counts[self.name] = q_len
            if q_len == hola_ctx.query_count and (hola_ctx.key_length is None or k_len == hola_ctx.key_length):
                # fp32 recompute of the probabilities, per head; cheap: only K (77) keys.
                logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
                if attention_mask is not None:
                    if attention_mask.dtype == torch.bool:
                        logits = logits.masked_fill(~attention_mask, float("-inf"))
                    else:
                        logits = logits + attention_mask.float()
                probs = logits.softmax(dim=-1)
                columns = hola_ctx.column_index(probs.device)
                if columns is not None:
                    probs = probs.index_select(-1, columns)
                # overwrite, never append: correct when checkpointing re-runs this during backward
                self.store.maps[self.name] = probs

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


def _layer_name(processor_key: str) -> str:
    return processor_key[: -len(".processor")] if processor_key.endswith(".processor") else processor_key


def install_capture(unet: UNet2DConditionModel, layers: list[str] | None = None) -> AttentionMapStore:
    """Give every attention layer of ``unet`` a ``CaptureAttnProcessor`` sharing one store; return it.

    ``layers``: optional allow-list of layer names (e.g. ``"mid_block.attentions.0.transformer_blocks.0.attn2"``)
    that may capture; default: every cross-attention layer (which ones capture is then decided per batch by
    the query count in ``HolaContext``)."""
    store = AttentionMapStore()
    allowed = set(layers) if layers is not None else None
    procs = {}
    for key in unet.attn_processors:
        name = _layer_name(key)
        procs[key] = CaptureAttnProcessor(name, store, capture=allowed is None or name in allowed)
    # diffusers annotates only its own processor classes; any callable with their signature is accepted
    unet.set_attn_processor(procs)  # type: ignore[arg-type]
    return store


def uninstall_capture(unet: UNet2DConditionModel) -> None:
    """Back to diffusers' stock SDPA processor everywhere."""
    unet.set_attn_processor(AttnProcessor2_0())


def cross_attention_query_counts(unet: UNet2DConditionModel, latent_hw: tuple[int, int]) -> dict[str, int]:
    """Query count of each cross-attention layer for a latent of ``latent_hw`` (static, from block order)."""
    h, w = latent_hw
    counts: dict[str, int] = {}
    cfg = unet.config
    n_down = len(cfg["block_out_channels"])
    for key in unet.attn_processors:
        name = _layer_name(key)
        if not name.endswith("attn2"):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1])
        elif parts[0] == "up_blocks":
            level = n_down - 1 - int(parts[1])
        else:
            level = n_down - 1
        counts[name] = (-(-h // 2**level)) * (-(-w // 2**level))
    return counts
