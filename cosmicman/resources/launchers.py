"""Training launchers: how ``python -m cosmicman.model.train`` gets a process. Each talks back
through Dagster Pipes, so the asset code is the same wherever training runs."""

from __future__ import annotations

import abc
import sys
from typing import Any

import dagster as dg

TRAIN_MODULE = "cosmicman.model.train"


class TrainingLauncher(dg.ConfigurableResource):
    """Runs the trainer with a JSON-able config and returns the materialization it reported."""

    @abc.abstractmethod
    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any]) -> dg.MaterializeResult: ...


class SubprocessTrainingLauncher(TrainingLauncher):
    """Trains in a local child process (the embedded default); ``python`` may name another interpreter."""

    python: str | None = None
    env: dict[str, str] = {}

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any]) -> dg.MaterializeResult:
        client = dg.PipesSubprocessClient(env=self.env or None)
        return client.run(
            context=context, command=[self.python or sys.executable, "-m", TRAIN_MODULE], extras={"config": config}
        ).get_materialize_result()
