"""Checkpoints of a run and resuming from them (storage format: ``cosmicman.model.checkpoints``).

A checkpoint holds the shared state (step, loss history, config, weights + optimizer or the DeepSpeed
engine's files, EMA) and each rank's own (RNG states, data stream resume point, samples seen): restoring
all of it continues the run bit-for-bit as if uninterrupted."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cosmicman.model.checkpoints import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cosmicman.model.distributed import DistEnv
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.data import DataStream
from cosmicman.model.train.step import DaringTrainer

# checkpoint config keys that must match on resume (the rest, e.g. steps / log_every, may change)
RESUME_MUST_MATCH = (
    "shards",
    "excluded_samples",
    "pretrained",
    "family",
    "resolution",
    "batch_size",
    "grad_accum",
    "seed",
    "tiny_seed",
    "act_fn",
    "ff_act_fn",
    "shuffle_buffer",
    "hola_map_factor",
    "ema_decay",
    "buckets",
    "bucket_step",
    "bucket_max_ratio",
    "deepspeed",
    "mask_resize",
    # the per-sample draws: a resumed run must draw what the uninterrupted one drew
    "flip_p",
    "group_dropout",
    "late_group_dropout",
    "late_group_from",
)


@dataclass
class Progress:
    """Where this rank's run stands: what a checkpoint saves and a resumed run continues from."""

    start_step: int = 0  # optimizer steps done before this process started
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per optimizer step
    samples_seen: int = 0  # by this rank
    data: dict[str, Any] | None = None  # the data stream's resume point (None: from the start)


def checkpoint_root(cfg: TrainConfig) -> str:
    return (cfg.checkpoint_url or f"{cfg.output_url.rstrip('/')}.checkpoints").rstrip("/")


def latest_checkpoint(root: str, say: Callable[[str], None]) -> str | None:
    found = list_checkpoints(root)
    if found:
        return found[-1][1]
    say(f"resume: no complete checkpoint under {root}; starting from step 0")
    return None


def restore(trainer: DaringTrainer, path: str, dist: DistEnv, say: Callable[[str], None]) -> Progress:
    """Load the checkpoint at ``path`` into ``trainer`` (weights, optimizer, EMA, RNG states)."""
    say(f"resuming from {path}")
    state, rank_state = load_checkpoint(path, dist)
    old = state["config"]
    bad = [k for k in RESUME_MUST_MATCH if old.get(k) != getattr(trainer.cfg, k)]
    if bad:
        raise ValueError(
            f"cannot resume from {path}: config keys {bad} differ ({ {k: old.get(k) for k in bad} } in the checkpoint)"
        )
    trainer.load_shared_state(state, path)
    trainer.steps_done = int(state["step"])
    set_rng_state(trainer.generators(), rank_state["rng"])
    return Progress(
        start_step=int(state["step"]),
        history=list(state["history"]),
        samples_seen=int(rank_state["samples_seen"]),
        data=rank_state["data"],
    )


def save(root: str, step: int, trainer: DaringTrainer, data: DataStream, progress: Progress, dist: DistEnv) -> str:
    """Checkpoint after optimizer step ``step``; returns where it went."""
    cfg = trainer.cfg
    shared = None
    if dist.is_main:
        shared = {
            "step": step,
            "history": progress.history,
            "config": dataclasses.asdict(cfg),
            **trainer.shared_state(),
        }
    return save_checkpoint(
        root,
        step,
        shared,
        {"rng": rng_state(trainer.generators()), "data": data.resume_point(), "samples_seen": progress.samples_seen},
        cfg.checkpoints_keep,
        dist,
        trainer.engine,
    )
