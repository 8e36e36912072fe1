"""Process topology and DeepSpeed configs for the trainer.

Every launcher we support -- ``torchrun``, the ``deepspeed`` launcher, ``accelerate launch``, Kubeflow
Trainer's torch runtime -- sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and the rendezvous address),
so the trainer reads those and nothing launcher-specific. One process without them is rank 0 of 1.

DeepSpeed configs are JSON files: the packaged ``zero2`` (ZeRO-2, optimizer states and gradients
partitioned) and ``zero2_offload`` (optimizer states and step on the CPU, as the released CosmicMan
training ran), or any path / URL. ``"auto"`` values are filled from the training config -- micro-batch,
gradient accumulation, clipping, bf16 -- so batch and precision are stated once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fsspec
import torch

PACKAGED_DEEPSPEED_CONFIGS = ("zero2", "zero2_offload")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        env = cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
        if not 0 <= env.rank < env.world_size:
            raise ValueError(f"RANK={env.rank} outside 0..WORLD_SIZE-1={env.world_size - 1}")
        return env

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# One process without a launcher: the default topology of functions that take a DistEnv.
SINGLE_PROCESS = DistEnv()


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def load_deepspeed_config(
    name_or_url: str, *, micro_batch: int, grad_accum: int, grad_clip: float, bf16: bool
) -> dict[str, Any]:
    """A packaged config by name, or a JSON file at a path / URL; ``"auto"`` values filled in."""
    if name_or_url in PACKAGED_DEEPSPEED_CONFIGS:
        text = resources.files("cosmicman.model").joinpath("configs", f"{name_or_url}.json").read_text()
    else:
        with fsspec.open(name_or_url, "rt") as f:
            text = f.read()
    cfg = json.loads(text)
    fills = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
    }
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro-batch x accumulation x world
    bf = cfg.setdefault("bf16", {})
    if bf.get("enabled", "auto") == "auto":
        bf["enabled"] = bf16
    if cfg.get("fp16", {}).get("enabled") is True:
        raise ValueError("fp16 (loss scaling) is not supported: use bf16 (mixed_precision='bf16')")
    stage = int(cfg.get("zero_optimization", {}).get("stage", 0))
    if stage > 2:
        raise ValueError(
            f"ZeRO stage {stage}: the trainer supports stages 0-2 (every rank holds the full "
            "UNet, which HOLA capture, EMA and publishing rely on)"
        )
    return cfg
