"""Launch by reference (issue 17, item 3): what a Kubernetes launch puts into the pod's environment and
arguments has a fixed size whatever the dataset's size. Measured through the launch's own steps (config
stored, Pipes session opened, ``pod_body`` / ``train_job_body`` built from its bootstrap env) for a
synthetic CosmicMan-HQ version of 6M images: shard URLs only, no files."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_pipes import decode_param

from cosmicman.core.keys import DATASETS_PREFIX
from cosmicman.core.launch_config import put_launch_config
from cosmicman.core.store import Store
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.k8s_launchers import (
    K8sJobTrainingLauncher,
    K8sPodEvaluationLauncher,
    TrainJobLauncher,
)
from cosmicman.resources.launch_payload import (
    K8sLauncher,
    container_payload_bytes,
    launch_bootstrap_env,
    launch_payload_bytes,
    measure_launch_payload,
)
from cosmicman.resources.training import TrainingResource

STORE_URL = "s3://cosmicman-production-store"
IMAGES_PER_SHARD = 64
PAYLOAD_GOAL = 16384  # issue 17's acceptance: launch_payload_bytes_6m at most this
ZLIB_JITTER = 16  # bytes: Pipes' params are zlib + base64; their coded length varies a little with the bytes
MAX_ARG_STRLEN = 128 * 1024  # Linux: one environment string or argument longer than this and exec fails
IMAGE = "registry.example.com/cosmicman/trainer:2025.06.1"
KINDS = ("K8sJobTrainingLauncher", "TrainJobLauncher", "K8sPodEvaluationLauncher")


def launcher(kind: str, messages: Path) -> K8sLauncher:
    """A production-like launcher; its message prefix is a local folder, about as long as an S3 URL."""
    url = f"file://{messages}"
    if kind == "K8sJobTrainingLauncher":
        return K8sJobTrainingLauncher(image=IMAGE, messages_url=url, gpus=8, env={"NCCL_DEBUG": "WARN"})
    if kind == "TrainJobLauncher":
        return TrainJobLauncher(image=IMAGE, messages_url=url, num_nodes=4, gpus_per_node=8, env={"NCCL_DEBUG": "WARN"})
    return K8sPodEvaluationLauncher(image=IMAGE, messages_url=url)


def training_config(images: int) -> dict:
    """What ``daring_unet`` launches for a version of ``images`` images: the released recipe, the latent
    cache and an output on the production store, one shard URL per 64 images."""
    shards = [f"{STORE_URL}/{DATASETS_PREFIX}/v0042/shard-{i:06d}.tar" for i in range(-(-images // IMAGES_PER_SHARD))]
    config = TrainingResource(recipe="released-sd15").launch_config(
        shards, f"{STORE_URL}/cache/latents", VARIANTS["hola"], seed=0
    )
    config.output_url = f"{STORE_URL}/models/daring_unet/v0042-0123456789"
    return dataclasses.asdict(config)


@dataclass(frozen=True)
class Measured:
    payload: int  # bytes, as measure_launch_payload gives them
    params: int  # bytes of the bootstrap params decoded: what they carry before zlib and base64


def measured(store: Store, configs: dict[str, dict], launcher: K8sLauncher) -> dict[str, Measured]:
    """Each config's launch, measured inside one materialization of a ``daring_unet`` partition (a real run:
    the Pipes context carries its run id, asset key and partition as in production)."""
    out: dict[str, Measured] = {}

    @dg.asset(name="daring_unet", partitions_def=dg.StaticPartitionsDefinition(["hola"]))
    def launched(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        for name, config in configs.items():
            env = launch_bootstrap_env(context, launcher, put_launch_config(store, config))
            params = sum(len(json.dumps(decode_param(v)).encode()) for v in env.values())
            out[name] = Measured(measure_launch_payload(context, launcher, config, store), params)
        return dg.MaterializeResult()  # a Pipes session was opened: Dagster expects its (empty) result

    assert dg.materialize([launched], partition_key="hola").success
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_launch_payload_at_6m_images_is_small_and_does_not_grow(kind, tmp_path):
    sizes = measured(
        Store(str(tmp_path / "store")),
        {
            "1k shards": training_config(1_000 * IMAGES_PER_SHARD),
            "100k shards": training_config(100_000 * IMAGES_PER_SHARD),
            "6M images": training_config(6_000_000),
        },
        launcher(kind, tmp_path / "pipes" / "messages"),
    )
    print(f"launch_payload_bytes_6m ({kind}): {sizes['6M images'].payload}")
    assert sizes["6M images"].payload <= PAYLOAD_GOAL
    # what the params carry has one size whatever the shard count (a URL and a sha256 of fixed lengths) ...
    assert len({m.params for m in sizes.values()}) == 1, sizes
    # ... and zlib codes a different sha256 (and run) in a few more or fewer base64 groups, never more
    payloads = [m.payload for m in sizes.values()]
    assert max(payloads) - min(payloads) <= ZLIB_JITTER, sizes


def test_inline_config_at_6m_images_would_not_start(tmp_path):
    """The measure sees the failure that launch by reference removes: the config inline in the extras, as
    launches passed it before, puts a bootstrap variable over Linux's limit for one string."""
    trainer = launcher("K8sJobTrainingLauncher", tmp_path / "messages")
    config = training_config(6_000_000)
    out: dict[str, int] = {}

    @dg.asset
    def daring_unet(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        env = launch_bootstrap_env(context, trainer, {"config": config})
        out["longest"] = max(len(f"{k}={v}") for k, v in env.items())
        out["payload"] = launch_payload_bytes(trainer, env)
        return dg.MaterializeResult()

    assert dg.materialize([daring_unet]).success
    assert out["longest"] > MAX_ARG_STRLEN and out["payload"] > MAX_ARG_STRLEN


def test_container_payload_counts_each_string_with_its_nul():
    container = {"env": [{"name": "A", "value": "xy"}, {"name": "B"}], "command": ["torchrun", "-m"], "args": ["m"]}
    assert container_payload_bytes(container) == len("A=xy\0B=\0torchrun\0-m\0m\0")
    assert container_payload_bytes({"env": [{"name": "É", "value": "é"}]}) == len("É=é\0".encode())
