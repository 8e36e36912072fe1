"""``python -m cosmicman.cli lineage``: the lineage record of a dataset version or a model, in any environment.

The store is the environment's (``COSMICMAN_ENV``, resolved as for a run) unless ``--store`` names one. A
name the store does not hold, a store that cannot be opened or reached: user errors that say which.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError

from cosmicman.cli.environment import environment_store
from cosmicman.cli.errors import UserError
from cosmicman.core.store import Store
from cosmicman.datasets.lineage import LineageTargetNotFoundError, lineage


def open_store(store_url: str | None) -> Store:
    """The store at ``store_url`` (its credentials from the process environment), else the environment's."""
    if store_url is None:
        return environment_store()
    try:
        return Store(store_url)
    except (ValueError, ImportError) as exc:  # fsspec: an unknown protocol, or its package not installed
        raise UserError(f"cannot open the object store {store_url}: {exc}") from None


def lineage_of(target: str, store_url: str | None = None) -> dict[str, Any]:
    """What ``target`` (a dataset version, a model name, folder or key) was built from."""
    store = open_store(store_url)
    try:
        return lineage(store.url, target, store.storage_options)
    except LineageTargetNotFoundError as exc:
        raise UserError(str(exc)) from None
    # botocore raises its own errors for a store it cannot reach (s3fs translates only the service's answers)
    except (OSError, BotoCoreError) as exc:
        raise UserError(f"cannot read the object store {store.url}: {exc}") from None
