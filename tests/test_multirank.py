"""Two ranks on the CPU (torchrun, gloo, DeepSpeed ZeRO-2): the stream is split, every rank writes its
checkpoint part, rank 0 alone publishes, and the pair resumes."""
import json
import subprocess
import sys

import pytest
import torch

from tests.test_train import REPO, _env, write_shards

pytest.importorskip("deepspeed")


def _torchrun(cfg: dict, path) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(cfg))
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "cosmicman.model.train", "--config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_ranks_split_checkpoint_publish_and_resume(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    cfg = {"shards": urls, "output_url": str(out), "resolution": 64, "batch_size": 2, "lr": 1e-3,
           "hola_map_factor": 8, "seed": 0, "shuffle_buffer": 4, "log_every": 1, "ema_decay": 0.0,
           "steps": 2, "deepspeed": "zero2", "checkpoint_every": 2, "checkpoint_url": str(ckpt), "resume": True}
    proc = _torchrun(cfg, tmp_path / "a.json")
    assert "[rank 1]" in proc.stderr and "DeepSpeed ZeRO-2 on 2 rank(s)" in proc.stderr
    assert json.loads(proc.stdout)["steps"] == 2  # one summary, from rank 0
    run = json.loads((out / "training_run.json").read_text())
    assert run["metrics"]["world_size"] == 2 and run["metrics"]["samples_seen"] == 2 * 2 * 2
    step_dir = ckpt / "step-00000002"
    assert (step_dir / "COMPLETE").exists()
    parts = [torch.load(step_dir / f"rank-0000{r}.pt", weights_only=False) for r in (0, 1)]
    # rank r takes stream positions p with p % 2 == r: the two resume points interleave
    assert parts[0]["data"]["start"] % 2 == 0 and parts[1]["data"]["start"] % 2 == 1
    optim = sorted(p.name for p in (step_dir / "ds" / "engine").glob("*optim_states.pt"))
    assert len(optim) == 2  # one ZeRO-2 optimizer partition per rank
    resumed = _torchrun({**cfg, "steps": 3, "output_url": str(tmp_path / "model3")}, tmp_path / "b.json")
    rec = json.loads((tmp_path / "model3" / "training_run.json").read_text())
    assert "resuming from" in resumed.stderr
    assert rec["metrics"]["resumed_from_step"] == 2 and [h["step"] for h in rec["loss_history"]] == [1, 2, 3]
    assert rec["loss_history"][:2] == run["loss_history"]
