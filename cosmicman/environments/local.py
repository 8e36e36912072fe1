"""The embedded default: everything on this machine under ``COSMICMAN_HOME`` (``.cosmicman/``), the
synthetic world and an optional image folder as sources, tiny models, no configuration."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource, SimulatedLabellingResource
from cosmicman.environments.simulated_data import (
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


def seed_demo_folder(home: Path) -> int:
    """Write the demo image folder the local sourcing reads (``<home>/datasets/folder``) unless it exists;
    the number of images written."""
    return write_demo_folder(home / "datasets" / "folder")


def local_execution() -> dict:
    """Every step of a run in the run's own process: a local batch is one filter shard, and a process per
    step would load the code location again for each (seconds per step on two cores)."""
    return {"executor": dg.in_process_executor}


def local_resources(store_url: str | None = None, folder_url: str | None = None) -> dict:
    """The embedded default: everything on this machine, synthetic world + an optional image folder."""
    folder = folder_url if folder_url is not None else os.path.join(HOME, "datasets", "folder")
    return {
        "object_store": ObjectStoreResource(url=store_url or os.path.join(HOME, "store")),
        "sourcing": SimulatedSourcingResource(folder_url=folder if os.path.isdir(folder) else None),
        "filters": SimulatedFilterResource(),
        "parser": SimulatedParserResource(),
        "annotation": SimulatedAnnotatorResource(),
        "labelling": SimulatedLabellingResource(),
        # Daring fine-tunes the base model our own code pretrained on the synthetic world (committed)
        "training": TrainingResource(overrides={"pretrained": str(ensure_base_model(HOME))}),
        "evaluation_config": SimulatedEvaluationResource(),
        "training_launcher": SubprocessTrainingLauncher(),
        "evaluation_launcher": SubprocessEvaluationLauncher(),
    }
