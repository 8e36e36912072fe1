"""The environment variables a deployed environment (``s3``, ``k8s``) is built from.

Building an environment reads every variable through one :class:`EnvironmentVariables`, which collects the
required ones that are missing instead of failing at the first: :meth:`EnvironmentVariables.check` then
raises one message naming them all, so a deployment is fixed in one edit, not one variable per restart.

A secret (API keys, storage credentials, the Label Studio key) reaches a resource only as ``dg.EnvVar``:
Dagster reads its value when it initializes the resource for a run, and shows the variable's name, never
its value, in the UI and the stored run configuration.
"""

from __future__ import annotations

import os

import dagster as dg


class EnvironmentVariables:
    """Reads the variables of the environment ``environment``, collecting the required ones not set."""

    def __init__(self, environment: str) -> None:
        self.environment = environment
        self.missing: list[str] = []

    def required(self, name: str) -> str:
        """The value of ``name``; unset or blank, it is recorded as missing (and "" returned)."""
        value = os.environ.get(name, "").strip()
        if not value and name not in self.missing:
            self.missing.append(name)
        return value

    def secret(self, name: str) -> dg.EnvVar:
        """``name`` as a ``dg.EnvVar`` (its value is read at run time, never shown); required."""
        self.required(name)
        return dg.EnvVar(name)

    def optional_secret(self, name: str) -> dg.EnvVar | None:
        """``name`` as a ``dg.EnvVar`` when it is set, else None (the resource then says what it does instead)."""
        return dg.EnvVar(name) if os.environ.get(name, "").strip() else None

    def optional(self, name: str, default: str | None = None) -> str | None:
        value = os.environ.get(name, "").strip()
        return value or default

    def positive_int(self, name: str, default: int) -> int:
        raw = os.environ.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{name}={raw!r} is not a positive whole number")
        return int(raw)

    def check(self) -> None:
        """Raise one error naming every required variable that is not set."""
        if self.missing:
            raise ValueError(
                f"COSMICMAN_ENV={self.environment}: set {', '.join(self.missing)} "
                "(required by this environment, not set; see README, Environments)"
            )
