"""A TrainJob whose rank 0 reports back through Dagster Pipes over the object store: the fake cluster
runs the real trainer on two ranks (torchrun, ZeRO-2, CPU) with the TrainJob's env, and the
materialization arrives through message chunks under ``messages_url``. The same run checks the two-rank
mechanics: the split stream, one checkpoint part and optimizer partition per rank, rank 0 alone
publishing, and rank 1 reading its config from the Pipes context."""

import json
import subprocess
import sys
from unittest import mock

import dagster as dg
import torch

from cosmicman.core.store import Store
from cosmicman.resources.k8s_launchers import TrainJobLauncher
from tests.model.test_train import REPO, _env, write_shards


def test_trainjob_rank0_reports_through_object_store(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    out = tmp_path / "model"
    ckpt = tmp_path / "ckpt"
    config = {
        "shards": urls,
        "output_url": str(out),
        "resolution": 64,
        "steps": 2,
        "batch_size": 2,
        "hola_map_factor": 8,
        "deepspeed": "zero2",
        "log_every": 1,
        "alignment_batches": 1,
        "shuffle_buffer": 4,
        "checkpoint_every": 2,
        "checkpoint_url": str(ckpt),
    }
    pods: list[subprocess.Popen] = []
    custom, core = mock.MagicMock(), mock.MagicMock()

    def create(group, version, namespace, plural, body):  # the cluster starts the job's pods
        env = {**_env(), **{e["name"]: e["value"] for e in body["spec"]["trainer"]["env"]}, "OMP_NUM_THREADS": "1"}
        pods.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node=2",
                    "-m",
                    "cosmicman.model.train",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=pod_log,
            )
        )

    def get(*_args):
        code = pods[0].poll()
        state = None if code is None else ("Complete" if code == 0 else "Failed")
        return {"status": {"conditions": [{"type": state, "status": "True"}]}} if state else {}

    custom.create_namespaced_custom_object.side_effect = create
    custom.get_namespaced_custom_object.side_effect = get
    messages = tmp_path / "pipes"
    launcher = TrainJobLauncher(
        image="reg/cosmicman:1", num_nodes=1, gpus_per_node=2, poll_interval=0.5, messages_url=f"file://{messages}"
    )

    @dg.asset
    def daring_unet(context: dg.AssetExecutionContext, training_launcher: TrainJobLauncher):
        return training_launcher.launch(
            context, config, Store(str(tmp_path / "store")), custom_api=custom, core_api=core
        )

    with open(tmp_path / "pod.log", "w") as pod_log:
        try:
            result = dg.materialize([daring_unet], resources={"training_launcher": launcher})
        finally:
            for p in pods:
                if p.poll() is None:
                    p.kill()
    assert result.success, (tmp_path / "pod.log").read_text()[-3000:]
    md = {k: v.value for k, v in result.asset_materializations_for_node("daring_unet")[0].metadata.items()}
    assert md["steps"] == 2 and md["output_url"] == str(out) and 0.0 < md["attention_in_mask"] < 1.0
    chunks = sorted(messages.glob("*/*.json"))
    assert chunks and all(c.parent == chunks[0].parent for c in chunks)  # one session prefix
    assert "report_asset_materialization" in "".join(c.read_text() for c in chunks)
    core.list_namespaced_pod.assert_not_called()  # no pod logs were needed
    assert "[rank 1]" in (tmp_path / "pod.log").read_text()

    run = json.loads((out / "training_run.json").read_text())
    assert run["metrics"]["world_size"] == 2 and run["metrics"]["samples_seen"] == 2 * 2 * 2
    step_dir = ckpt / "step-00000002"
    assert (step_dir / "COMPLETE").exists()
    parts = [torch.load(step_dir / f"rank-0000{r}.pt", weights_only=False) for r in (0, 1)]
    # rank r takes stream positions p with p % 2 == r: the two resume points interleave
    assert parts[0]["data"]["start"] % 2 == 0 and parts[1]["data"]["start"] % 2 == 1
    assert len(list((step_dir / "ds" / "engine").glob("*optim_states.pt"))) == 2  # a ZeRO-2 partition per rank
