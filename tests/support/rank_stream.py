"""The training data stream of one rank of two, as the trainer builds it, for the exact-resume tests."""

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from cosmicman.model.distributed import DistEnv
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.data import DataStream

Batches = list[tuple[list[str], list[int], torch.Tensor]]


def two_rank_stream(tok, shards: list[str], output_url: str, **config: Any) -> Callable[..., tuple[Batches, dict]]:
    """``run(rank, n, resume=None)``: the first ``n`` batches of ``rank`` (keys, positions, pixels) and the resume
    point after them, over ``shards`` with a small bucketed, flipped, shuffled recipe (``config`` adds to it)."""
    cfg = TrainConfig.from_dict(
        {
            "shards": shards,
            "output_url": output_url,
            "resolution": 64,
            "batch_size": 2,
            "hola_map_factor": 8,
            "buckets": True,
            "bucket_step": 8,
            "seed": 4,
            "shuffle_buffer": 4,
            "flip_p": 0.5,
            **config,
        }
    )
    trainer = SimpleNamespace(comps=SimpleNamespace(tokenizers=[tok]), store=None, device=torch.device("cpu"))

    def run(rank: int, n: int, resume: dict | None = None) -> tuple[Batches, dict]:
        stream = DataStream(cfg, trainer, DistEnv(rank, 2), resume, lambda _: None)  # type: ignore[arg-type]
        try:
            got = [next(stream) for _ in range(n)]
            return [(b["keys"], b["positions"], b["pixel_values"]) for b in got], stream.resume_point()
        finally:
            stream.close()

    return run
