"""The embedded default: everything on this machine under ``COSMICMAN_HOME`` (``.cosmicman/``), the
synthetic world and an optional image folder as sources, tiny models, no configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from cosmicman.environments.settings import positive_int
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource, SimulatedLabellingResource
from cosmicman.environments.simulated_data import (
    WEB_API_KEYS,
    SimulatedEvaluationResource,
    SimulatedFilterResource,
    SimulatedParserResource,
    SimulatedSourcingResource,
)
from cosmicman.resources.launchers import SubprocessEvaluationLauncher, SubprocessTrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource
from cosmicman.simulation.base_model import ensure_base_model
from cosmicman.simulation.demo_folder import write_demo_folder

HOME = os.path.abspath(os.environ.get("COSMICMAN_HOME", ".cosmicman"))
# training seeds of the baseline and HOLA variants in the embedded default: two give a spread; the bench
# trains 3, but each seed is also an evaluation (minutes on two cores) and make run must stay under 15 minutes
LOCAL_SEEDS = 2
# items a web API contributes to a local batch when its key is set
LOCAL_WEB_API_BATCH = 8


def seed_demo_folder(home: Path) -> int:
    """Write the demo image folder the local sourcing reads (``<home>/datasets/folder``) unless it exists;
    the number of images written."""
    return write_demo_folder(home / "datasets" / "folder")


def local_execution() -> dict:
    """Every step of a run in the run's own process: a local batch is one filter shard, and a process per
    step would load the code location again for each (seconds per step on two cores)."""
    return {"executor": dg.in_process_executor}


def local_web_apis() -> dict[str, Any]:
    """The web APIs whose key is set, as sources of the local flywheel too (optional here: the sourcing run
    says which are off and why). A key reaches the resource only as ``dg.EnvVar``;
    ``COSMICMAN_<API>_BATCH_SIZE`` (default 8) and ``COSMICMAN_<API>_BASE_URL`` tune each."""
    settings: dict[str, Any] = {}
    for api, (key_field, key_var) in WEB_API_KEYS.items():
        if not os.environ.get(key_var):
            continue
        prefix = f"COSMICMAN_{api.upper()}"
        settings[key_field] = dg.EnvVar(key_var)
        settings[f"{api}_batch_size"] = positive_int(f"{prefix}_BATCH_SIZE", LOCAL_WEB_API_BATCH)
        if os.environ.get(f"{prefix}_BASE_URL"):
            settings[f"{api}_base_url"] = os.environ[f"{prefix}_BASE_URL"]
    return settings


def local_resources(store_url: str | None = None, folder_url: str | None = None) -> dict:
    """The embedded default: everything on this machine, synthetic world + an optional image folder."""
    folder = folder_url if folder_url is not None else os.path.join(HOME, "datasets", "folder")
    return {
        "object_store": ObjectStoreResource(url=store_url or os.path.join(HOME, "store")),
        "sourcing": SimulatedSourcingResource(folder_url=folder if os.path.isdir(folder) else None, **local_web_apis()),
        "filters": SimulatedFilterResource(),
        "parser": SimulatedParserResource(),
        "annotation": SimulatedAnnotatorResource(),
        "labelling": SimulatedLabellingResource(),
        # Daring fine-tunes the base model our own code pretrained on the synthetic world (committed); the
        # noise-only baseline and HOLA train on LOCAL_SEEDS seeds each, so the ablation table shows HOLA's
        # attention gain with its spread; the activation variants on one (make run stays under 15 minutes)
        "training": TrainingResource(
            overrides={"pretrained": str(ensure_base_model(HOME))},
            seeds_by_variant={"baseline": LOCAL_SEEDS, "hola": LOCAL_SEEDS},
        ),
        "evaluation_config": SimulatedEvaluationResource(),
        "training_launcher": SubprocessTrainingLauncher(),
        "evaluation_launcher": SubprocessEvaluationLauncher(),
    }
