"""The single Dagster code location: assets, checks, jobs, sensors, and resources per environment.

``COSMICMAN_ENV`` selects the environment (``local`` by default: the embedded, zero-configuration
flywheel under ``.cosmicman/``). Assets never branch on it; only the resources below differ.
"""
from __future__ import annotations

import os

import dagster as dg

from cosmicman.assets import annotation, datasets, evaluation, filtering, sourcing, training
from cosmicman.jobs import ALL_JOBS, ALL_SENSORS
from cosmicman.resources.annotation import AnnotatorResource, LabellingResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.launchers import SubprocessTrainingLauncher
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import EvaluationResource, TrainingResource

HOME = os.path.abspath(os.environ.get("COSMICMAN_HOME", ".cosmicman"))


def local_resources(store_url: str | None = None, folder_url: str | None = None) -> dict:
    """The embedded default: everything on this machine, synthetic world + an optional image folder."""
    folder = folder_url if folder_url is not None else os.path.join(HOME, "datasets", "folder")
    return {
        "object_store": ObjectStoreResource(url=store_url or os.path.join(HOME, "store")),
        "sourcing": SourcingResource(folder_url=folder if os.path.isdir(folder) else None),
        "filters": FilterResource(),
        "parser": ParserResource(),
        "annotation": AnnotatorResource(),
        "labelling": LabellingResource(),
        "training": TrainingResource(),
        "evaluation_config": EvaluationResource(),
        "training_launcher": SubprocessTrainingLauncher(),
    }


def s3_resources() -> dict:
    """The same flywheel on an S3-compatible object store; credentials only through environment variables."""
    return {**local_resources(), "object_store": ObjectStoreResource(
        url=dg.EnvVar("COSMICMAN_STORE_URL"), endpoint_url=os.environ.get("COSMICMAN_S3_ENDPOINT"),
        access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"), secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"))}


def k8s_resources() -> dict:
    """Production: the S3 store, and training in a GPU pod launched through Dagster Pipes on Kubernetes."""
    from cosmicman.resources.k8s_launchers import K8sJobTrainingLauncher

    return {**s3_resources(), "training_launcher": K8sJobTrainingLauncher(
        image=dg.EnvVar("COSMICMAN_TRAIN_IMAGE"), namespace=os.environ.get("COSMICMAN_K8S_NAMESPACE", "cosmicman"),
        gpus=int(os.environ.get("COSMICMAN_TRAIN_GPUS", "8"))),
        # people label in Label Studio; images reach it as presigned S3 URLs
        "labelling": LabellingResource(backend_kind="label_studio", label_studio_url=dg.EnvVar("LABEL_STUDIO_URL"),
                                       label_studio_api_key=dg.EnvVar("LABEL_STUDIO_API_KEY")),
        # the released recipe (NOTES-training.md) on SD-1.5 at 512: ZeRO-2, bf16, buckets, cached latents
        "training": TrainingResource(
            pretrained=os.environ.get("COSMICMAN_PRETRAINED", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
            resolution=512, hola_map_factor=16, lr=1e-5, steps=int(os.environ.get("COSMICMAN_TRAIN_STEPS", "100000")),
            batch_size=4, grad_accum=4, mixed_precision="bf16", deepspeed="zero2", buckets=True,
            cache_latents=True, gradient_checkpointing=True, checkpoint_every=1000)}


ENVIRONMENTS = {"local": local_resources, "s3": s3_resources, "k8s": k8s_resources}


def build_definitions(resources: dict) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([sourcing, filtering, annotation, datasets, training, evaluation]),
        jobs=ALL_JOBS,
        sensors=ALL_SENSORS,
        resources=resources,
    )


def _resources_for_env() -> dict:
    env = os.environ.get("COSMICMAN_ENV", "local")
    if env not in ENVIRONMENTS:
        raise ValueError(f"COSMICMAN_ENV={env!r} is not one of {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[env]()


defs = build_definitions(_resources_for_env())
