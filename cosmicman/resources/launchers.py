"""Launchers: how ``python -m cosmicman.model.train`` and ``python -m cosmicman.evaluation`` get a process.
Each talks back through Dagster Pipes, so the asset code is the same wherever training and evaluation run.
Every launcher passes the config by reference (``cosmicman.core.launch_config``): it stores the config on the
object store and the Pipes extras carry only its URL and sha256."""

from __future__ import annotations

import abc
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from cosmicman.core.launch_config import put_launch_config
from cosmicman.core.store import Store

TRAIN_MODULE = "cosmicman.model.train"
EVALUATION_MODULE = "cosmicman.evaluation"
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
    """Runs the trainer with a JSON-able config, stored on ``store`` for it to fetch, and returns the
    materialization it reported."""

    @abc.abstractmethod
    def launch(
        self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store
    ) -> dg.MaterializeResult: ...


def launch_module_in_subprocess(
    context: dg.AssetExecutionContext,
    module: str,
    config: dict[str, Any],
    store: Store,
    python: str | None,
    env: dict[str, str],
) -> dg.MaterializeResult:
    """``python -m module`` as a local child process under Pipes, ``config`` referenced in its extras."""
    client = dg.PipesSubprocessClient(env=env or None)
    extras = put_launch_config(store, config)
    with pipes_session_notice_silenced():
        invocation = client.run(context=context, command=[python or sys.executable, "-m", module], extras=extras)
    return invocation.get_materialize_result()


class SubprocessTrainingLauncher(TrainingLauncher):
    """Trains in a local child process (the embedded default); ``python`` may name another interpreter."""

    python: str | None = None
    env: dict[str, str] = {}

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        return launch_module_in_subprocess(context, TRAIN_MODULE, config, store, self.python, self.env)


class EvaluationLauncher(dg.ConfigurableResource):
    """Runs the evaluation with a JSON-able config (``cosmicman.evaluation.config``), stored on ``store`` for
    it to fetch, and returns the materialization it reported."""

    @abc.abstractmethod
    def launch(
        self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store
    ) -> dg.MaterializeResult: ...


class SubprocessEvaluationLauncher(EvaluationLauncher):
    """Evaluates in a local child process (the embedded default); ``python`` may name another interpreter."""

    python: str | None = None
    env: dict[str, str] = {}

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        return launch_module_in_subprocess(context, EVALUATION_MODULE, config, store, self.python, self.env)
