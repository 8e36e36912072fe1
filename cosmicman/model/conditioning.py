"""Text (and SDXL size) conditioning of the UNet, the same way the diffusers pipelines build it at inference.

- SD: ``encoder_hidden_states`` = the CLIP text encoder's last hidden state (B, 77, D).
- SDXL: ``encoder_hidden_states`` = concat(penultimate hidden state of encoder 1, of encoder 2) along the
  feature axis; ``added_cond_kwargs`` = {"text_embeds": encoder 2's pooled projection, "time_ids":
  (original h, original w, crop top, crop left, target h, target w)} -- SDXL's micro-conditioning.

Token ids come from the shards, tokenized with the first tokenizer (CLIP, padded with EOS). SDXL's second
tokenizer is the same BPE padded with "!" (id 0); ``ids_for`` rewrites the padding so encoder 2 sees what
``StableDiffusionXLPipeline.encode_prompt`` would feed it. Token positions (HOLA spans) are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cosmicman.model.components import Components


@dataclass
class TextConditioning:
    hidden: torch.Tensor  # (B, 77, D): encoder_hidden_states
    pooled: torch.Tensor | None = None  # (B, P): SDXL's text_embeds

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextConditioning:
        return TextConditioning(
            self.hidden.to(device, dtype), None if self.pooled is None else self.pooled.to(device, dtype)
        )

    def expand(self, batch_size: int) -> TextConditioning:
        return TextConditioning(
            self.hidden.expand(batch_size, -1, -1), None if self.pooled is None else self.pooled.expand(batch_size, -1)
        )


def sdxl_time_ids(original_hw: torch.Tensor, crop_top_left: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 6) float time ids: original (h, w), crop (top, left), target (h, w), as SDXL was trained."""
    target = torch.tensor(target_hw, dtype=torch.long).expand(original_hw.shape[0], 2)
    return torch.cat([original_hw.long().cpu(), crop_top_left.long().cpu(), target], dim=1).float()


class TextConditioner:
    """Turns token ids into the UNet's conditioning for the components' family (see module doc)."""

    def __init__(self, comps: Components) -> None:
        self.family = comps.family
        self.encoders = comps.text_encoders
        self.pad_ids = [tok.pad_token_id for tok in comps.tokenizers]
        self.eos_id = comps.tokenizers[0].eos_token_id

    def ids_for(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """Token ids for encoder ``k``: padding after the first EOS rewritten to its tokenizer's pad id."""
        if k == 0 or self.pad_ids[k] == self.pad_ids[0]:
            return ids
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        first_eos = torch.where(ids == self.eos_id, pos, ids.shape[1]).min(dim=1, keepdim=True).values
        return torch.where(pos > first_eos, torch.full_like(ids, self.pad_ids[k]), ids)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> TextConditioning:
        if self.family == "sd":
            return TextConditioning(self.encoders[0](ids)[0])
        hidden, pooled = [], None
        for k, enc in enumerate(self.encoders):
            out = enc(self.ids_for(ids, k), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's pooled projection (text_embeds), as the SDXL pipeline
        return TextConditioning(torch.cat(hidden, dim=-1), pooled)

    def unet_kwargs(
        self, cond: TextConditioning, time_ids: torch.Tensor | None, dtype: torch.dtype | None = None
    ) -> dict:
        """Keyword arguments for ``unet(noisy, t, **kwargs)``."""
        hidden = cond.hidden if dtype is None else cond.hidden.to(dtype)
        if self.family == "sd":
            return {"encoder_hidden_states": hidden}
        if time_ids is None or cond.pooled is None:
            raise ValueError("SDXL conditioning needs pooled text embeddings and time ids")
        pooled = cond.pooled if dtype is None else cond.pooled.to(dtype)
        return {
            "encoder_hidden_states": hidden,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.to(hidden.device, hidden.dtype)},
        }
