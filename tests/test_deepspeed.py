"""DeepSpeed ZeRO-2 through our trainer on the CPU (one process, gloo): same losses as the plain path,
engine checkpoints that resume exactly."""
import json
import subprocess
import sys

import pytest

from tests.test_train import REPO, _env, write_shards

pytest.importorskip("deepspeed")


def _cfg(urls, out, **kw):
    return {"shards": urls, "output_url": str(out), "resolution": 64, "batch_size": 2, "lr": 1e-3,
            "hola_map_factor": 8, "seed": 0, "shuffle_buffer": 4, "log_every": 1, "ema_decay": 0.0,
            "max_grad_norm": 1.0, **kw}


def _run_subprocess(cfg: dict, path) -> dict:
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "cosmicman.model.train", "--config", str(path)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DeepSpeed ZeRO-2 on 1 rank(s)" in proc.stderr
    return json.loads((__import__("pathlib").Path(cfg["output_url"]) / "training_run.json").read_text())


def test_zero2_matches_plain_and_resumes(tmp_path):
    from cosmicman.model.checkpoints import list_checkpoints
    from cosmicman.model.train import TrainConfig, train

    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    plain = train(TrainConfig.from_dict(_cfg(urls, tmp_path / "plain", steps=3, grad_accum=2)),
                  log_fn=lambda m: None)
    # ZeRO-2, 2 steps (2 micro-batches each), checkpoint at step 2; then resume to step 3
    ds_out = tmp_path / "ds"
    ds_cfg = _cfg(urls, ds_out, steps=2, grad_accum=2, deepspeed="zero2", checkpoint_every=2,
                  checkpoint_url=str(tmp_path / "ds-ckpt"), resume=True)
    first = _run_subprocess(ds_cfg, tmp_path / "ds.json")
    ckpts = list_checkpoints(str(tmp_path / "ds-ckpt"))
    assert [s for s, _ in ckpts] == [2]
    ds_files = sorted(p.name for p in (tmp_path / "ds-ckpt" / "step-00000002" / "ds" / "engine").iterdir())
    assert any("optim_states" in f for f in ds_files) and any("model_states" in f for f in ds_files)
    resumed = _run_subprocess({**ds_cfg, "steps": 3, "output_url": str(tmp_path / "ds3")}, tmp_path / "ds3.json")

    p, d = plain["loss_history"], first["loss_history"] + resumed["loss_history"][-1:]
    assert resumed["metrics"]["resumed_from_step"] == 2 and [h["step"] for h in d] == [1, 2, 3]
    for k in ("loss", "noise", "hola"):
        diff = max(abs(a[k] - b[k]) for a, b in zip(p, d))
        assert diff <= 1e-4, (k, diff)
    assert max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(p, d)) <= 1e-3
    assert p[0]["loss"] != p[2]["loss"]  # the weights moved: the comparison is not vacuous
