"""Every pod we or our launchers create, checked without a cluster: the manifests in k8s/, the pods
K8sJobTrainingLauncher and K8sPodEvaluationLauncher submit, and the run and step Jobs dagster_k8s builds from
k8s/values.yaml (with the op tags of our GPU steps) validate against the Kubernetes schema (kubernetes-validate,
strict), and each pod carries the restricted security settings, requests and limits. Also: the namespace's
Pod Security labels, the RBAC verbs, and the Helm values' own pods."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate as kv
import pytest
import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from cosmicman.assets.evaluation import evaluation
from cosmicman.assets.training import daring_unet
from cosmicman.environments.k8s import k8s_execution
from cosmicman.resources.k8s_launchers import K8sJobTrainingLauncher, K8sPodEvaluationLauncher
from cosmicman.resources.pod_security import RUN_AS_USER, WRITABLE_DIRS

K8S = Path(__file__).resolve().parents[2] / "k8s"
K8S_VERSION = "1.33"
IMAGE = "registry.example.com/cosmicman:0.1.0-cuda"
PIPES_ENV = {"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"}
# k8s/values.yaml's runK8sConfig keys, as the chart renders them into the instance's run_k8s_config
RUN_K8S_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "jobSpecConfig": "job_spec_config",
}
# each filter shard's step and each batch's annotation step ask for a GPU through their op tags (dagster
# serializes a dict tag to JSON)
FILTER_STEP_TAGS = {k: json.dumps(v) for k, v in k8s_execution()["filter_step_tags"].items()}
ANNOTATION_STEP_TAGS = {k: json.dumps(v) for k, v in k8s_execution()["annotation_step_tags"].items()}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _values() -> dict:
    return yaml.safe_load((K8S / "values.yaml").read_text())


def _manifests() -> dict[str, dict]:
    return {
        f"{p.name}:{d['kind']}:{d['metadata']['name']}": d
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "values.yaml"
        for d in _docs(p)
    }


def _serialized(obj: Any) -> dict:
    return kubernetes.client.ApiClient().sanitize_for_serialization(obj)


# --- the pods ----------------------------------------------------------------------------------------------


def _launcher_pods() -> dict[str, dict]:
    training = K8sJobTrainingLauncher(image=IMAGE, gpus=8, env={"NCCL_DEBUG": "WARN"})
    scoring = K8sPodEvaluationLauncher(image=IMAGE)
    return {
        "K8sJobTrainingLauncher": {"apiVersion": "v1", "kind": "Pod", **_serialized(training.pod_body(PIPES_ENV))},
        "K8sPodEvaluationLauncher": {"apiVersion": "v1", "kind": "Pod", **_serialized(scoring.pod_body(PIPES_ENV))},
    }


def _dagster_job(component: str, op_tags: dict[str, Any] | None) -> dict:
    """The Job dagster_k8s builds for a run (``run_worker``) or a step (``step_worker``): the run launcher's
    settings from values.yaml, then the step's ``dagster-k8s/config`` tag merged over them, as the
    k8s_job_executor does (dagster_k8s.executor.K8sStepHandler._get_container_context)."""
    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    run_config = UserDefinedDagsterK8sConfig.from_dict(
        {RUN_K8S_KEYS[k]: v for k, v in launcher["runK8sConfig"].items()}
    )
    context = K8sContainerContext(run_k8s_config=run_config)
    if op_tags is not None:
        context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job_config = DagsterK8sJobConfig(
        job_image=IMAGE,
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=launcher["imagePullPolicy"],
        service_account_name=_values()["global"]["serviceAccountName"],
        instance_config_map="dagster-instance",
        postgres_password_secret=_values()["global"]["postgresqlSecretName"],
        env_secrets=[s["name"] for s in launcher["envSecrets"]],
    )
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-{component}-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config,
        component=component,
        labels={"dagster/job": "training_job"},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": "training_job"}],
    )
    return _serialized(job)


def _dagster_jobs() -> dict[str, dict]:
    return {
        "run pod": _dagster_job("run_worker", None),
        "step pod: daring_unet": _dagster_job("step_worker", dict(daring_unet.op.tags)),
        "step pod: evaluation": _dagster_job("step_worker", dict(evaluation.op.tags)),
        "step pod: filter_shard": _dagster_job("step_worker", FILTER_STEP_TAGS),
        "step pod: annotations": _dagster_job("step_worker", ANNOTATION_STEP_TAGS),
    }


def _pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


MANIFESTS = _manifests()
CORE = {k: d for k, d in MANIFESTS.items() if not d["apiVersion"].startswith("trainer.kubeflow.org/")}
OBJECTS = {**CORE, **_launcher_pods(), **_dagster_jobs()}
PODS = {k: d for k, d in OBJECTS.items() if d["kind"] in ("Pod", "Job")}


def restricted_violations(spec: dict) -> list[str]:
    """What a pod spec lacks of the restricted Pod Security Standard, a read-only root with emptyDir where the
    code writes, and bounded resources; [] when it has everything."""
    out = []
    pod_sc = spec.get("securityContext") or {}
    if pod_sc.get("runAsNonRoot") is not True:
        out.append("pod runAsNonRoot")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        out.append("pod seccompProfile")
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for c in spec["containers"] + spec.get("initContainers", []):
        sc, name = c.get("securityContext") or {}, c["name"]
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if not isinstance(user, int) or user == 0:
            out.append(f"{name}: numeric non-root runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            out.append(f"{name}: capabilities drop ALL")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        mounted = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for path in WRITABLE_DIRS.values():
            if mounted.get(path) not in empty_dirs:
                out.append(f"{name}: writable emptyDir at {path}")
        resources = c.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(kind) or {})
            if missing:
                out.append(f"{name}: {kind} {sorted(missing)}")
    return out


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_validates_strict(name):
    assert kv.validate(OBJECTS[name], K8S_VERSION, strict=True) == K8S_VERSION  # by that release's own schema


def test_strict_validation_rejects_an_unknown_field():
    bad = copy.deepcopy(OBJECTS["K8sJobTrainingLauncher"])
    bad["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_every_kind_of_pod_is_checked():
    assert {"K8sJobTrainingLauncher", "K8sPodEvaluationLauncher", "run pod", "step pod: daring_unet"} <= set(PODS)
    assert any(k.startswith("training-job.yaml:Job") for k in PODS)


@pytest.mark.parametrize("name", sorted(PODS))
def test_pod_is_restricted_read_only_and_bounded(name):
    spec = _pod_spec(PODS[name])
    assert restricted_violations(spec) == []
    users = {c.get("securityContext", {}).get("runAsUser") for c in spec["containers"]}
    assert users == {RUN_AS_USER}


@pytest.mark.parametrize(
    "breach,found",
    [
        (lambda s: s["securityContext"].pop("runAsNonRoot"), "pod runAsNonRoot"),
        (lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}), "pod seccompProfile"),
        (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "numeric non-root runAsUser"),
        (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilege"),
        (lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
        (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
        (lambda s: s["containers"][0]["volumeMounts"].pop(), "writable emptyDir"),
        (lambda s: s["containers"][0]["resources"]["limits"].pop("cpu"), "limits ['cpu']"),
    ],
)
def test_a_missing_setting_is_caught(breach, found):
    spec = copy.deepcopy(_pod_spec(OBJECTS["K8sJobTrainingLauncher"]))
    breach(spec)
    assert any(found in v for v in restricted_violations(spec))


def test_gpu_pods_ask_for_their_gpus_with_equal_requests_and_limits():
    train = _pod_spec(OBJECTS["K8sJobTrainingLauncher"])["containers"][0]["resources"]
    assert train["limits"] == train["requests"] == {"nvidia.com/gpu": "8", "cpu": "8", "memory": "64Gi"}
    scoring = _pod_spec(OBJECTS["K8sPodEvaluationLauncher"])["containers"][0]["resources"]
    assert scoring["limits"]["nvidia.com/gpu"] == "1"
    shard = _pod_spec(OBJECTS["step pod: filter_shard"])["containers"][0]["resources"]
    assert shard["limits"]["nvidia.com/gpu"] == "1"
    annotation = _pod_spec(OBJECTS["step pod: annotations"])["containers"][0]["resources"]
    assert annotation["limits"]["nvidia.com/gpu"] == "1"
    # the launching step holds no GPU, and its small pod replaces the run pod's resources
    step = _pod_spec(OBJECTS["step pod: daring_unet"])["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in step["limits"] and step["limits"] == step["requests"] == {
        "cpu": "1",
        "memory": "2Gi",
    }


# --- namespace, RBAC, Helm values ---------------------------------------------------------------------------


def test_namespace_enforces_the_restricted_standard():
    (ns,) = [d for d in CORE.values() if d["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_rbac_grants_only_what_the_launchers_call():
    (role,) = [d for d in CORE.values() if d["kind"] == "Role"]
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "delete"},
        ("batch", "jobs/status"): {"get"},
        ("", "pods"): {"create", "get", "list", "delete"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"list"},
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "delete"},
    }
    (binding,) = [d for d in CORE.values() if d["kind"] == "RoleBinding"]
    (account,) = [d for d in CORE.values() if d["kind"] == "ServiceAccount"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "cosmicman"}
    ]
    values = _values()
    assert values["rbacEnabled"] is False and values["serviceAccount"]["create"] is False
    assert values["global"]["serviceAccountName"] == account["metadata"]["name"]


def _chart_pods(values: dict) -> dict[str, dict]:
    """The pods the chart itself runs, as pod specs built from their values (the chart copies these keys)."""
    deployment = values["dagster-user-deployments"]["deployments"][0]
    out = {}
    for name, v in (
        ("webserver", values["dagsterWebserver"]),
        ("daemon", values["dagsterDaemon"]),
        ("user code", deployment),
    ):
        out[name] = {
            "securityContext": v["podSecurityContext"],
            "volumes": v["volumes"],
            "containers": [
                {
                    "name": name.replace(" ", "-"),
                    "securityContext": v["securityContext"],
                    "resources": v["resources"],
                    "volumeMounts": v["volumeMounts"],
                }
            ],
        }
    return out


def test_helm_chart_pods_are_restricted_and_images_pinned():
    values = _values()
    for name, spec in _chart_pods(values).items():
        assert restricted_violations(spec) == [], name
        kv.validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {**spec, "containers": [{**c, "image": "x"} for c in spec["containers"]]},
            },
            K8S_VERSION,
            strict=True,
        )
    dagster = {values["dagsterWebserver"]["image"]["tag"], values["dagsterDaemon"]["image"]["tag"]}
    from dagster.version import __version__

    assert dagster == {__version__}
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["image"]["tag"] == IMAGE.rsplit(":", 1)[1]
    assert {"name": "COSMICMAN_TRAIN_IMAGE", "value": IMAGE} in deployment["env"]


def test_helm_values_pools_and_postgres():
    values = _values()
    assert values["concurrency"] == {"enabled": True, "pools": {"defaultLimit": 1, "granularity": "op"}}
    pg = values["postgresql"]
    assert pg["enabled"] is False and "postgresqlPassword" not in pg and values["global"]["postgresqlSecretName"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
