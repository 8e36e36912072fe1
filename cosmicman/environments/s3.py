"""The embedded flywheel on an S3-compatible object store; credentials only through environment variables."""

from __future__ import annotations

import os

import dagster as dg

from cosmicman.environments.local import local_resources
from cosmicman.resources.storage import ObjectStoreResource


def s3_resources() -> dict:
    """The same flywheel on an S3-compatible object store; credentials only through environment variables."""
    return {
        **local_resources(),
        "object_store": ObjectStoreResource(
            url=dg.EnvVar("COSMICMAN_STORE_URL"),
            endpoint_url=os.environ.get("COSMICMAN_S3_ENDPOINT"),
            access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
            secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
        ),
    }
