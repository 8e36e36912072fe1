from __future__ import annotations

import dagster as dg

from cosmicman.core.store import Store


class ObjectStoreResource(dg.ConfigurableResource):
    """Where every blob, table, dataset version and model lives: a local folder, memory:// or s3://."""

    url: str = ".cosmicman/store"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def store(self) -> Store:
        options: dict = {}
        if self.url.startswith("s3://"):
            if self.endpoint_url:
                options["client_kwargs"] = {"endpoint_url": self.endpoint_url}
            if self.access_key_id:
                options.update(key=self.access_key_id, secret=self.secret_access_key)
        return Store(self.url, **options)
