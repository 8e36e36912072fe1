"""Kubernetes training and evaluation launchers (the ``k8s`` extra). Same ``launch(context, config)`` as
:class:`cosmicman.resources.launchers.SubprocessTrainingLauncher`, so ``daring_unet`` runs unchanged:

- :class:`K8sJobTrainingLauncher`: one pod with N GPUs through ``dagster_k8s.PipesK8sClient``,
  ``torchrun --standalone --nproc_per_node=N -m cosmicman.model.train``; messages come back on the
  pod's logs.
- :class:`K8sPodEvaluationLauncher`: ``python -m cosmicman.evaluation`` in one GPU pod, the same way.
- :class:`TrainJobLauncher`: a Kubeflow Trainer v2 ``TrainJob`` (multi-node, runtime
  ``torch-distributed``) created through the CustomObjectsApi inside ``dg.open_pipes_session``; the
  session's bootstrap env vars go into ``spec.trainer.env``, ``status.conditions`` are polled for
  Complete / Failed, and the TrainJob is deleted on failure or run termination.

Messages from a TrainJob: with ``messages_url`` set (production: a prefix on the object store) rank 0
uploads numbered message chunks there and ``ObjectStoreMessageReader`` polls them
(``cosmicman/resources/pipes_object_store.py``, ``cosmicman/model/pipes_channel.py``): this survives log
rotation, pod restarts and any number of nodes. Without it the rank-0 node pod's logs are read
(``PipesK8sPodLogsMessageReader``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from cosmicman.resources.launchers import (
    EVALUATION_MODULE,
    TRAIN_MODULE,
    EvaluationLauncher,
    TrainingLauncher,
    pipes_session_notice_silenced,
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
    container: str, gpus: int, memory: str | None, cpu: str | None, shm_size: str, service_account: str | None
) -> dict[str, Any]:
    """A pod that asks for ``gpus`` GPUs (tolerating GPU nodes' taint), with an in-memory /dev/shm."""
    limits: dict[str, str] = {GPU_RESOURCE: str(gpus)}
    requests: dict[str, str] = {GPU_RESOURCE: str(gpus)}
    if memory:
        limits["memory"] = requests["memory"] = memory
    if cpu:
        requests["cpu"] = cpu
    spec: dict[str, Any] = {
        "restart_policy": "Never",
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": container,
                "resources": {"limits": limits, "requests": requests},
                "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": shm_size}}],
    }
    if service_account:
        spec["service_account_name"] = service_account
    return spec


class K8sJobTrainingLauncher(TrainingLauncher):
    """Trains in one Kubernetes pod with ``gpus`` GPUs via ``dagster_k8s.PipesK8sClient``."""

    image: str = Field(description="Trainer image (with the cosmicman package installed).")
    namespace: str = "cosmicman"
    gpus: int = Field(default=1, description="nvidia.com/gpu limit of the training pod.")
    nproc_per_node: int | None = Field(default=None, description="torchrun processes; defaults to gpus.")
    service_account: str | None = "cosmicman-runner"
    shm_size: str = Field(default="16Gi", description="Size of the in-memory /dev/shm volume (NCCL).")
    cpu: str | None = None
    memory: str | None = None
    env: dict[str, str] = {}
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    poll_interval: float = 10.0

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
        from dagster_k8s.pipes import build_pod_body

        self.check_settings()
        return build_pod_body(
            pod_name=pod_name,
            image=self.image,
            command=self.command(),
            env_vars={**bootstrap_env, **self.env},
            base_pod_meta=None,
            base_pod_spec=self.base_pod_spec(),
        )

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any]) -> dg.MaterializeResult:
        from dagster_k8s import PipesK8sClient

        self.check_settings()
        client = PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file,
            poll_interval=self.poll_interval,
        )
        return client.run(
            context=context,
            image=self.image,
            command=self.command(),
            namespace=self.namespace,
            env=self.env or None,
            base_pod_spec=self.base_pod_spec(),
            extras={"config": config},
        ).get_materialize_result()


class TrainJobLauncher(TrainingLauncher):
    """Trains on ``num_nodes`` nodes as a Kubeflow Trainer v2 ``TrainJob``."""

    image: str = Field(description="Trainer image (with the cosmicman package installed).")
    namespace: str = "cosmicman"
    num_nodes: int = 2
    gpus_per_node: int = 1
    nproc_per_node: int | None = None
    runtime: str = "torch-distributed"
    cpu: str | None = None
    memory: str | None = None
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
        limits: dict[str, str] = {GPU_RESOURCE: str(self.gpus_per_node)}
        requests: dict[str, str] = dict(limits)
        if self.memory:
            limits["memory"] = requests["memory"] = self.memory
        if self.cpu:
            requests["cpu"] = self.cpu
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
                    "resourcesPerNode": {"limits": limits, "requests": requests},
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
        if message_reader is None and self.messages_url:
            from cosmicman.resources.pipes_object_store import ObjectStoreMessageReader

            message_reader = ObjectStoreMessageReader(self.messages_url, interval=min(5.0, self.poll_interval or 5.0))
        reader = message_reader or PipesK8sPodLogsMessageReader()
        name = f"daring-unet-{context.run.run_id[:8]}-{uuid.uuid4().hex[:6]}"
        with (
            pipes_session_notice_silenced(),
            dg.open_pipes_session(
                context=context,
                extras={"config": config},
                context_injector=dg.PipesEnvContextInjector(),
                message_reader=reader,
            ) as session,
        ):
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
    cpu: str | None = None
    memory: str | None = None
    env: dict[str, str] = {}
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    poll_interval: float = 10.0

    def command(self) -> list[str]:
        return ["python", "-m", EVALUATION_MODULE]

    def base_pod_spec(self) -> dict[str, Any]:
        _check_image(self.image)
        _check_positive("gpus", self.gpus)
        return gpu_pod_spec("evaluation", self.gpus, self.memory, self.cpu, self.shm_size, self.service_account)

    def launch(self, context: dg.AssetExecutionContext, config: dict[str, Any]) -> dg.MaterializeResult:
        from dagster_k8s import PipesK8sClient

        client = PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file,
            poll_interval=self.poll_interval,
        )
        spec = self.base_pod_spec()
        with pipes_session_notice_silenced():
            return client.run(
                context=context,
                image=self.image,
                command=self.command(),
                namespace=self.namespace,
                env=self.env or None,
                base_pod_spec=spec,
                extras={"config": config},
            ).get_materialize_result()
