"""Training launchers: how ``python -m cosmicman.model.train`` gets a process. Each talks back
through Dagster Pipes, so the asset code is the same wherever training runs."""

from __future__ import annotations

import abc
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

TRAIN_MODULE = "cosmicman.model.train"
# Dagster 1.13's own Pipes session reads a preview property of every message reader, ours or its own, and so
# warns on each launch although nothing here uses a preview API
PIPES_SESSION_PREVIEW = r"Function `PipesMessageReader.expected_writer_count` is currently in preview"


@contextlib.contextmanager
def pipes_session_notice_silenced() -> Iterator[None]:
    """A Pipes session without Dagster's PreviewWarning about its own ``expected_writer_count``; any other
    warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PIPES_SESSION_PREVIEW, category=dg.PreviewWarning)
        yield


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
        with pipes_session_notice_silenced():
            invocation = client.run(
                context=context, command=[self.python or sys.executable, "-m", TRAIN_MODULE], extras={"config": config}
            )
        return invocation.get_materialize_result()
