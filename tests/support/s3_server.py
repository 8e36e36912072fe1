"""A real S3 endpoint for tests: moto's server on a loopback port, spoken to over HTTP like any S3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.servers import free_port

ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"


@dataclass(frozen=True)
class S3Endpoint:
    url: str

    def storage_options(self) -> dict:
        """What ``Store`` / fsspec need to reach this endpoint (what ``ObjectStoreResource`` builds)."""
        return {"client_kwargs": {"endpoint_url": self.url}, "key": ACCESS_KEY, "secret": SECRET_KEY}

    def env(self, store_url: str) -> dict[str, str]:
        """The variables the ``s3`` and ``k8s`` environments read their object store from."""
        return {
            "COSMICMAN_STORE_URL": store_url,
            "COSMICMAN_S3_ENDPOINT": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }


@contextmanager
def moto_s3(*buckets: str) -> Iterator[S3Endpoint]:
    """moto's S3 server in a thread of this process, with ``buckets`` created; stopped on exit."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = S3Endpoint(f"http://127.0.0.1:{port}")
        options = endpoint.storage_options()
        fs = s3fs.S3FileSystem(key=options["key"], secret=options["secret"], client_kwargs=options["client_kwargs"])
        for bucket in buckets:
            fs.mkdir(bucket)
        yield endpoint
    finally:
        server.stop()
