"""Where op outputs wait between steps when every step runs in its own pod (the Kubernetes executor)."""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg
from upath import UPath

from cosmicman.resources.storage import ObjectStoreResource


class PickledUPathIOManager(dg.UPathIOManager):
    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        with path.open("wb") as f:
            pickle.dump(obj, f)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        with path.open("rb") as f:
            return pickle.load(f)


class ObjectStoreStepIOManager(dg.ConfigurableIOManagerFactory):
    """Op outputs pickled under the object store's ``dagster/step-outputs/``.

    Only small values pass between ops (shard descriptions, store keys; images and tables stay in the
    store), but with one pod per step they must outlive the pod that wrote them: a pod's disk does not.
    """

    object_store: ObjectStoreResource

    def create_io_manager(self, context: dg.InitResourceContext) -> PickledUPathIOManager:
        store = self.object_store.store()
        return PickledUPathIOManager(UPath(store.uri("dagster/step-outputs"), **store.storage_options))
