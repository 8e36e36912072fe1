"""Launch by reference: the config is stored once by content, the extras carry its URL and sha256, and the
trainer / evaluation refuse a config that is missing or was altered, in one line naming its URL."""

import hashlib
import json
import os

import pytest

from cosmicman.core.keys import launch_config_key
from cosmicman.core.launch_config import (
    CONFIG_SHA256_KEY,
    CONFIG_URL_KEY,
    LaunchConfigError,
    canonical_json,
    fetch_launch_config,
    put_launch_config,
)
from cosmicman.core.store import Store

SHARDS = [f"s3://bucket/datasets/v0001/shard-{i:06d}.tar" for i in range(3)]
CONFIG = {"steps": 3, "shards": SHARDS, "lr": 1e-5}


def stored_path(store: Store, extras: dict) -> str:
    return store.path(launch_config_key(extras[CONFIG_SHA256_KEY]))


def test_the_extras_reference_the_config_stored_by_its_content(tmp_path):
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    assert set(extras) == {CONFIG_URL_KEY, CONFIG_SHA256_KEY}
    assert extras[CONFIG_SHA256_KEY] == hashlib.sha256(canonical_json(CONFIG)).hexdigest()
    assert extras[CONFIG_URL_KEY] == store.uri(launch_config_key(extras[CONFIG_SHA256_KEY]))
    assert fetch_launch_config(extras) == CONFIG
    # the same config, its keys in another order: the same object
    assert put_launch_config(store, dict(reversed(list(CONFIG.items())))) == extras
    assert put_launch_config(store, {**CONFIG, "steps": 4}) != extras


def test_a_retry_reuses_the_stored_config(tmp_path):
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    written = os.stat(stored_path(store, extras))
    assert put_launch_config(store, CONFIG) == extras
    again = os.stat(stored_path(store, extras))
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not written again


def test_a_damaged_stored_config_is_written_again_by_the_next_launch(tmp_path):
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    with open(stored_path(store, extras), "wb") as f:
        f.write(b"{}")
    assert put_launch_config(store, CONFIG) == extras
    assert fetch_launch_config(extras) == CONFIG


def altered(tmp_path) -> dict:
    """The extras of a stored config whose bytes were changed afterwards (one shard URL swapped)."""
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    tampered = {**CONFIG, "shards": [*SHARDS[:2], "s3://elsewhere/shard-000000.tar"]}
    with open(stored_path(store, extras), "wb") as f:
        f.write(canonical_json(tampered))
    return extras


def test_an_altered_config_is_refused_naming_its_url(tmp_path):
    extras = altered(tmp_path)
    with pytest.raises(LaunchConfigError) as err:
        fetch_launch_config(extras)
    assert f"launch config {extras[CONFIG_URL_KEY]} was altered" in str(err.value)
    assert "\n" not in str(err.value)


def test_one_changed_byte_is_refused(tmp_path):
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    data = bytearray(canonical_json(CONFIG))
    data[data.index(b"\"steps\":3") + len(b"\"steps\":")] = ord("4")  # steps 3 -> 4: still valid JSON
    with open(stored_path(store, extras), "wb") as f:
        f.write(bytes(data))
    assert json.loads(bytes(data))["steps"] == 4
    with pytest.raises(LaunchConfigError, match="was altered"):
        fetch_launch_config(extras)


def test_a_missing_config_is_refused_naming_its_url(tmp_path):
    store = Store(str(tmp_path))
    extras = put_launch_config(store, CONFIG)
    os.remove(stored_path(store, extras))
    with pytest.raises(LaunchConfigError, match=f"^launch config {extras[CONFIG_URL_KEY]} is missing$"):
        fetch_launch_config(extras)


@pytest.mark.parametrize("extras", [{}, {CONFIG_URL_KEY: "s3://b/c.json"}, {"config": CONFIG}])
def test_extras_without_a_reference_are_refused(extras):
    with pytest.raises(LaunchConfigError, match="name no config_url and config_sha256"):
        fetch_launch_config(extras)


@pytest.mark.parametrize("entry", ["cosmicman.model.train.__main__", "cosmicman.evaluation.__main__"])
def test_the_entry_points_end_in_one_line_naming_the_url(entry, tmp_path):
    """What the trainer and the evaluation do with an altered config: exit, one line on stderr."""
    import importlib

    extras = altered(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(entry)._config_from(None, extras)
    message = str(exit_.value.code)
    assert message.startswith(f"error: launch config {extras[CONFIG_URL_KEY]} was altered") and "\n" not in message
