"""The security settings every pod we create carries: the ``restricted`` Pod Security Standard (non-root,
no privilege escalation, all capabilities dropped, the runtime's default seccomp profile) plus a read-only
root filesystem, with in-memory or node-local ``emptyDir`` volumes where the code writes.

Keys are the kubernetes Python client's (snake_case), as ``dagster_k8s`` builders take them; the YAML in
``k8s/`` spells the same settings in camelCase, and ``tests/k8s`` checks both against one list.
"""

from __future__ import annotations

from typing import Any

# the image's user (Dockerfile: USER 10001); numeric so the kubelet can check runAsNonRoot without /etc/passwd
RUN_AS_USER = 10001
HOME = "/home/cosmicman"

# where code writes under a read-only root: temporary files, and the caches of huggingface / torch / pip
# (the image points HF_HOME, TORCH_HOME and XDG_CACHE_HOME under HOME/.cache)
WRITABLE_DIRS: dict[str, str] = {"tmp": "/tmp", "cache": f"{HOME}/.cache"}
WRITABLE_DIR_SIZE = "20Gi"


def pod_security_context() -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": RUN_AS_USER,
        "run_as_group": RUN_AS_USER,
        "fs_group": RUN_AS_USER,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": RUN_AS_USER,
        "run_as_group": RUN_AS_USER,
        "allow_privilege_escalation": False,
        "read_only_root_filesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def writable_volumes() -> list[dict[str, Any]]:
    return [{"name": name, "empty_dir": {"size_limit": WRITABLE_DIR_SIZE}} for name in WRITABLE_DIRS]


def writable_mounts() -> list[dict[str, Any]]:
    return [{"name": name, "mount_path": path} for name, path in WRITABLE_DIRS.items()]
