"""The deployed flywheel on one machine: production backends at every stage, the store on S3, training and
evaluation in subprocesses. Loading it with a required variable missing names every one missing."""

from __future__ import annotations

from typing import Any

from cosmicman.environments.production import production_resources
from cosmicman.environments.variables import EnvironmentVariables
from cosmicman.resources.launchers import SubprocessEvaluationLauncher, SubprocessTrainingLauncher


def s3_resources() -> dict[str, Any]:
    """Production backends on this machine (models on ``COSMICMAN_DEVICE``, default ``cuda``)."""
    variables = EnvironmentVariables("s3")
    resources = {
        **production_resources(variables, device=variables.optional("COSMICMAN_DEVICE", "cuda") or "cuda"),
        "training_launcher": SubprocessTrainingLauncher(),
        "evaluation_launcher": SubprocessEvaluationLauncher(),
    }
    variables.check()
    return resources
