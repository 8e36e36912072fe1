"""Kubernetes training and evaluation launchers (the ``k8s`` extra). Same ``launch(context, config)`` as
:class:`cosmicman.resources.launchers.SubprocessTrainingLauncher`, so ``daring_unet`` runs unchanged:

- :class:`K8sJobTrainingLauncher`: one pod with N GPUs through ``dagster_k8s.PipesK8sClient``,
  ``torchrun --standalone --nproc_per_node=N -m cosmicman.model.train``.
- :class:`K8sPodEvaluationLauncher`: ``python -m cosmicman.evaluation`` in one GPU pod, the same way.
- :class:`TrainJobLauncher`: a Kubeflow Trainer v2 ``TrainJob`` (multi-node, runtime
  ``torch-distributed``) created through the CustomObjectsApi inside ``dg.open_pipes_session``; the
  session's bootstrap env vars go into ``spec.trainer.env``, ``status.conditions`` are polled for
  Complete / Failed, and the TrainJob is deleted on failure or run termination.

Every launcher stores the config on the object store and passes only its URL and sha256 in the Pipes extras
(``cosmicman.core.launch_config``), so what goes into the pod's environment and arguments has a fixed size
whatever the dataset's size (``cosmicman.resources.launch_payload`` measures it from ``pod_body`` /
``train_job_body``, the very bodies ``launch`` submits).

Messages from every launcher: with ``messages_url`` set (production: a prefix on the object store) the
trainer (rank 0) or the evaluation uploads numbered message chunks there and ``ObjectStoreMessageReader`` polls them
(``cosmicman/resources/pipes_object_store.py``, ``cosmicman/model/pipes_channel.py``): this survives log
rotation, pod restarts and any number of nodes. Without it the (rank-0) pod's logs are read
(``PipesK8sPodLogsMessageReader``), and the run's log says so.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import dagster as dg
from pydantic import Field

from cosmicman.core.launch_config import put_launch_config
from cosmicman.core.store import Store
from cosmicman.resources.launchers import (
    EVALUATION_MODULE,
    TRAIN_MODULE,
    EvaluationLauncher,
    TrainingLauncher,
    pipes_session_notice_silenced,
)
from cosmicman.resources.pod_security import (
    container_security_context,
    pod_security_context,
    writable_mounts,
    writable_volumes,
)

GPU_RESOURCE = "nvidia.com/gpu"
TRAINJOB_GROUP = "trainer.kubeflow.org"
TRAINJOB_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"


def _load_kube_config(load_incluster_config: bool | None, kubeconfig_file: str | None) -> None:
    import os

    import kubernetes

    if load_incluster_config or (load_incluster_config is None and os.getenv("KUBERNETES_SERVICE_HOST")):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig_file)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_image(image: str) -> None:
    if not image or not image.strip() or any(c.isspace() for c in image):
        raise ValueError(f"image must be a non-empty image reference, got {image!r}")


def gpu_pod_spec(
    container: str, gpus: int, memory: str, cpu: str, shm_size: str, service_account: str | None
) -> dict[str, Any]:
    """A pod that asks for ``gpus`` GPUs (tolerating GPU nodes' taint) with requests equal to its limits, an
    in-memory /dev/shm, and the restricted security settings (``pod_security``): writable /tmp and caches
    only."""
    quantities = {GPU_RESOURCE: str(gpus), "cpu": cpu, "memory": memory}
    spec: dict[str, Any] = {
        "restart_policy": "Never",
        "security_context": pod_security_context(),
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": container,
                "resources": {"limits": dict(quantities), "requests": dict(quantities)},
                "security_context": container_security_context(),
                "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}, *writable_mounts()],
            }
        ],
        "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": shm_size}}, *writable_volumes()],
    }
    if service_account:
        spec["service_account_name"] = service_account
    return spec


MESSAGES_URL_DESCRIPTION = (
    "Object-store URL prefix for Pipes messages (the pod uploads chunks there); None: read the pod's logs."
)
# a training run may take a week: Dagster's own pod wait gives up after a day
LONG_RUN_TIMEOUT_S = 7 * 24 * 3600.0


def pipes_message_reader(
    context: dg.AssetExecutionContext, messages_url: str | None, poll_interval: float
) -> dg.PipesMessageReader:
    """The pod's messages from ``messages_url`` on the object store (chunks survive log rotation, a restarted
    pod and any number of nodes), or from the (rank-0) pod's logs when none is set (said in the log)."""
    from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

    from cosmicman.resources.pipes_object_store import ObjectStoreMessageReader

    if messages_url:
        return ObjectStoreMessageReader(messages_url, interval=min(5.0, poll_interval or 5.0))
    context.log.warning("no messages_url: the pod's Pipes messages are read from its logs, which rotate")
    return PipesK8sPodLogsMessageReader()


@contextlib.contextmanager
def pipes_session(
    context: dg.AssetExecutionContext, extras: Mapping[str, Any], reader: dg.PipesMessageReader
) -> Iterator[dg.PipesSession]:
    """The Pipes session of a pod launch: its bootstrap params (``extras`` among them) go into the pod's
    environment, which is why ``extras`` holds a config reference, never the config."""
    with (
        pipes_session_notice_silenced(),
        dg.open_pipes_session(
            context=context,
            extras=dict(extras),
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=reader,
        ) as session,
    ):
        yield session


class SinglePodLauncher(Protocol):
    """What :func:`run_single_pod` needs of a launcher (training or evaluation)."""

    namespace: str
    poll_interval: float
    timeout_s: float
    messages_url: str | None
    load_incluster_config: bool | None
    kubeconfig_file: str | None

    def pod_body(self, bootstrap_env: Mapping[str, str], pod_name: str) -> Any: ...


def run_single_pod(
    context: dg.AssetExecutionContext, launcher: SinglePodLauncher, config: dict[str, Any], store: Store
) -> dg.MaterializeResult:
    """Stores ``config``, submits ``launcher.pod_body`` for a Pipes session whose extras reference it, waits for
    the pod to terminate and deletes it. ``PipesK8sClient.run`` would build the pod itself; submitting our own
    body keeps what the payload measure reads and what the cluster gets one and the same."""
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterKubernetesClient, WaitForPodState
    from dagster_k8s.pipes import get_pod_name

    reader = pipes_message_reader(context, launcher.messages_url, launcher.poll_interval)
    client = PipesK8sClient(
        message_reader=reader,
        load_incluster_config=launcher.load_incluster_config,
        kubeconfig_file=launcher.kubeconfig_file,
        poll_interval=launcher.poll_interval,
    )
    client._load_k8s_config()  # what PipesK8sClient.run does first (with its no_proxy workaround)
    api = DagsterKubernetesClient.production_client()
    namespace = launcher.namespace
    with pipes_session(context, put_launch_config(store, config), reader) as session:
        pod_name = get_pod_name(context.run.run_id, context.op_execution_context.op.name)
        api.core_api.create_namespaced_pod(namespace, launcher.pod_body(session.get_bootstrap_env_vars(), pod_name))
        try:
            with client.consume_pod_logs(context=context, client=api, namespace=namespace, pod_name=pod_name):
                api.wait_for_pod(
                    pod_name,
                    namespace,
                    wait_for_state=WaitForPodState.Terminated,
                    wait_time_between_attempts=launcher.poll_interval,
                    wait_timeout=launcher.timeout_s,
                )
        finally:
            api.core_api.delete_namespaced_pod(pod_name, namespace)
    return dg.PipesClientCompletedInvocation(session).get_materialize_result()


def single_pod_body(pod_name: str, image: str, command: list[str], env: Mapping[str, str], spec: dict[str, Any]):
    """The V1Pod a single-pod launcher submits: its image and command, the Pipes bootstrap env merged with the
    launcher's own, and its base pod spec (security context, resources, volumes)."""
    from dagster_k8s.pipes import build_pod_body

    return build_pod_body(
        pod_name=pod_name, image=image, command=command, env_vars=dict(env), base_pod_meta=None, base_pod_spec=spec
    )


class K8sJobTrainingLauncher(TrainingLauncher):
    """Trains in one Kubernetes pod with ``gpus`` GPUs via ``dagster_k8s.PipesK8sClient``."""

    image: str = Field(description="Trainer image (with the cosmicman package installed).")
    namespace: str = "cosmicman"
    gpus: int = Field(default=1, description="nvidia.com/gpu limit of the training pod.")
    nproc_per_node: int | None = Field(default=None, description="torchrun processes; defaults to gpus.")
    service_account: str | None = "cosmicman-runner"
    shm_size: str = Field(default="16Gi", description="Size of the in-memory /dev/shm volume (NCCL).")
    cpu: str = Field(default="8", description="CPU request and limit of the training pod.")
    memory: str = Field(default="64Gi", description="Memory request and limit of the training pod.")
    env: dict[str, str] = {}
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    poll_interval: float = 10.0
    messages_url: str | None = Field(default=None, description=MESSAGES_URL_DESCRIPTION)
    timeout_s: float = Field(default=LONG_RUN_TIMEOUT_S, description="How long the pod may run before it fails.")

    def check_settings(self) -> None:
        _check_image(self.image)
        _check_positive("gpus", self.gpus)
        if self.nproc_per_node is not None:
            _check_positive("nproc_per_node", self.nproc_per_node)
            if self.nproc_per_node > self.gpus:
                raise ValueError(f"nproc_per_node ({self.nproc_per_node}) exceeds gpus ({self.gpus})")

    def command(self) -> list[str]:
        nproc = self.nproc_per_node or self.gpus
        return ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}", "-m", TRAIN_MODULE]

    def base_pod_spec(self) -> dict[str, Any]:
        return gpu_pod_spec("trainer", self.gpus, self.memory, self.cpu, self.shm_size, self.service_account)

    def pod_body(self, bootstrap_env: Mapping[str, str], pod_name: str = "daring-unet-train"):
        """The V1Pod ``launch`` submits, given the Pipes session's bootstrap env vars."""
        self.check_settings()
        return single_pod_body(
            pod_name, self.image, self.command(), {**bootstrap_env, **self.env}, self.base_pod_spec()
        )

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        self.check_settings()
        return run_single_pod(context, self, config, store)


class TrainJobLauncher(TrainingLauncher):
    """Trains on ``num_nodes`` nodes as a Kubeflow Trainer v2 ``TrainJob``."""

    image: str = Field(description="Trainer image (with the cosmicman package installed).")
    namespace: str = "cosmicman"
    num_nodes: int = 2
    gpus_per_node: int = 1
    nproc_per_node: int | None = None
    runtime: str = "torch-distributed"
    cpu: str = Field(default="8", description="CPU request and limit of each node's trainer.")
    memory: str = Field(default="64Gi", description="Memory request and limit of each node's trainer.")
    env: dict[str, str] = {}
    poll_interval: float = 15.0
    timeout_s: float = 7 * 24 * 3600.0
    delete_on_completion: bool = False
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    messages_url: str | None = Field(
        default=None,
        description="Object-store URL prefix for Pipes messages (rank 0 uploads chunks there); "
        "None: read the rank-0 pod's logs.",
    )

    def check_settings(self) -> None:
        _check_image(self.image)
        _check_positive("num_nodes", self.num_nodes)
        _check_positive("gpus_per_node", self.gpus_per_node)
        if self.nproc_per_node is not None:
            _check_positive("nproc_per_node", self.nproc_per_node)
        if self.runtime not in ("torch-distributed",):
            raise ValueError(
                f"runtime {self.runtime!r} is not supported: the trainer is launched by torchrun, "
                "use 'torch-distributed'"
            )

    def train_job_body(self, name: str, bootstrap_env: Mapping[str, str]) -> dict[str, Any]:
        """The TrainJob ``launch`` creates, given the Pipes session's bootstrap env vars."""
        self.check_settings()
        quantities = {GPU_RESOURCE: str(self.gpus_per_node), "cpu": self.cpu, "memory": self.memory}
        env = {**self.env, **bootstrap_env}
        return {
            "apiVersion": f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}",
            "kind": "TrainJob",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "cosmicman", "app.kubernetes.io/component": "training"},
            },
            "spec": {
                "runtimeRef": {"apiGroup": TRAINJOB_GROUP, "kind": "ClusterTrainingRuntime", "name": self.runtime},
                "trainer": {
                    "image": self.image,
                    # PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK / PET_MASTER_* come from the runtime
                    "command": ["torchrun", "-m", TRAIN_MODULE],
                    "numNodes": self.num_nodes,
                    "numProcPerNode": self.nproc_per_node or self.gpus_per_node,
                    "resourcesPerNode": {"limits": dict(quantities), "requests": dict(quantities)},
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                },
            },
        }

    @staticmethod
    def job_state(obj: dict[str, Any]) -> str | None:
        """``"Complete"`` / ``"Failed"`` once a condition of that type is True, else None."""
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") in ("Complete", "Failed") and str(cond.get("status")) == "True":
                return cond["type"]
        return None

    def _apis(self):
        import kubernetes

        _load_kube_config(self.load_incluster_config, self.kubeconfig_file)
        return kubernetes.client.CustomObjectsApi(), kubernetes.client.CoreV1Api()

    def launch(
        self,
        context: dg.AssetExecutionContext,
        config: dict[str, Any],
        store: Store,
        *,
        custom_api=None,
        core_api=None,
        message_reader: dg.PipesMessageReader | None = None,
    ) -> dg.MaterializeResult:
        """Create the TrainJob, wait for Complete / Failed, return the trainer's materialization.
        ``custom_api`` / ``core_api`` default to the kubernetes client's (tests pass fakes)."""
        from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

        self.check_settings()
        if custom_api is None or core_api is None:
            custom_api, core_api = self._apis()
        reader = message_reader or pipes_message_reader(context, self.messages_url, self.poll_interval)
        name = f"daring-unet-{context.run.run_id[:8]}-{uuid.uuid4().hex[:6]}"
        with pipes_session(context, put_launch_config(store, config), reader) as session:
            body = self.train_job_body(name, session.get_bootstrap_env_vars())
            custom_api.create_namespaced_custom_object(
                TRAINJOB_GROUP, TRAINJOB_VERSION, self.namespace, TRAINJOB_PLURAL, body
            )
            context.log.info(f"created TrainJob {self.namespace}/{name} ({self.num_nodes} nodes)")
            state, log_thread = None, None
            try:
                deadline = time.monotonic() + self.timeout_s
                while True:
                    if log_thread is None and isinstance(reader, PipesK8sPodLogsMessageReader):
                        pod = self._rank0_pod(core_api, name)
                        if pod:
                            log_thread = threading.Thread(
                                target=reader.consume_pod_logs,
                                daemon=True,
                                kwargs=dict(context=context, core_api=core_api, pod_name=pod, namespace=self.namespace),
                            )
                            log_thread.start()
                    obj = custom_api.get_namespaced_custom_object(
                        TRAINJOB_GROUP, TRAINJOB_VERSION, self.namespace, TRAINJOB_PLURAL, name
                    )
                    state = self.job_state(obj)
                    if state == "Failed":
                        msgs = [c.get("message", "") for c in obj["status"]["conditions"] if c.get("type") == "Failed"]
                        raise dg.Failure(f"TrainJob {name} failed: {'; '.join(m for m in msgs if m)}")
                    if state == "Complete":
                        break
                    if time.monotonic() > deadline:
                        raise dg.Failure(f"TrainJob {name} did not finish within {self.timeout_s}s")
                    time.sleep(self.poll_interval)
                if log_thread is not None:
                    log_thread.join(timeout=60)
            finally:
                # failure, timeout, or run termination (DagsterExecutionInterruptedError): don't leave GPUs held
                if state != "Complete" or self.delete_on_completion:
                    try:
                        custom_api.delete_namespaced_custom_object(
                            TRAINJOB_GROUP, TRAINJOB_VERSION, self.namespace, TRAINJOB_PLURAL, name
                        )
                        context.log.info(f"deleted TrainJob {self.namespace}/{name}")
                    except Exception as e:  # noqa: BLE001 - best effort on the way out
                        context.log.warning(f"could not delete TrainJob {name}: {e}")
        return dg.PipesClientCompletedInvocation(session).get_materialize_result()

    def _rank0_pod(self, core_api, name: str) -> str | None:
        selector = f"jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"
        pods = core_api.list_namespaced_pod(self.namespace, label_selector=selector).items
        running = [p for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]
        return running[0].metadata.name if running else None


class K8sPodEvaluationLauncher(EvaluationLauncher):
    """Evaluates in one Kubernetes pod with ``gpus`` GPUs via ``dagster_k8s.PipesK8sClient``, like training."""

    image: str = Field(description="Evaluation image (with the cosmicman package and the scorers' weights).")
    namespace: str = "cosmicman"
    gpus: int = Field(default=1, description="nvidia.com/gpu limit of the evaluation pod.")
    service_account: str | None = "cosmicman-runner"
    shm_size: str = "8Gi"
    cpu: str = Field(default="4", description="CPU request and limit of the evaluation pod.")
    memory: str = Field(default="32Gi", description="Memory request and limit of the evaluation pod.")
    env: dict[str, str] = {}
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    poll_interval: float = 10.0
    messages_url: str | None = Field(default=None, description=MESSAGES_URL_DESCRIPTION)
    timeout_s: float = Field(default=LONG_RUN_TIMEOUT_S, description="How long the pod may run before it fails.")

    def command(self) -> list[str]:
        return ["python", "-m", EVALUATION_MODULE]

    def base_pod_spec(self) -> dict[str, Any]:
        _check_image(self.image)
        _check_positive("gpus", self.gpus)
        return gpu_pod_spec("evaluation", self.gpus, self.memory, self.cpu, self.shm_size, self.service_account)

    def pod_body(self, bootstrap_env: Mapping[str, str], pod_name: str = "evaluation"):
        """The V1Pod ``launch`` submits, given the Pipes session's bootstrap env vars."""
        return single_pod_body(
            pod_name, self.image, self.command(), {**bootstrap_env, **self.env}, self.base_pod_spec()
        )

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any], store: Store) -> dg.MaterializeResult:
        self.base_pod_spec()  # its settings checked before anything is stored or opened
        return run_single_pod(context, self, config, store)
