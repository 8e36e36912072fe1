"""The training loop: resume, step, checkpoint, report, publish (rank 0)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from cosmicman.model.distributed import DistEnv, barrier
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.data import DataStream
from cosmicman.model.train.publish import check_output_free, publish_run
from cosmicman.model.train.record import run_record
from cosmicman.model.train.resume import Progress, checkpoint_root, latest_checkpoint, restore, save
from cosmicman.model.train.step import DaringTrainer


def train(cfg: TrainConfig, log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the training loop, checkpoint, and publish (rank 0); returns the training_run record."""
    t_start = time.perf_counter()
    cfg.check_runnable()
    dist = start_distribution(cfg)
    say = rank_logger(dist, log_fn)
    if dist.is_main:
        check_output_free(cfg.output_url, cfg.overwrite)
    ckpt_root = checkpoint_root(cfg)
    resume_from = latest_checkpoint(ckpt_root, say) if cfg.resume else None
    trainer = DaringTrainer(cfg, dist, say=say)
    progress = restore(trainer, resume_from, dist, say) if resume_from else Progress()
    data = DataStream(cfg, trainer, dist, progress.data, say)
    hola_layers = trainer.hola_layers(data.sizes[len(data.sizes) // 2]) if trainer.store is not None else []
    say(describe(trainer, data, dist, hola_layers))
    try:
        t_loop = time.perf_counter()
        t_data = 0.0
        for step in range(progress.start_step + 1, cfg.steps + 1):
            rec = None
            while rec is None:  # micro-batches until the accumulation boundary
                t0 = time.perf_counter()
                batch = next(data)
                t_data += time.perf_counter() - t0
                progress.samples_seen += len(batch["keys"])
                rec = trainer.step(batch)
            rec = {"step": step, **rec}
            progress.history.append(rec)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                t0 = time.perf_counter()
                where = save(ckpt_root, step, trainer, data, progress, dist)
                say(f"checkpoint {where} ({time.perf_counter() - t0:.1f} s)")
            if step == progress.start_step + 1 or step == cfg.steps or step % max(1, cfg.log_every) == 0:
                dt = (time.perf_counter() - t_loop) / (step - progress.start_step)
                say(
                    f"step {step}/{cfg.steps} loss={rec['loss']:.5f} noise={rec['noise']:.5f} "
                    f"hola={rec['hola']:.5f} grad_norm={rec['grad_norm']:.3f} ({dt:.3f} s/step)"
                )
    finally:
        data.close()  # the loader thread stops with the loop, also on an error
    train_seconds = time.perf_counter() - t_loop

    published = trainer.publish_weights()
    alignment = None
    if dist.is_main and cfg.alignment_batches > 0:
        t0 = time.perf_counter()
        alignment = trainer.attention_alignment(data.fixed_batches(cfg.alignment_batches))
        say(
            f"attention inside group masks: {alignment['mean']:.3f} (chance {alignment['chance']:.3f}, "
            f"{alignment['n_pairs']} sample-groups; {time.perf_counter() - t0:.1f} s)"
        )
    trainer.finish()
    record = run_record(
        trainer,
        data,
        progress,
        dist,
        train_seconds=train_seconds,
        data_seconds=t_data,
        published=published,
        hola_layers=hola_layers,
        alignment=alignment,
    )
    if dist.is_main:
        publish_run(trainer.comps, record, cfg.output_url, cfg.overwrite, t_start, say)
    barrier()
    return record


def start_distribution(cfg: TrainConfig) -> DistEnv:
    """This process's rank; one process without a launcher gets the rendezvous variables DeepSpeed needs."""
    ensure_dist_env(cfg)
    dist = DistEnv.from_env()
    if dist.world_size > 1 and not cfg.deepspeed:
        raise ValueError(
            f"WORLD_SIZE={dist.world_size}: several ranks need a DeepSpeed config "
            "(deepspeed: zero2 | zero2_offload | a JSON path); ZeRO stage 0 is plain data parallel"
        )
    return dist


def ensure_dist_env(cfg: TrainConfig) -> None:
    """One process without a launcher: the rendezvous variables torch.distributed needs for DeepSpeed."""
    if cfg.deepspeed and "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def rank_logger(dist: DistEnv, log_fn: Callable[[str], None] | None) -> Callable[[str], None]:
    base_say = log_fn or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def say(msg: str) -> None:
        base_say(msg if dist.world_size == 1 else f"[rank {dist.rank}] {msg}")

    return say


def describe(trainer: DaringTrainer, data: DataStream, dist: DistEnv, hola_layers: list[str]) -> str:
    cfg = trainer.cfg
    n_params = sum(p.numel() for p in trainer.params)
    return (
        f"training {cfg.pretrained or 'tiny ' + cfg.family} UNet ({n_params / 1e6:.2f}M params) on "
        f"{trainer.device} x {dist.world_size} for {cfg.steps} steps, micro-batch {cfg.batch_size} x "
        f"accumulation {cfg.grad_accum}, {len(data.urls)} shard(s), {len(data.sizes)} bucket(s)"
        f"{', latent cache ' + data.cache_url if cfg.cache_url else ''}; HOLA {cfg.hola_reduction} at "
        f"1/{cfg.hola_map_factor} over {len(hola_layers)} layers"
    )
