"""Production on Kubernetes: the S3 store, real sources, GPU filter and annotation steps, training pods."""

from __future__ import annotations

import os

from cosmicman.core.keys import PIPES_MESSAGES_PREFIX
from cosmicman.environments.production import production_resources
from cosmicman.environments.variables import EnvironmentVariables


def k8s_resources() -> dict:
    """Production backends, training and evaluation in GPU pods launched through Dagster Pipes on Kubernetes
    (their messages come back through the object store, not pod logs), one pod per step."""
    from cosmicman.resources.k8s_launchers import K8sJobTrainingLauncher, K8sPodEvaluationLauncher
    from cosmicman.resources.step_outputs import ObjectStoreStepIOManager

    variables = EnvironmentVariables("k8s")
    # the filter, training and evaluation pods ask for GPUs: run the models there
    resources = production_resources(variables, device="cuda")
    image = variables.required("COSMICMAN_TRAIN_IMAGE")
    namespace = variables.optional("COSMICMAN_K8S_NAMESPACE", "cosmicman") or "cosmicman"
    messages_url = f"{variables.required('COSMICMAN_STORE_URL').rstrip('/')}/{PIPES_MESSAGES_PREFIX}"
    resources.update(
        training_launcher=K8sJobTrainingLauncher(
            image=image,
            namespace=namespace,
            gpus=variables.positive_int("COSMICMAN_TRAIN_GPUS", 8),
            messages_url=messages_url,
        ),
        # evaluation in its own GPU pod, from the same image (the scorers' weights are paths inside it)
        evaluation_launcher=K8sPodEvaluationLauncher(image=image, namespace=namespace, messages_url=messages_url),
        # one pod per step (k8s_execution): op outputs must outlive the pod that wrote them
        io_manager=ObjectStoreStepIOManager(object_store=resources["object_store"]),
    )
    variables.check()
    return resources


def _gpu_step_tags(gpus: str) -> dict:
    return {"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": gpus}}}}}


def k8s_execution() -> dict:
    """Every step in its own pod (``k8s_job_executor``; image, namespace and the rest come from the
    K8sRunLauncher), so each filter shard's pod asks for ``COSMICMAN_FILTER_GPUS`` GPUs of its own and each
    batch's annotation step (the VLM) for ``COSMICMAN_ANNOTATION_GPUS``."""
    from dagster_k8s import k8s_job_executor

    return {
        "executor": k8s_job_executor,
        "filter_step_tags": _gpu_step_tags(os.environ.get("COSMICMAN_FILTER_GPUS", "1")),
        "annotation_step_tags": _gpu_step_tags(os.environ.get("COSMICMAN_ANNOTATION_GPUS", "1")),
    }
