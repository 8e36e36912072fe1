"""A small flywheel as a code location of its own, for the daemon-driven turn tests: the local environment
with a small pool, at most two labelling rounds, a few training steps and prompts. A workspace file loads it
(``python_module: tests.support.small_flywheel``); it reads its home from ``COSMICMAN_HOME``."""

import os

from cosmicman.definitions import build_definitions
from cosmicman.environments.local import local_execution, local_resources
from cosmicman.environments.settings import training_variants
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource
from cosmicman.environments.simulated_data import SimulatedEvaluationResource, SimulatedSourcingResource
from cosmicman.resources.training import TrainingResource

HOME = os.environ["COSMICMAN_HOME"]
FOLDER = os.path.join(HOME, "datasets", "folder")


def small_resources() -> dict:
    resources = local_resources(store_url=os.path.join(HOME, "store"), folder_url=FOLDER)
    resources["sourcing"] = SimulatedSourcingResource(batch_size=40, pool_threshold=50, folder_url=FOLDER)
    resources["training"] = TrainingResource(
        overrides={**resources["training"].overrides, "steps": 12, "batch_size": 4}
    )
    resources["evaluation_config"] = SimulatedEvaluationResource(n_prompts=6, inference_steps=4)
    resources["annotation"] = SimulatedAnnotatorResource(max_rounds=2, round_sample_size=16)
    return resources


defs = build_definitions(small_resources(), variants=training_variants(), **local_execution())
