"""The ablation variants of one training run: each is a set of ``TrainConfig`` overrides applied on top of
the run's recipe. Variants share the dataset version, seed and step budget and differ only here, so a
comparison between them is a fair ablation (Daring's HOLA, Prime's activations)."""

from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"beta": 0.0},  # noise loss only
    "hola": {},
    "hola-gelu": {"act_fn": "gelu"},
    "hola-mish": {"act_fn": "mish"},
    "hola-relu": {"act_fn": "relu"},
    "hola-leaky_relu": {"act_fn": "leaky_relu"},
    "hola-mp_silu": {"act_fn": "mp_silu"},
}
