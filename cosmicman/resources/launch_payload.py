"""The launch payload: the bytes a Kubernetes launch puts into its container's environment and arguments.

Linux copies each environment string and each argument of a new process onto its stack; one such string may
not exceed 128 KiB (MAX_ARG_STRLEN), else the container cannot start. Pipes' bootstrap params travel as such
strings, which is why a launch passes its config by reference. The payload is measured on the body the
launcher submits (``pod_body`` / ``train_job_body``, what ``launch`` sends), so it cannot drift from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_pipes import PipesParams

from cosmicman.core.launch_config import put_launch_config
from cosmicman.core.store import Store
from cosmicman.resources.k8s_launchers import (
    K8sJobTrainingLauncher,
    K8sPodEvaluationLauncher,
    TrainJobLauncher,
    pipes_message_reader,
    pipes_session,
)
from cosmicman.resources.pipes_object_store import ObjectStoreMessageReader

K8sLauncher = K8sJobTrainingLauncher | K8sPodEvaluationLauncher | TrainJobLauncher


def container_payload_bytes(container: Mapping[str, Any]) -> int:
    """A container's environment and arguments as the kernel copies them: ``NAME=value`` for each variable
    and each command / args string, each with its terminating NUL."""
    env = [f"{e['name']}={e.get('value') or ''}" for e in container.get("env") or []]
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    return sum(len(s.encode()) + 1 for s in [*env, *argv])


def launch_payload_bytes(launcher: K8sLauncher, bootstrap_env: Mapping[str, str]) -> int:
    """The payload of the body ``launcher`` submits for a Pipes session with ``bootstrap_env``: its largest
    container's for a single pod (the trainer's or the evaluation's), its trainer's (on every node) for a
    TrainJob."""
    if isinstance(launcher, TrainJobLauncher):
        return container_payload_bytes(launcher.train_job_body("payload", bootstrap_env)["spec"]["trainer"])
    import kubernetes

    pod = kubernetes.client.ApiClient().sanitize_for_serialization(launcher.pod_body(bootstrap_env))
    return max(container_payload_bytes(c) for c in pod["spec"]["containers"])


class ParamsOnlyReader(dg.PipesMessageReader):
    """``reader``'s bootstrap params without its polling: a measure launches nothing, and a polling reader
    would wait 10 s after the session for messages that cannot come."""

    def __init__(self, reader: dg.PipesMessageReader) -> None:
        self.reader = reader

    @contextlib.contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[PipesParams]:
        if isinstance(self.reader, ObjectStoreMessageReader):
            with self.reader.get_params() as params:
                yield params
        else:  # the pod-logs reader: its params are constant and it starts no thread
            with self.reader.read_messages(handler) as params:
                yield params

    def no_messages_debug_text(self) -> str:
        return "a launch payload measure: no process was launched"


def launch_bootstrap_env(
    context: dg.AssetExecutionContext, launcher: K8sLauncher, extras: Mapping[str, Any]
) -> dict[str, str]:
    """The Pipes bootstrap env ``launcher`` would put into its pod for ``extras``, from a session opened as
    ``launch`` opens it (its context injector, its reader's params) in ``context`` (an asset's, in a run)."""
    reader = ParamsOnlyReader(pipes_message_reader(context, launcher.messages_url, launcher.poll_interval))
    with pipes_session(context, extras, reader) as session:
        return dict(session.get_bootstrap_env_vars())


def measure_launch_payload(
    context: dg.AssetExecutionContext, launcher: K8sLauncher, config: dict[str, Any], store: Store
) -> int:
    """The payload of launching ``config`` with ``launcher`` through the launch's own steps up to submission:
    the config stored on ``store``, the session its reference opens, the body built from that session's
    bootstrap env. Nothing is submitted. The asset that calls it returns a ``dg.MaterializeResult`` (Dagster
    expects one from an op that opened a Pipes session)."""
    return launch_payload_bytes(launcher, launch_bootstrap_env(context, launcher, put_launch_config(store, config)))
