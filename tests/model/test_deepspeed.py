"""DeepSpeed ZeRO-2 through our trainer on the CPU (one process, gloo): same losses as the plain path,
engine checkpoints that resume exactly. Runs in the test process (no launcher: the trainer sets up a
one-rank rendezvous); the process group is torn down afterwards."""

import os

import pytest

from tests.model.test_train import write_shards

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_rank_process_group():
    saved = {k: os.environ.get(k) for k in DIST_VARS}
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cfg(urls, out, **kw):
    return {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "batch_size": 2,
        "lr": 1e-3,
        "hola_map_factor": 8,
        "seed": 0,
        "shuffle_buffer": 4,
        "log_every": 1,
        "ema_decay": 0.0,
        "max_grad_norm": 1.0,
        "alignment_batches": 0,
        **kw,
    }


def test_zero2_matches_plain_and_resumes(tmp_path, one_rank_process_group):
    from cosmicman.model.checkpoints import list_checkpoints
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    plain = train(TrainConfig.from_dict(_cfg(urls, tmp_path / "plain", steps=3, grad_accum=2)), log_fn=lambda m: None)
    # ZeRO-2, 2 steps (2 micro-batches each), checkpoint at step 2; then resume to step 3
    logs: list[str] = []
    ds_cfg = _cfg(
        urls,
        tmp_path / "ds",
        steps=2,
        grad_accum=2,
        deepspeed="zero2",
        checkpoint_every=2,
        checkpoint_url=str(tmp_path / "ds-ckpt"),
        resume=True,
    )
    first = train(TrainConfig.from_dict(ds_cfg), log_fn=logs.append)
    assert any("DeepSpeed ZeRO-2 on 1 rank(s)" in m for m in logs)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "ds-ckpt"))] == [2]
    ds_files = sorted(p.name for p in (tmp_path / "ds-ckpt" / "step-00000002" / "ds" / "engine").iterdir())
    assert any("optim_states" in f for f in ds_files) and any("model_states" in f for f in ds_files)
    resumed = train(
        TrainConfig.from_dict({**ds_cfg, "steps": 3, "output_url": str(tmp_path / "ds3")}), log_fn=lambda m: None
    )

    p, d = plain["loss_history"], first["loss_history"] + resumed["loss_history"][-1:]
    assert resumed["metrics"]["resumed_from_step"] == 2 and [h["step"] for h in d] == [1, 2, 3]
    for k in ("loss", "noise", "hola"):
        diff = max(abs(a[k] - b[k]) for a, b in zip(p, d))
        assert diff <= 1e-4, (k, diff)
    assert max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(p, d)) <= 1e-3
    assert p[0]["loss"] != p[2]["loss"]  # the weights moved: the comparison is not vacuous
