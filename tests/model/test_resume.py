"""Exact resume: a run killed (SIGKILL) after its step-8 checkpoint and resumed matches an uninterrupted run;
with per-sample flips and caption draws, a run stopped after k steps and resumed does too, bit for bit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.model.test_train import REPO, _env, write_shards

PYTHON = sys.executable

# runs the trainer but stalls right after the step-8 checkpoint is complete, so the kill lands mid-run
KILL_WRAPPER = """
import sys, time
import cosmicman.model.train.resume as R
from cosmicman.model.train.__main__ import main
orig = R.save_checkpoint
def save(root, step, *args, **kwargs):
    out = orig(root, step, *args, **kwargs)
    if step == 8:
        time.sleep(600)
    return out
R.save_checkpoint = save
sys.exit(main(["--config", sys.argv[1]]))
"""


def _cfg(urls, out, **kw):
    return {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "steps": 12,
        "batch_size": 2,
        "lr": 1e-3,
        "hola_map_factor": 8,
        "seed": 0,
        "shuffle_buffer": 4,
        "log_every": 1,
        "ema_decay": 0.9,
        "noise_offset": 0.05,
        "caption_dropout": 0.3,
        "snr_gamma": 5.0,
        **kw,
    }


def _raw_unet(ckpt_dir: Path):
    return torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)["unet"]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    from diffusers import UNet2DConditionModel

    from cosmicman.model.checkpoints import list_checkpoints
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=5)  # 10 samples: 12 steps span epochs
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    # A: uninterrupted (one checkpoint at the end, to compare the raw weights too)
    rec_a = train(TrainConfig.from_dict(_cfg(urls, out_a, checkpoint_every=12)), log_fn=lambda m: None)

    # B: checkpoint every 4, killed after the step-8 checkpoint appears
    cfg_b = _cfg(urls, out_b, checkpoint_every=4, checkpoints_keep=2, resume=True)
    cfg_path = tmp_path / "b.json"
    cfg_path.write_text(json.dumps(cfg_b))
    ckroot = Path(f"{out_b}.checkpoints")
    proc = subprocess.Popen(
        [PYTHON, "-c", KILL_WRAPPER, str(cfg_path)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 600
        while not (ckroot / "step-00000008" / "COMPLETE").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no step-8 checkpoint"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out_b.exists()  # nothing published by the killed run
    assert [s for s, _ in list_checkpoints(str(ckroot))] == [4, 8]

    rec_b = train(TrainConfig.from_dict(cfg_b), log_fn=lambda m: None)
    assert rec_b["metrics"]["resumed_from_step"] == 8 and rec_b["metrics"]["steps_run"] == 4
    # consumed samples were skipped undecoded: the resumed run decoded its 4 batches of 2 plus at most
    # the loader's read-ahead (2 queued + 1 waiting batch), never the 16 samples before the checkpoint
    assert 8 <= rec_b["metrics"]["dataset_stats"]["samples"] <= 8 + 2 * 3
    assert rec_b["metrics"]["published_unet"] == "ema"
    ha, hb = rec_a["loss_history"], rec_b["loss_history"]
    assert [h["step"] for h in hb] == list(range(1, 13))
    loss_diff = max(abs(x[k] - y[k]) for x, y in zip(ha, hb) for k in ("loss", "noise", "hola", "grad_norm"))
    assert [h["caption_dropped"] for h in ha] == [h["caption_dropped"] for h in hb]
    assert loss_diff <= 1e-5, loss_diff
    assert rec_a["metrics"]["samples_seen"] == rec_b["metrics"]["samples_seen"] == 24
    assert [s for s, _ in list_checkpoints(str(ckroot))] == [8, 12]  # keep the last 2

    # published (EMA) UNet and raw weights both match
    ua = UNet2DConditionModel.from_pretrained(str(out_a), subfolder="unet").state_dict()
    ub = UNet2DConditionModel.from_pretrained(str(out_b), subfolder="unet").state_dict()
    ema_diff = max((ua[k] - ub[k]).abs().max().item() for k in ua)
    ra, rb = _raw_unet(Path(f"{out_a}.checkpoints/step-00000012")), _raw_unet(ckroot / "step-00000012")
    raw_diff = max((ra[k] - rb[k]).abs().max().item() for k in ra)
    print(
        f"resume: max |loss diff| {loss_diff:.3g}, max |EMA weight diff| {ema_diff:.3g}, "
        f"max |raw weight diff| {raw_diff:.3g}"
    )
    assert ema_diff <= 1e-5 and raw_diff <= 1e-5
    assert max((ra[k] - ua[k]).abs().max().item() for k in ra) > 0  # EMA really differs from raw
    run_b = json.loads((out_b / "training_run.json").read_text())
    assert run_b["config"]["resume"] is True and run_b["config"]["snr_gamma"] == 5.0


def test_resume_with_per_sample_draws_matches_bit_for_bit(tmp_path):
    """Shards of a dataset version (caption groups stored): every sample is flipped or not and gets a fresh
    caption, late groups dropped half of the time. Stopping after 5 steps and resuming from that checkpoint
    ends with the uninterrupted run's losses, draws and weights exactly."""
    from cosmicman.core.protocol import load_protocol
    from cosmicman.core.tokenizer import load_clip_tokenizer
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train
    from tests.support.version_shards import write_version_shards

    urls = write_version_shards(tmp_path / "shards", load_protocol(), load_clip_tokenizer(), n=10, per_shard=5)
    draws = {"late_group_dropout": 0.5, "steps": 10, "checkpoint_every": 5}
    rec_a = train(TrainConfig.from_dict(_cfg(urls, tmp_path / "a", **draws)), log_fn=lambda m: None)
    ckpt = str(tmp_path / "b.checkpoints")
    first = train(
        TrainConfig.from_dict(_cfg(urls, tmp_path / "b1", **{**draws, "steps": 5}, checkpoint_url=ckpt)),
        log_fn=lambda m: None,
    )
    rec_b = train(
        TrainConfig.from_dict(_cfg(urls, tmp_path / "b", **draws, checkpoint_url=ckpt, resume=True)),
        log_fn=lambda m: None,
    )
    assert first["metrics"]["steps_run"] == 5 and rec_b["metrics"]["resumed_from_step"] == 5
    stats_a = rec_a["metrics"]["dataset_stats"]
    assert stats_a.get("frozen_captions", 0) == 0 and stats_a["drawn_captions"] >= 20 and 0 < stats_a["flipped"] < 20
    assert rec_a["loss_history"] == rec_b["loss_history"]  # every step's loss, noise, HOLA and grad norm
    assert rec_a["metrics"]["samples_seen"] == rec_b["metrics"]["samples_seen"] == 20
    wa = torch.load(Path(f"{tmp_path / 'a'}.checkpoints") / "step-00000010" / "state.pt", weights_only=False)
    wb = torch.load(Path(ckpt) / "step-00000010" / "state.pt", weights_only=False)
    for part in ("unet", "ema", "optimizer"):
        assert all(torch.equal(x, y) for x, y in zip(_tensors(wa[part]), _tensors(wb[part]), strict=True)), part


def _tensors(state):
    """The tensors of a (nested) state, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state) for t in _tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []
