"""The single Dagster code location: assets, jobs, sensors, and the resources of one environment.

``COSMICMAN_ENV`` selects the environment (``local`` by default: the embedded, zero-configuration
flywheel under ``.cosmicman/``); each lives in its own file under ``cosmicman/environments``. Assets
never branch on it; only the resources differ, and for ``k8s`` how steps execute (one pod per step, a GPU
for each filter shard and for each batch's annotation).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from cosmicman.assets import (
    annotation,
    annotation_checks,
    captions,
    datasets,
    datasets_checks,
    evaluation,
    evaluation_checks,
    filtering,
    filtering_checks,
    parsing,
    pool_annotation,
    sourcing,
    training,
    training_checks,
)
from cosmicman.environments.k8s import k8s_execution, k8s_resources
from cosmicman.environments.local import local_execution, local_resources
from cosmicman.environments.s3 import s3_resources
from cosmicman.environments.settings import training_variants
from cosmicman.jobs import ALL_JOBS, ALL_SENSORS

ENVIRONMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "local": local_resources,
    "s3": s3_resources,
    "k8s": k8s_resources,
}
# how steps execute, where it is not Dagster's default (one process per step on this machine, no step tags)
EXECUTION: dict[str, Callable[[], dict[str, Any]]] = {"local": local_execution, "k8s": k8s_execution}


def with_training_variants(assets: list, variants: Sequence[str]) -> list:
    """The assets with the training partitions (``daring_unet``, ``evaluation``) narrowed to ``variants``."""
    if list(variants) == training.training_variants.get_partition_keys():
        return assets
    narrowed = dg.StaticPartitionsDefinition(list(variants))
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(partitions_def=narrowed))
        if isinstance(a, dg.AssetsDefinition) and a.partitions_def == training.training_variants
        else a
        for a in assets
    ]


def build_definitions(
    resources: dict[str, Any],
    executor: dg.ExecutorDefinition | None = None,
    filter_step_tags: dict[str, Any] | None = None,
    annotation_step_tags: dict[str, Any] | None = None,
    variants: Sequence[str] | None = None,
) -> dg.Definitions:
    """The code location over ``resources``; ``variants`` narrows the training partitions (default: all)."""
    assets = [
        *dg.load_assets_from_modules(
            [sourcing, filtering, parsing, annotation, captions, datasets, training, evaluation]
        ),
        filtering.build_filtered_images(filter_step_tags),
        pool_annotation.build_annotations(annotation_step_tags),
    ]
    # a check's partitions are its asset's: the training checks follow the (possibly narrowed) variants
    variant_partitions = (
        dg.StaticPartitionsDefinition(list(variants)) if variants is not None else training.training_variants
    )
    checks = [
        filtering_checks.rejection_shares_within_bounds,
        annotation_checks.annotator_in_force_not_worse,
        datasets_checks.shards_match_manifest,
        *training_checks.build_training_checks(variant_partitions),
        *evaluation_checks.build_evaluation_checks(variant_partitions),
    ]
    return dg.Definitions(
        assets=with_training_variants(assets, variants) if variants is not None else assets,
        asset_checks=checks,
        jobs=ALL_JOBS,
        sensors=ALL_SENSORS,
        resources=resources,
        executor=executor,
    )


def definitions_for(env: str) -> dg.Definitions:
    if env not in ENVIRONMENTS:
        raise ValueError(f"COSMICMAN_ENV={env!r} is not one of {sorted(ENVIRONMENTS)}")
    return build_definitions(ENVIRONMENTS[env](), variants=training_variants(), **EXECUTION.get(env, dict)())


defs = definitions_for(os.environ.get("COSMICMAN_ENV", "local"))
