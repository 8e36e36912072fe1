"""Production on Kubernetes: the S3 store, real sources, GPU filter steps and training pods."""

from __future__ import annotations

import os

import dagster as dg

from cosmicman.environments.s3 import s3_resources
from cosmicman.resources.annotation import LabellingResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.training import TrainingResource


def production_sourcing() -> SourcingResource:
    """Real sources: a LAION-style url list and each web API whose key is set. Keys reach the resource
    only as ``dg.EnvVar`` (read at run time, hidden in the UI, never logged)."""

    def key(env: str) -> dg.EnvVar | None:
        return dg.EnvVar(env) if env in os.environ else None

    return SourcingResource(
        pool_threshold=int(os.environ.get("COSMICMAN_POOL_THRESHOLD", "1000000")),
        parquet_url=os.environ.get("COSMICMAN_PARQUET_URL"),
        parquet_batch_size=10_000,
        flickr_api_key=key("FLICKR_API_KEY"),
        unsplash_access_key=key("UNSPLASH_ACCESS_KEY"),
        pixabay_api_key=key("PIXABAY_API_KEY"),
        flickr_batch_size=500,
        unsplash_batch_size=300,
        unsplash_production=True,
        pixabay_batch_size=1000,
        workers=int(os.environ.get("COSMICMAN_SOURCING_WORKERS", "8")),
    )


def k8s_resources() -> dict:
    """Production: the S3 store, and training in a GPU pod launched through Dagster Pipes on Kubernetes."""
    from cosmicman.resources.k8s_launchers import K8sJobTrainingLauncher, K8sPodEvaluationLauncher
    from cosmicman.resources.step_outputs import ObjectStoreStepIOManager

    s3 = s3_resources()
    return {
        **s3,
        "sourcing": production_sourcing(),
        # the filter step's pod asks for a GPU (dagster-k8s/config on the filter op): run the models there
        "filters": FilterResource(
            backend="production", device="cuda", fake_head_train_url=os.environ.get("COSMICMAN_FAKE_HEAD_TRAIN_URL")
        ),
        "training_launcher": K8sJobTrainingLauncher(
            image=dg.EnvVar("COSMICMAN_TRAIN_IMAGE"),
            namespace=os.environ.get("COSMICMAN_K8S_NAMESPACE", "cosmicman"),
            gpus=int(os.environ.get("COSMICMAN_TRAIN_GPUS", "8")),
        ),
        # evaluation in its own GPU pod, from the same image (the scorers' weights are paths inside it)
        "evaluation_launcher": K8sPodEvaluationLauncher(
            image=dg.EnvVar("COSMICMAN_TRAIN_IMAGE"),
            namespace=os.environ.get("COSMICMAN_K8S_NAMESPACE", "cosmicman"),
        ),
        # people label in Label Studio; images reach it as presigned S3 URLs
        "labelling": LabellingResource(
            backend_kind="label_studio",
            label_studio_url=dg.EnvVar("LABEL_STUDIO_URL"),
            label_studio_api_key=dg.EnvVar("LABEL_STUDIO_API_KEY"),
        ),
        # the released recipe (NOTES-training.md) on SD-1.5 at 512: ZeRO-2, bf16, buckets, cached latents;
        # the environment may name another base model and step budget
        "training": TrainingResource(
            recipe="released-sd15",
            overrides={
                field: kind(os.environ[env])
                for field, env, kind in (
                    ("pretrained", "COSMICMAN_PRETRAINED", str),
                    ("steps", "COSMICMAN_TRAIN_STEPS", int),
                )
                if env in os.environ
            },
        ),
        # one pod per step (k8s_execution): op outputs must outlive the pod that wrote them
        "io_manager": ObjectStoreStepIOManager(object_store=s3["object_store"]),
    }


def k8s_execution() -> dict:
    """Every step in its own pod (``k8s_job_executor``; image, namespace and the rest come from the
    K8sRunLauncher), so each filter shard's pod asks for ``COSMICMAN_FILTER_GPUS`` GPUs of its own."""
    from dagster_k8s import k8s_job_executor

    gpus = os.environ.get("COSMICMAN_FILTER_GPUS", "1")
    return {
        "executor": k8s_job_executor,
        "filter_step_tags": {
            "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": gpus}}}}
        },
    }
