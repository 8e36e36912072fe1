"""Training checkpoints on any fsspec URL, written by one or many ranks, never half-visible.

Layout of ``<root>/step-%08d/``:

- ``state.pt`` (rank 0): step, EMA, loss history, config and -- without DeepSpeed -- the UNet and AdamW;
- ``rank-%05d.pt`` (every rank): that rank's RNG states and data position;
- ``ds/`` (DeepSpeed only): the engine's own checkpoint (``engine.save_checkpoint``), one optimizer
  partition file per rank;
- ``COMPLETE`` (rank 0, last): the marker. Folders without it are ignored, and removed by the next save.

Local filesystem: every rank writes into ``step-N.tmp``, then rank 0 writes the marker and renames the
folder into place (atomic). Object stores: files go to the final prefix, the marker last. Ranks meet at
barriers between the phases, so the marker is written only after every rank's files are in.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch

from cosmicman.core.store import is_local
from cosmicman.model.distributed import SINGLE_PROCESS, DistEnv, barrier

CKPT_STATE = "state.pt"
CKPT_MARKER = "COMPLETE"
CKPT_PREFIX = "step-"
DS_FOLDER = "ds"
DS_TAG = "engine"


def fs_and_path(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints under ``root`` (those holding the marker), by step."""
    fs, path = fs_and_path(root)
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        if not name.startswith(CKPT_PREFIX) or ".tmp" in name:
            continue
        try:
            step = int(name[len(CKPT_PREFIX) :])
        except ValueError:
            continue
        if fs.exists(posixpath.join(p, CKPT_MARKER)):
            out.append((step, p))
    return sorted(out)


def _save_torch(fs, path: str, obj: Any) -> None:
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(
    root: str,
    step: int,
    state: dict[str, Any] | None,
    rank_state: dict[str, Any],
    keep: int,
    dist: DistEnv = SINGLE_PROCESS,
    engine: Any = None,
) -> str:
    """Write one checkpoint (see module doc); every rank calls it. ``state`` is rank 0's (None elsewhere);
    ``engine`` is the DeepSpeed engine, when there is one. Keeps only the last ``keep`` complete ones."""
    fs, path = fs_and_path(root)
    final = posixpath.join(path, f"{CKPT_PREFIX}{step:08d}")
    local = is_local(fs)
    target = f"{final}.tmp" if local else final
    if dist.is_main:
        for p in (f"{final}.tmp", final):
            if fs.exists(p):
                fs.rm(p, recursive=True)
        if local:
            fs.makedirs(target, exist_ok=True)
    barrier()
    if engine is not None:
        if local:
            engine.save_checkpoint(posixpath.join(target, DS_FOLDER), tag=DS_TAG)
        else:
            with tempfile.TemporaryDirectory(prefix="cosmicman-ds-") as tmp:
                engine.save_checkpoint(tmp, tag=DS_TAG)
                for f in sorted(Path(tmp).rglob("*")):
                    # rank 0 writes the model states and the "latest" file, each rank its partitions
                    if f.is_file():
                        fs.put_file(str(f), posixpath.join(target, DS_FOLDER, f.relative_to(tmp).as_posix()))
    _save_torch(fs, posixpath.join(target, rank_file(dist.rank)), rank_state)
    if dist.is_main:
        if state is None:
            raise ValueError("rank 0 must pass the checkpoint state")
        _save_torch(fs, posixpath.join(target, CKPT_STATE), state)
    barrier()
    if dist.is_main:
        marker = json.dumps(
            {
                "step": step,
                "world_size": dist.world_size,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        with fs.open(posixpath.join(target, CKPT_MARKER), "wt") as f:
            f.write(marker)
        if local:
            os.replace(target, final)
        for _, old in list_checkpoints(root)[:-keep]:
            fs.rm(old, recursive=True)
        for p in fs.ls(path, detail=False):  # remains of checkpoint writes killed half-way
            name = posixpath.basename(p.rstrip("/"))
            if ".tmp" in name or (name.startswith(CKPT_PREFIX) and not fs.exists(posixpath.join(p, CKPT_MARKER))):
                fs.rm(p, recursive=True)
    barrier()
    return final


def _load_torch(fs, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=False)  # our own file: holds RNG tuples


def load_checkpoint(path: str, dist: DistEnv = SINGLE_PROCESS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared state, this rank's state) of the checkpoint folder ``path``."""
    fs, p = fs_and_path(path)
    marker = json.loads(fs.cat(posixpath.join(p, CKPT_MARKER)))
    if int(marker.get("world_size", 1)) != dist.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {marker.get('world_size')} ranks; this run has "
            f"{dist.world_size}: the data split and optimizer partitions would not match"
        )
    return _load_torch(fs, posixpath.join(p, CKPT_STATE)), _load_torch(fs, posixpath.join(p, rank_file(dist.rank)))


def load_engine_checkpoint(path: str, engine: Any) -> None:
    """Restore a DeepSpeed engine (weights, optimizer partitions) from the checkpoint folder ``path``."""
    fs, p = fs_and_path(path)
    src = posixpath.join(p, DS_FOLDER)
    if is_local(fs):
        engine.load_checkpoint(src, tag=DS_TAG)
        return
    with tempfile.TemporaryDirectory(prefix="cosmicman-ds-") as tmp:
        for remote in fs.find(src):
            dest = Path(tmp, remote[len(src) :].lstrip("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(dest))
        engine.load_checkpoint(tmp, tag=DS_TAG)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(generators: dict[str, torch.Generator], st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    for k, g in generators.items():
        g.set_state(st["generators"][k])
    if st.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
