"""The resources of the environment ``COSMICMAN_ENV`` names, resolved outside a run as Dagster resolves them.

A resource field may hold a ``dg.EnvVar`` (the S3 credentials, the store URL): Dagster reads it only when it
initializes the resource for a run, and reading the field directly raises. The CLI initializes the resource
the same way (``process_config_and_initialize``), after checking that every variable it names is set, so a
missing one is reported by name.
"""

from __future__ import annotations

import os
from typing import TypeVar

import dagster as dg

from cosmicman.cli.errors import UserError
from cosmicman.core.store import Store

ENVIRONMENT_VAR = "COSMICMAN_ENV"
DEFAULT_ENVIRONMENT = "local"

Resource = TypeVar("Resource", bound=dg.ConfigurableResource)


def environment_name() -> str:
    return os.environ.get(ENVIRONMENT_VAR, DEFAULT_ENVIRONMENT)


def code_location() -> dg.Definitions:
    """The code location's definitions for ``COSMICMAN_ENV`` (an unknown one raises a setting error)."""
    from cosmicman.definitions import defs

    return defs


def unset_env_vars(resource: dg.ConfigurableResource) -> list[str]:
    """The environment variables that ``resource``'s ``dg.EnvVar`` fields name and that are not set."""
    missing = []
    for field in type(resource).model_fields:
        value = getattr(resource, field)
        if isinstance(value, dg.EnvVar) and value.get_value() is None:
            missing.append(value.env_var_name)
        elif isinstance(value, dg.ConfigurableResource):
            missing += unset_env_vars(value)
    return missing


def resolved(resource: Resource, role: str) -> Resource:
    """``resource`` with its ``dg.EnvVar`` fields read from the environment; ``role`` names it in errors."""
    missing = unset_env_vars(resource)
    if missing:
        names = ", ".join(missing)
        raise UserError(f"{ENVIRONMENT_VAR}={environment_name()}: the {role} needs {names}, not set in the environment")
    return resource.process_config_and_initialize()


def environment_store() -> Store:
    """The object store of the environment's code location."""
    from cosmicman.resources.storage import ObjectStoreResource

    resource = (code_location().resources or {}).get("object_store")
    if not isinstance(resource, ObjectStoreResource):
        raise TypeError(f"the {environment_name()} environment's object_store is {type(resource).__name__}")
    return resolved(resource, "object store").store()
