"""Dagster concurrency pools of the steps that hold GPUs, and the pod resources of the steps that only launch
GPU pods. A pool's limit is the number of its steps running at once across all runs (``dagster instance
concurrency set <pool> <limit>``, or the instance's ``concurrency: pools: default_limit``): set it to the
cluster's GPUs divided by one step's GPUs, so a backfill of every variant waits for GPUs instead of asking
for all of them at once (k8s/README.md)."""

from typing import Any

# one step = one training pod of the launcher's GPUs (K8sJobTrainingLauncher.gpus) or one TrainJob
TRAINING_POOL = "gpu_training"
# one step = one evaluation pod (K8sPodEvaluationLauncher.gpus)
EVALUATION_POOL = "gpu_evaluation"
# one step = one filter shard's pod (COSMICMAN_FILTER_GPUS)
FILTER_POOL = "gpu_filters"
# one step = one sourcing batch annotated by the annotator in force (a VLM on a GPU in production)
ANNOTATION_POOL = "gpu_annotation"

K8S_CONFIG_TAG = "dagster-k8s/config"


def launcher_step_tags() -> dict[str, Any]:
    """``dagster-k8s/config`` of a step that launches a GPU pod and waits for it: it holds no GPU itself,
    only the Pipes session (requests equal limits; merged over the run launcher's ``runK8sConfig``)."""
    quantities = {"cpu": "1", "memory": "2Gi"}
    return {K8S_CONFIG_TAG: {"container_config": {"resources": {"requests": quantities, "limits": quantities}}}}
