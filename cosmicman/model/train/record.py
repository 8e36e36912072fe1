"""The ``training_run.json`` record of a run: config, shards, code version, metrics and loss history."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from cosmicman.model.distributed import DistEnv
from cosmicman.model.train.data import DataStream
from cosmicman.model.train.resume import Progress
from cosmicman.model.train.step import DaringTrainer


def code_version() -> str | None:
    """$COSMICMAN_CODE_VERSION, else the git sha of this checkout (with '-dirty' if modified), else None."""
    if os.environ.get("COSMICMAN_CODE_VERSION"):
        return os.environ["COSMICMAN_CODE_VERSION"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:
        return None


def run_record(
    trainer: DaringTrainer,
    data: DataStream,
    progress: Progress,
    dist: DistEnv,
    *,
    train_seconds: float,
    data_seconds: float,
    published: str,
    hola_layers: list[str],
    alignment: dict[str, Any] | None,
) -> dict[str, Any]:
    """The record; ``metrics.seconds`` (the whole run) is filled in just before it is published."""
    cfg = trainer.cfg
    history = progress.history
    steps_run = cfg.steps - progress.start_step
    last = history[-1]
    k = min(10, len(history))
    metrics = {
        "loss_first": history[0]["loss"],
        "loss_last": last["loss"],
        "noise_loss_first": history[0]["noise"],
        "noise_loss_last": last["noise"],
        "hola_loss_first": history[0]["hola"],
        "hola_loss_last": last["hola"],
        "loss_mean_first10": sum(h["loss"] for h in history[:k]) / k,
        "loss_mean_last10": sum(h["loss"] for h in history[-k:]) / k,
        "steps": cfg.steps,
        "samples_seen": progress.samples_seen * dist.world_size,
        "seconds": None,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, steps_run),
        "resumed_from_step": progress.start_step,
        "steps_run": steps_run,
        "published_unet": published,
        "caption_dropped_batches": sum(h.get("caption_dropped", 0) for h in history),
        "data_seconds": data_seconds,
        "world_size": dist.world_size,
        "hola_layers": hola_layers,
        "hola_map_factor": cfg.hola_map_factor,
        "buckets": [list(b) for b in data.sizes],
        "dataset_stats": dict(data.dataset.stats),
        "latent_cache": data.cache_stats,
        "device": str(trainer.device),
        "attention_alignment": alignment,
    }
    return {
        "config": dataclasses.asdict(cfg),
        "data": {"shards": data.urls, "dataset_version": cfg.dataset_version},
        "code_version": code_version(),
        "metrics": metrics,
        "loss_history": history,
        "versions": {
            "torch": torch.__version__,
            "diffusers": package_version("diffusers"),
            "transformers": package_version("transformers"),
            "deepspeed": package_version("deepspeed"),
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
