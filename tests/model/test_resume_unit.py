"""resume.py without a training run: what a checkpoint holds, where it goes, which config changes a resume
refuses, and that restoring it hands back the step, the sample position and every RNG stream."""

import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cosmicman.model.checkpoints import list_checkpoints, rank_file, save_checkpoint
from cosmicman.model.distributed import SINGLE_PROCESS, DistEnv
from cosmicman.model.train import resume
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.resume import (
    RESUME_MUST_MATCH,
    Progress,
    checkpoint_root,
    latest_checkpoint,
    restore,
    save,
)

HISTORY = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
RESUME_POINT = {"start": 6, "exclude": [7, 9]}

# a valid value different from the default for every key a resume must keep
CHANGED = {
    "shards": ["/other/shard-0.tar"],
    "excluded_samples": ["0" * 64],
    "pretrained": "some/sd-model",
    "family": "sdxl",
    "resolution": 256,
    "batch_size": 8,
    "grad_accum": 2,
    "seed": 9,
    "tiny_seed": 1,
    "act_fn": "mish",
    "ff_act_fn": "mish",
    "shuffle_buffer": 8,
    "hola_map_factor": 8,
    "ema_decay": 0.5,
    "buckets": True,
    "bucket_step": 128,
    "bucket_max_ratio": 3.0,
    "deepspeed": "zero2",
    "mask_resize": "nearest",
    "flip_p": 0.25,
    "group_dropout": 0.2,
    "late_group_dropout": 0.5,
    "late_group_from": 3,
}


class FakeTrainer:
    """The parts of DaringTrainer that resume.py touches."""

    def __init__(self, cfg: TrainConfig, engine=None, seed: int = 0):
        self.cfg, self.engine, self.steps_done = cfg, engine, 0
        self.gen, self.cpu_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        self.loaded: tuple | None = None

    def generators(self):
        return {"device": self.gen, "cpu": self.cpu_gen}

    def shared_state(self):
        return {"ema": {"w": torch.full((2,), 3.0)}, "unet": {"w": torch.zeros(2)}}

    def load_shared_state(self, state, path):
        self.loaded = (state, path)


class FakeData:
    def resume_point(self):
        return RESUME_POINT


class FakeEngine:
    """DeepSpeed's engine writes its own files into the checkpoint folder."""

    def save_checkpoint(self, folder, tag):
        Path(folder, tag).mkdir(parents=True)
        Path(folder, tag, "partition-0.pt").write_bytes(b"opt")


def cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"shards": ["/data/shard-0.tar"], "output_url": str(tmp_path / "out"), "seed": 3, **kw})


def draws(trainer: FakeTrainer) -> tuple:
    """One draw from every RNG stream a resumed run continues."""
    return (
        torch.rand(2).tolist(),
        torch.rand(2, generator=trainer.gen).tolist(),
        torch.rand(2, generator=trainer.cpu_gen).tolist(),
        random.random(),
        float(np.random.rand()),
    )


def checkpoint(tmp_path, config: TrainConfig, step: int = 4, dist: DistEnv = SINGLE_PROCESS) -> str:
    progress = Progress(start_step=0, history=list(HISTORY), samples_seen=12)
    trainer: Any = FakeTrainer(config)  # stands in for a DaringTrainer
    data: Any = FakeData()
    return save(str(tmp_path / "ck"), step, trainer, data, progress, dist)


def test_progress_starts_from_nothing():
    a, b = Progress(), Progress()
    assert (a.start_step, a.history, a.samples_seen, a.data) == (0, [], 0, None)
    a.history.append({"step": 1})
    assert b.history == []  # not shared between runs


@pytest.mark.parametrize(
    ("output_url", "checkpoint_url", "root"),
    [
        ("s3://b/runs/hola", None, "s3://b/runs/hola.checkpoints"),
        ("s3://b/runs/hola/", None, "s3://b/runs/hola.checkpoints"),
        ("s3://b/runs/hola/", "s3://b/ck//", "s3://b/ck"),
        ("/runs/hola", "/ck", "/ck"),
        ("s3://b/runs/MAX/", None, "s3://b/runs/MAX.checkpoints"),  # only slashes are stripped
        ("/runs/hola", "/ck/run-X/", "/ck/run-X"),
    ],
)
def test_checkpoint_root(output_url, checkpoint_url, root):
    config = TrainConfig(output_url=output_url, checkpoint_url=checkpoint_url)
    assert checkpoint_root(config) == root


def test_latest_checkpoint_is_the_last_complete_one(tmp_path):
    said: list[str] = []
    root = str(tmp_path / "ck")
    assert latest_checkpoint(root, said.append) is None
    assert said == [f"resume: no complete checkpoint under {root}; starting from step 0"]
    for step, complete in ((4, True), (8, True), (12, True), (16, False)):
        folder = tmp_path / "ck" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "COMPLETE").write_text("{}")
    said.clear()
    assert latest_checkpoint(root, said.append) == str(tmp_path / "ck" / "step-00000012")
    assert said == []


def test_save_writes_the_shared_and_the_rank_state(tmp_path):
    config = cfg(tmp_path)
    trainer = FakeTrainer(config, seed=5)
    path = save(str(tmp_path / "ck"), 4, trainer, FakeData(), Progress(1, list(HISTORY), 12, None), DistEnv())
    assert path == str(tmp_path / "ck" / "step-00000004")
    state = torch.load(Path(path, "state.pt"), weights_only=False)
    assert sorted(state) == ["config", "ema", "history", "step", "unet"]
    assert state["step"] == 4 and state["history"] == HISTORY and state["config"] == dataclasses.asdict(config)
    assert torch.equal(state["ema"]["w"], torch.full((2,), 3.0))
    mine = torch.load(Path(path, rank_file(0)), weights_only=False)
    assert sorted(mine) == ["data", "rng", "samples_seen"]
    assert mine["data"] == RESUME_POINT and mine["samples_seen"] == 12
    assert torch.equal(mine["rng"]["generators"]["cpu"], trainer.cpu_gen.get_state())
    assert not Path(path, "ds").exists()


def test_other_ranks_save_only_their_own_state(tmp_path, monkeypatch):
    passed = []

    def spy(root, step, state, *args):
        passed.append(state)
        return save_checkpoint(root, step, state, *args)

    monkeypatch.setattr(resume, "save_checkpoint", spy)
    trainer = FakeTrainer(cfg(tmp_path))
    trainer.shared_state = None  # never asked for on rank 1
    path = save(str(tmp_path / "ck"), 4, trainer, FakeData(), Progress(samples_seen=3), DistEnv(1, 2))
    assert passed == [None] and path == str(tmp_path / "ck" / "step-00000004")
    written = tmp_path / "ck" / "step-00000004.tmp"  # rank 0 completes and renames it
    assert sorted(p.name for p in written.iterdir()) == [rank_file(1)]
    assert torch.load(written / rank_file(1), weights_only=False)["samples_seen"] == 3


def test_save_keeps_the_configured_number_of_checkpoints(tmp_path):
    config = cfg(tmp_path, checkpoints_keep=2)
    for step in (4, 8, 12):
        checkpoint(tmp_path, config, step)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "ck"))] == [8, 12]


def test_save_hands_the_deepspeed_engine_over(tmp_path):
    trainer = FakeTrainer(cfg(tmp_path), engine=FakeEngine())
    path = save(str(tmp_path / "ck"), 4, trainer, FakeData(), Progress(), DistEnv())
    assert Path(path, "ds", "engine", "partition-0.pt").read_bytes() == b"opt"


def test_restore_continues_every_rng_stream_and_the_data_position(tmp_path):
    config = cfg(tmp_path)
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    before = FakeTrainer(config, seed=5)
    torch.rand(3, generator=before.gen)  # the streams are somewhere mid-run
    path = save(str(tmp_path / "ck"), 4, before, FakeData(), Progress(0, list(HISTORY), 12), DistEnv())
    expected = draws(before)  # what the uninterrupted run draws next

    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    after, said = FakeTrainer(cfg(tmp_path, steps=50, log_every=1, lr=1e-4), seed=77), []
    progress = restore(after, path, DistEnv(), said.append)
    assert said == [f"resuming from {path}"]
    assert progress == Progress(start_step=4, history=HISTORY, samples_seen=12, data=RESUME_POINT)
    assert after.steps_done == 4
    assert after.loaded is not None and after.loaded[1] == path and after.loaded[0]["step"] == 4
    assert torch.equal(after.loaded[0]["ema"]["w"], torch.full((2,), 3.0))
    assert draws(after) == expected


def test_restore_reads_this_ranks_own_state(tmp_path):
    path = checkpoint(tmp_path, cfg(tmp_path), dist=DistEnv(rank=0, world_size=2))
    other = {"rng": torch.load(Path(path, rank_file(0)), weights_only=False)["rng"], "data": None, "samples_seen": 5}
    torch.save(other, Path(path, rank_file(1)))
    progress = restore(FakeTrainer(cfg(tmp_path)), path, DistEnv(rank=1, world_size=2), lambda m: None)
    assert (progress.samples_seen, progress.data, progress.start_step) == (5, None, 4)


def test_the_keys_that_must_match_are_the_ones_changed_here():
    assert sorted(CHANGED) == sorted(RESUME_MUST_MATCH)


@pytest.mark.parametrize("key", RESUME_MUST_MATCH)
def test_restore_refuses_a_changed_key(tmp_path, key):
    path = checkpoint(tmp_path, cfg(tmp_path))
    old = dataclasses.asdict(cfg(tmp_path))[key]
    trainer = FakeTrainer(cfg(tmp_path, **{key: CHANGED[key]}))
    message = f"cannot resume from {path}: config keys ['{key}'] differ ({ {key: old} } in the checkpoint)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        restore(trainer, path, DistEnv(), lambda m: None)
    assert trainer.loaded is None and trainer.steps_done == 0


def test_restore_names_every_changed_key(tmp_path):
    path = checkpoint(tmp_path, cfg(tmp_path))
    trainer = FakeTrainer(cfg(tmp_path, seed=4, flip_p=0.0))
    with pytest.raises(
        ValueError, match=re.escape("config keys ['seed', 'flip_p'] differ ({'seed': 3, 'flip_p': 0.5}")
    ):
        restore(trainer, path, DistEnv(), lambda m: None)
