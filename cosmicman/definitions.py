"""The single Dagster code location: assets, jobs, sensors, and the resources of one environment.

``COSMICMAN_ENV`` selects the environment (``local`` by default: the embedded, zero-configuration
flywheel under ``.cosmicman/``); each lives in its own file under ``cosmicman/environments``. Assets
never branch on it; only the resources differ, and for ``k8s`` how steps execute (one pod per step, a GPU
for each filter shard).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg

from cosmicman.assets import annotation, datasets, evaluation, filtering, parsing, sourcing, training
from cosmicman.environments.k8s import k8s_execution, k8s_resources
from cosmicman.environments.local import local_resources
from cosmicman.environments.s3 import s3_resources
from cosmicman.jobs import ALL_JOBS, ALL_SENSORS

ENVIRONMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "local": local_resources,
    "s3": s3_resources,
    "k8s": k8s_resources,
}
# how steps execute, where it is not Dagster's default (one process per step on this machine, no step tags)
EXECUTION: dict[str, Callable[[], dict[str, Any]]] = {"k8s": k8s_execution}


def build_definitions(
    resources: dict[str, Any],
    executor: dg.ExecutorDefinition | None = None,
    filter_step_tags: dict[str, Any] | None = None,
) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([sourcing, filtering, parsing, annotation, datasets, training, evaluation]),
            filtering.build_filtered_images(filter_step_tags),
        ],
        jobs=ALL_JOBS,
        sensors=ALL_SENSORS,
        resources=resources,
        executor=executor,
    )


def definitions_for(env: str) -> dg.Definitions:
    if env not in ENVIRONMENTS:
        raise ValueError(f"COSMICMAN_ENV={env!r} is not one of {sorted(ENVIRONMENTS)}")
    return build_definitions(ENVIRONMENTS[env](), **EXECUTION.get(env, dict)())


defs = definitions_for(os.environ.get("COSMICMAN_ENV", "local"))
