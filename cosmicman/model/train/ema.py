"""Exponential moving average of the trained weights (published as ``unet/`` when ``save_ema``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow on the parameters' device).

    Same schedule as diffusers' ``EMAModel`` defaults (what the released code used): at optimization
    step n the decay is 0 for n = 1 (shadow = weights) and ``min(decay, (1 + s) / (10 + s))`` with
    s = n - 1 afterwards. One fused ``_foreach_lerp_`` per step."""

    def __init__(self, params: Sequence[torch.Tensor], decay: float) -> None:
        self.decay = float(decay)
        self.optimization_step = 0
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        s = self.optimization_step - 1
        return 0.0 if s <= 0 else min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor]) -> None:
        self.optimization_step += 1
        w = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], w)

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "optimization_step": self.optimization_step, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimization_step = int(state["optimization_step"])
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)
