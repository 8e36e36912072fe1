"""Kubernetes manifests and launchers, checked without a cluster: core kinds against the Kubernetes
schema (kubernetes-validate, strict), the TrainJob against a schema of our own, the Helm values, and
the pod / TrainJob bodies the launchers submit (kubernetes API objects mocked)."""

import json
from pathlib import Path
from unittest import mock

import dagster as dg
import jsonschema
import kubernetes_validate as kv
import pytest
import yaml

from cosmicman.core.launch_config import fetch_launch_config
from cosmicman.core.store import Store
from cosmicman.resources.k8s_launchers import (
    K8sJobTrainingLauncher,
    K8sPodEvaluationLauncher,
    TrainJobLauncher,
)

K8S = Path(__file__).resolve().parents[2] / "k8s"
K8S_VERSION = "1.33"
PIPES_ENV = {"DAGSTER_PIPES_CONTEXT": "ctx-blob", "DAGSTER_PIPES_MESSAGES": "msg-blob"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[tuple[str, dict]]:
    return [
        (f"{p.name}:{d['kind']}", d) for p in sorted(K8S.glob("*.yaml")) if p.name != "values.yaml" for d in _docs(p)
    ]


CORE = [(i, d) for i, d in _manifests() if not d["apiVersion"].startswith("trainer.kubeflow.org/")]
TRAINJOBS = [d for _, d in _manifests() if d["apiVersion"].startswith("trainer.kubeflow.org/")]

# The part of Kubeflow Trainer v2's TrainJob (v1alpha1) that we rely on; unknown trainer fields rejected.
_ENV = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {"type": "object"}},
    },
}
_QUANTITIES = {"type": "object", "additionalProperties": {"type": "string"}}
TRAINJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "trainer.kubeflow.org/v1alpha1"},
        "kind": {"const": "TrainJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}},
        },
        "spec": {
            "type": "object",
            "required": ["runtimeRef", "trainer"],
            "properties": {
                "runtimeRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"const": "torch-distributed"},
                        "apiGroup": {"const": "trainer.kubeflow.org"},
                        "kind": {"enum": ["ClusterTrainingRuntime", "TrainingRuntime"]},
                    },
                },
                "trainer": {
                    "type": "object",
                    "required": ["image", "command", "numNodes", "resourcesPerNode"],
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string", "minLength": 1},
                        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "args": {"type": "array", "items": {"type": "string"}},
                        "env": _ENV,
                        "numNodes": {"type": "integer", "minimum": 1},
                        "numProcPerNode": {"type": ["integer", "string"]},
                        "resourcesPerNode": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"limits": _QUANTITIES, "requests": _QUANTITIES},
                        },
                    },
                },
            },
        },
    },
}


# --- manifests --------------------------------------------------------------------------------------------


def test_manifests_present():
    kinds = {d["kind"] for _, d in _manifests()}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Job", "TrainJob"} <= kinds
    assert (K8S / "README.md").exists()


@pytest.mark.parametrize("ident,doc", CORE, ids=[i for i, _ in CORE])
def test_core_manifest_valid_strict(ident, doc):
    assert kv.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION  # by that release's own schema


def test_strict_validation_rejects_unknown_field():
    job = next(d for _, d in CORE if d["kind"] == "Job")
    bad = json.loads(json.dumps(job))
    bad["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_rbac_lets_runner_launch_training():
    role = next(d for _, d in CORE if d["kind"] == "Role")
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    for key in [("batch", "jobs"), ("", "pods"), ("trainer.kubeflow.org", "trainjobs")]:
        assert {"create", "get", "delete"} <= granted[key], key
    assert "get" in granted[("", "pods/log")]
    binding = next(d for _, d in CORE if d["kind"] == "RoleBinding")
    sa = next(d for _, d in CORE if d["kind"] == "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]


def test_training_job_gpus_shm_torchrun():
    job = next(d for _, d in CORE if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    argv = c["command"] + c["args"]
    assert argv[0] == "torchrun" and f"--nproc_per_node={gpus}" in argv
    assert argv[argv.index("-m") + 1] == "cosmicman.model.train"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("doc", TRAINJOBS)
def test_trainjob_manifest_structure(doc):
    jsonschema.validate(doc, TRAINJOB_SCHEMA)
    assert doc["spec"]["trainer"]["command"][:1] == ["torchrun"]


def test_trainjob_schema_rejects_missing_and_unknown():
    bad = json.loads(json.dumps(TRAINJOBS[0]))
    del bad["spec"]["trainer"]["numNodes"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, TRAINJOB_SCHEMA)
    bad = json.loads(json.dumps(TRAINJOBS[0]))
    bad["spec"]["trainer"]["gpus"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, TRAINJOB_SCHEMA)


def test_helm_values_run_launcher_and_postgres():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    rl = values["runLauncher"]
    assert rl["type"] == "K8sRunLauncher"
    k8s = rl["config"]["k8sRunLauncher"]
    assert k8s["jobNamespace"] == "cosmicman"
    assert k8s["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == "cosmicman-runner"
    pg = values["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlHost"] and pg["postgresqlDatabase"]
    assert "postgresqlPassword" not in pg and values["global"]["postgresqlSecretName"]
    dep = values["dagster-user-deployments"]["deployments"][0]
    assert dep["dagsterApiGrpcArgs"] == ["--module-name", "cosmicman.definitions"]
    assert {"name": "COSMICMAN_ENV", "value": "k8s"} in dep["env"]
    secrets = {"cosmicman-s3", "cosmicman-source-keys", "cosmicman-label-studio"}
    assert {s["name"] for s in dep["envSecrets"]} == secrets == {s["name"] for s in k8s["envSecrets"]}
    assert "dagster-k8s/config" in (K8S / "values.yaml").read_text()


# --- K8sJobTrainingLauncher -------------------------------------------------------------------------------


def _pod_dict(pod) -> dict:
    import kubernetes

    return kubernetes.client.ApiClient().sanitize_for_serialization(pod)


def test_k8s_job_pod_body():
    launcher = K8sJobTrainingLauncher(
        image="reg/cosmicman:1", gpus=4, service_account="cosmicman-runner", memory="64Gi", env={"NCCL_DEBUG": "WARN"}
    )
    pod = _pod_dict(launcher.pod_body(PIPES_ENV))
    kv.validate({"apiVersion": "v1", "kind": "Pod", **pod}, K8S_VERSION, strict=True)
    c = pod["spec"]["containers"][0]
    assert c["image"] == "reg/cosmicman:1"
    assert c["command"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=4",
        "-m",
        "cosmicman.model.train",
    ]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "4", "cpu": "8", "memory": "64Gi"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {**PIPES_ENV, "NCCL_DEBUG": "WARN"}
    assert pod["spec"]["serviceAccountName"] == "cosmicman-runner"
    assert pod["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image": "", "gpus": 1}, "image"),
        ({"image": "x", "gpus": 0}, "gpus"),
        ({"image": "x", "gpus": 2, "nproc_per_node": 4}, "exceeds"),
    ],
)
def test_k8s_job_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        K8sJobTrainingLauncher(**kwargs).pod_body(PIPES_ENV)


def test_k8s_job_launch_through_pipes_k8s_client(tmp_path):
    """Runs launch() inside a real materialization with the kubernetes client mocked: the submitted pod
    carries the session's real DAGSTER_PIPES_* bootstrap, the config by reference, and the pod is cleaned up."""
    from contextlib import nullcontext

    from dagster_k8s import PipesK8sClient

    launcher = K8sJobTrainingLauncher(image="reg/cosmicman:1", gpus=2, namespace="cosmicman")
    fake = mock.MagicMock()
    submitted = {}

    def create(ns, body):
        submitted["ns"], submitted["body"] = ns, body

    fake.core_api.create_namespaced_pod.side_effect = create

    @dg.asset
    def trained(context: dg.AssetExecutionContext, training_launcher: K8sJobTrainingLauncher):
        return training_launcher.launch(context, {"steps": 3}, Store(str(tmp_path)))  # no trainer: nothing reported

    with (
        mock.patch.object(PipesK8sClient, "_load_k8s_config"),
        mock.patch("dagster_k8s.pipes.DagsterKubernetesClient.production_client", return_value=fake),
        mock.patch.object(PipesK8sClient, "consume_pod_logs", return_value=nullcontext()),
    ):
        assert dg.materialize([trained], resources={"training_launcher": launcher}).success

    assert submitted["ns"] == "cosmicman"
    c = _pod_dict(submitted["body"])["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and "--nproc_per_node=2" in c["command"]
    assert _launched_config(env) == {"steps": 3}
    pod_name = _pod_dict(submitted["body"])["metadata"]["name"]
    fake.core_api.delete_namespaced_pod.assert_called_once_with(pod_name, "cosmicman")


def test_evaluation_runs_in_its_own_gpu_pod_through_pipes_k8s_client(tmp_path):
    """The evaluation launcher submits one pod (python -m cosmicman.evaluation, one GPU) with the session's
    Pipes bootstrap and the evaluation config in its extras, like training."""
    from contextlib import nullcontext

    from dagster_k8s import PipesK8sClient

    launcher = K8sPodEvaluationLauncher(image="reg/cosmicman:1", namespace="cosmicman")
    fake = mock.MagicMock()
    submitted = {}
    fake.core_api.create_namespaced_pod.side_effect = lambda ns, body: submitted.update(ns=ns, body=body)

    @dg.asset
    def evaluated(context: dg.AssetExecutionContext, evaluation_launcher: K8sPodEvaluationLauncher):
        return evaluation_launcher.launch(context, {"model_url": "s3://m"}, Store(str(tmp_path)))

    with (
        mock.patch.object(PipesK8sClient, "_load_k8s_config"),
        mock.patch("dagster_k8s.pipes.DagsterKubernetesClient.production_client", return_value=fake),
        mock.patch.object(PipesK8sClient, "consume_pod_logs", return_value=nullcontext()),
    ):
        assert dg.materialize([evaluated], resources={"evaluation_launcher": launcher}).success
    c = _pod_dict(submitted["body"])["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "cosmicman.evaluation"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert _launched_config(env) == {"model_url": "s3://m"}
    with pytest.raises(ValueError, match="gpus must be"):
        K8sPodEvaluationLauncher(image="reg/cosmicman:1", gpus=0).base_pod_spec()


def _report_from_pod(env: dict, loss: float) -> None:
    """Plays the pod: from its bootstrap env, writes opened / a materialization / closed through the
    object-store message channel that cosmicman.model.train and cosmicman.evaluation write through."""
    from dagster_pipes import PIPES_PROTOCOL_VERSION, PIPES_PROTOCOL_VERSION_FIELD, decode_param

    from cosmicman.model.pipes_channel import ObjectStoreMessageWriter

    params = decode_param(env["DAGSTER_PIPES_MESSAGES"])
    reports = [
        ("opened", {"extras": {}}),
        (
            "report_asset_materialization",
            {
                "asset_key": "daring_unet",
                "metadata": {"loss_last": {"raw_value": loss, "type": "float"}},
                "data_version": None,
            },
        ),
        ("closed", {}),
    ]
    with ObjectStoreMessageWriter(interval=0.01).open(params) as channel:
        for method, body in reports:
            channel.write_message(
                {PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": method, "params": body}
            )


@pytest.mark.parametrize("role", ["training", "evaluation"])
def test_single_pod_messages_come_back_through_the_object_store(role, tmp_path):
    """With messages_url set, the pod's report arrives as message chunks under it; the pod's logs are never
    read, and the launcher waits a week, not Dagster's day, for the pod."""
    from dagster_k8s import PipesK8sClient

    messages = tmp_path / "pipes" / "messages"
    store = Store(str(tmp_path / "store"))
    kind = K8sJobTrainingLauncher if role == "training" else K8sPodEvaluationLauncher
    launcher = kind(image="reg/cosmicman:1", messages_url=f"file://{messages}", poll_interval=0.05)
    fake = mock.MagicMock()
    submitted = {}

    def create(ns, body):
        submitted["env"] = {e["name"]: e["value"] for e in _pod_dict(body)["spec"]["containers"][0]["env"]}
        _report_from_pod(submitted["env"], 0.25)

    fake.core_api.create_namespaced_pod.side_effect = create

    @dg.asset(name="daring_unet")
    def launched(context: dg.AssetExecutionContext, launcher: dg.ResourceParam[object]):
        return launcher.launch(context, {"steps": 3}, store)  # type: ignore[attr-defined]

    with (
        mock.patch.object(PipesK8sClient, "_load_k8s_config"),
        mock.patch("dagster_k8s.pipes.DagsterKubernetesClient.production_client", return_value=fake),
    ):
        result = dg.materialize([launched], resources={"launcher": launcher})
    assert result.success
    [materialization] = result.asset_materializations_for_node("daring_unet")
    assert materialization.metadata["loss_last"].value == 0.25
    fake.core_api.read_namespaced_pod_log.assert_not_called()
    assert _launched_config(submitted["env"]) == {"steps": 3}  # the message URL is in the messages param
    from dagster_pipes import decode_param

    messages_param = decode_param(submitted["env"]["DAGSTER_PIPES_MESSAGES"])
    assert messages_param["cosmicman_messages_url"].startswith(f"file://{messages}/")
    assert list((messages / messages_param["cosmicman_messages_url"].rsplit("/", 1)[1]).glob("*.json"))
    wait = fake.wait_for_pod.call_args
    assert wait.kwargs["wait_timeout"] == 7 * 24 * 3600


def _pipes_context(env: dict) -> dict:
    from dagster_pipes import decode_param

    params = decode_param(env["DAGSTER_PIPES_CONTEXT"])
    return params["data"]  # PipesEnvContextInjector: the context data itself, inline


def _launched_config(env: dict) -> dict:
    """The config a pod's bootstrap env references: only its URL and sha256 travel in the extras."""
    extras = _pipes_context(env)["extras"]
    assert set(extras) == {"config_url", "config_sha256"}
    return fetch_launch_config(extras)


# --- TrainJobLauncher -------------------------------------------------------------------------------------


def test_trainjob_body():
    launcher = TrainJobLauncher(
        image="reg/cosmicman:1", num_nodes=4, gpus_per_node=8, memory="256Gi", env={"NCCL_DEBUG": "WARN"}
    )
    body = launcher.train_job_body("daring-unet-abc", PIPES_ENV)
    jsonschema.validate(body, TRAINJOB_SCHEMA)
    t = body["spec"]["trainer"]
    assert body["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert t["numNodes"] == 4 and t["numProcPerNode"] == 8
    assert t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "8", "memory": "256Gi"}
    assert t["command"] == ["torchrun", "-m", "cosmicman.model.train"]
    assert {e["name"]: e["value"] for e in t["env"]} == {"NCCL_DEBUG": "WARN", **PIPES_ENV}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image": "a b"}, "image"),
        ({"image": "x", "num_nodes": 0}, "num_nodes"),
        ({"image": "x", "gpus_per_node": -1}, "gpus_per_node"),
        ({"image": "x", "runtime": "deepspeed-distributed"}, "torch-distributed"),
    ],
)
def test_trainjob_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainJobLauncher(**kwargs).train_job_body("n", PIPES_ENV)


def test_trainjob_state_from_conditions():
    assert TrainJobLauncher.job_state({}) is None
    assert (
        TrainJobLauncher.job_state(
            {
                "status": {
                    "conditions": [{"type": "Suspended", "status": "True"}, {"type": "Complete", "status": "False"}]
                }
            }
        )
        is None
    )
    assert (
        TrainJobLauncher.job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    )
    assert TrainJobLauncher.job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"


class _Reader(dg.PipesMessageReader):
    """Plays the trainer's part: reports a materialization through the session's message handler."""

    def __init__(self, report: bool):
        self.report = report

    from contextlib import contextmanager

    @contextmanager
    def read_messages(self, handler):
        yield {"stdio": "stderr"}
        if self.report:
            handler.handle_message(
                {
                    "__dagster_pipes_version": "0.1",
                    "method": "report_asset_materialization",
                    "params": {
                        "asset_key": "trained",
                        "metadata": {"loss_last": {"raw_value": 0.5, "type": "float"}},
                        "data_version": None,
                    },
                }
            )

    def no_messages_debug_text(self) -> str:
        return "test reader"


def _run_trainjob(states: list[str | None], report: bool, store: Store):
    custom, core = mock.MagicMock(), mock.MagicMock()
    conds = iter(states)

    def get(*_args):
        s = next(conds)
        return {"status": {"conditions": [{"type": s, "status": "True", "message": "OOM on node 2"}]}} if s else {}

    custom.get_namespaced_custom_object.side_effect = get
    launcher = TrainJobLauncher(image="reg/cosmicman:1", num_nodes=2, gpus_per_node=4, poll_interval=0.0)
    out = {}

    @dg.asset
    def trained(context: dg.AssetExecutionContext, training_launcher: TrainJobLauncher):
        out["result"] = training_launcher.launch(
            context, {"steps": 3}, store, custom_api=custom, core_api=core, message_reader=_Reader(report)
        )
        return out["result"]

    result = dg.materialize([trained], resources={"training_launcher": launcher}, raise_on_error=False)
    return result, custom, out


def test_trainjob_launch_complete(tmp_path):
    result, custom, out = _run_trainjob([None, None, "Complete"], report=True, store=Store(str(tmp_path)))
    assert result.success
    group, version, ns, plural, body = custom.create_namespaced_custom_object.call_args.args
    assert (group, version, ns, plural) == ("trainer.kubeflow.org", "v1alpha1", "cosmicman", "trainjobs")
    jsonschema.validate(body, TRAINJOB_SCHEMA)
    env = {e["name"]: e["value"] for e in body["spec"]["trainer"]["env"]}
    assert _launched_config(env) == {"steps": 3}
    assert "DAGSTER_PIPES_MESSAGES" in env
    assert custom.get_namespaced_custom_object.call_count == 3
    custom.delete_namespaced_custom_object.assert_not_called()
    assert out["result"].metadata["loss_last"].value == 0.5


def test_trainjob_launch_failed_is_deleted(tmp_path):
    result, custom, _ = _run_trainjob([None, "Failed"], report=False, store=Store(str(tmp_path)))
    assert not result.success
    err = result.get_step_failure_events()[0].event_specific_data.error
    assert "OOM on node 2" in err.to_string()
    name = custom.create_namespaced_custom_object.call_args.args[4]["metadata"]["name"]
    custom.delete_namespaced_custom_object.assert_called_once_with(
        "trainer.kubeflow.org", "v1alpha1", "cosmicman", "trainjobs", name
    )


def test_trainjob_terminated_is_deleted(tmp_path):
    """A run termination arrives as DagsterExecutionInterruptedError inside the poll loop: the TrainJob
    is deleted before it propagates."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    custom, core = mock.MagicMock(), mock.MagicMock()
    custom.get_namespaced_custom_object.side_effect = DagsterExecutionInterruptedError()
    launcher = TrainJobLauncher(image="reg/cosmicman:1")

    @dg.asset
    def trained(context: dg.AssetExecutionContext, training_launcher: TrainJobLauncher):
        return training_launcher.launch(
            context, {}, Store(str(tmp_path)), custom_api=custom, core_api=core, message_reader=_Reader(False)
        )

    try:
        result = dg.materialize([trained], resources={"training_launcher": launcher}, raise_on_error=False)
        assert not result.success
    except DagsterExecutionInterruptedError:
        pass
    custom.delete_namespaced_custom_object.assert_called_once()
