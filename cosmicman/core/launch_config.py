"""A launch's resolved config, passed by reference.

The trainer's and the evaluation's configs travel to their process through Dagster Pipes' extras, and
Pipes hands its bootstrap params to a pod as one environment variable. A training config names every
shard of its dataset version, so inline it outgrows Linux's 128 KiB limit on one such string (about 2.3M
images at 64 a shard) and the pod cannot start. So the launcher stores the config as one JSON object on
the object store, keyed by the sha256 of its canonical bytes (a retry of the same launch finds it there),
and the extras carry only its URL and that sha256: a fixed size whatever the dataset's size. The process
fetches it and refuses bytes that do not hash to the sha256 it was given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import fsspec

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.keys import launch_config_key
from cosmicman.core.store import Store

CONFIG_URL_KEY = "config_url"
CONFIG_SHA256_KEY = "config_sha256"


class LaunchConfigError(ValueError):
    """The launch's config cannot be used: no reference, nothing at its URL, or bytes that were altered."""


def canonical_json(config: Mapping[str, Any]) -> bytes:
    """One byte string per config: sorted keys, no whitespace, UTF-8."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def put_launch_config(store: Store, config: Mapping[str, Any]) -> dict[str, str]:
    """Stores ``config`` (once per content) and returns the Pipes extras that reference it."""
    data = canonical_json(config)
    sha = sha256_hex(data)
    key = launch_config_key(sha)
    # a stored copy is reused only when it still hashes right: a damaged one is written again
    if not store.exists(key) or sha256_hex(store.read_bytes(key)) != sha:
        store.write_bytes(key, data)
    return {CONFIG_URL_KEY: store.uri(key), CONFIG_SHA256_KEY: sha}


def fetch_launch_config(extras: Mapping[str, Any]) -> dict[str, Any]:
    """The config the extras reference, read with the process's own credentials (as the shards are) and
    checked against its sha256. Raises :class:`LaunchConfigError` with a one-line message naming the URL."""
    url, sha = extras.get(CONFIG_URL_KEY), extras.get(CONFIG_SHA256_KEY)
    if not url or not sha:
        raise LaunchConfigError(f"no launch config: the Pipes extras name no {CONFIG_URL_KEY} and {CONFIG_SHA256_KEY}")
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise LaunchConfigError(f"launch config {url} is missing") from None
    actual = sha256_hex(data)
    if actual != sha:
        raise LaunchConfigError(f"launch config {url} was altered: its sha256 is {actual}, the launcher wrote {sha}")
    return json.loads(data)
