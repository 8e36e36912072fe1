"""The embedded default: everything on this machine under ``COSMICMAN_HOME`` (``.cosmicman/``), the
synthetic world and an optional image folder as sources, tiny models, no configuration."""
from __future__ import annotations

import os

from cosmicman.resources.annotation import AnnotatorResource, LabellingResource
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.launchers import SubprocessTrainingLauncher
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.evaluation import EvaluationResource
from cosmicman.resources.training import TrainingResource

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
