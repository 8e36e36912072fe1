"""The automation's settings from the process environment, and the training partitions they narrow."""

import dagster as dg
import pytest

from cosmicman.environments.settings import (
    build_workers,
    new_images_per_version,
    parse_variants,
    sensor_interval_s,
    training_variants,
)
from cosmicman.model.train.variants import VARIANTS


def test_variants_keep_the_ablation_order_and_refuse_unknown_names(monkeypatch):
    assert parse_variants(" hola-mp_silu,baseline ") == ["baseline", "hola-mp_silu"]
    with pytest.raises(ValueError, match=r"unknown training variants \['hola-tanh'\]"):
        parse_variants("baseline,hola-tanh")
    with pytest.raises(ValueError, match="unknown training variants"):
        parse_variants(" , ")
    monkeypatch.delenv("COSMICMAN_VARIANTS", raising=False)
    assert training_variants() == list(VARIANTS)
    monkeypatch.setenv("COSMICMAN_VARIANTS", "hola,baseline")
    assert training_variants() == ["baseline", "hola"]


@pytest.mark.parametrize(("env", "interval", "images"), [("local", 5, 32), ("s3", 30, 1000), ("k8s", 30, 1000)])
def test_defaults_follow_the_environment(monkeypatch, env, interval, images):
    monkeypatch.setenv("COSMICMAN_ENV", env)
    monkeypatch.delenv("COSMICMAN_SENSOR_INTERVAL_S", raising=False)
    monkeypatch.delenv("COSMICMAN_NEW_IMAGES_PER_VERSION", raising=False)
    assert (sensor_interval_s(), new_images_per_version()) == (interval, images)


def test_a_setting_is_a_positive_whole_number(monkeypatch):
    monkeypatch.setenv("COSMICMAN_SENSOR_INTERVAL_S", "1")
    assert sensor_interval_s() == 1
    for bad in ("0", "-5", "2.5", "soon"):
        monkeypatch.setenv("COSMICMAN_NEW_IMAGES_PER_VERSION", bad)
        with pytest.raises(ValueError, match="COSMICMAN_NEW_IMAGES_PER_VERSION"):
            new_images_per_version()


def test_a_build_prepares_on_one_worker_a_core_unless_told(monkeypatch):
    import os

    monkeypatch.delenv("COSMICMAN_BUILD_WORKERS", raising=False)
    assert build_workers() == os.cpu_count()
    monkeypatch.setenv("COSMICMAN_BUILD_WORKERS", "1")
    assert build_workers() == 1
    monkeypatch.setenv("COSMICMAN_BUILD_WORKERS", "0")
    with pytest.raises(ValueError, match="COSMICMAN_BUILD_WORKERS='0' is not a positive whole number"):
        build_workers()


def test_the_code_location_trains_the_variants_it_is_given(tmp_path):
    from cosmicman.definitions import build_definitions
    from cosmicman.environments.local import local_execution, local_resources

    resources = local_resources(store_url=str(tmp_path / "store"), folder_url=str(tmp_path / "folder"))
    graph = build_definitions(resources, variants=["baseline", "hola"], **local_execution()).resolve_asset_graph()
    for asset in ("daring_unet", "evaluation"):
        assert graph.get(dg.AssetKey(asset)).partitions_def.get_partition_keys() == ["baseline", "hola"]
    assert graph.get(dg.AssetKey("ablation_table")).partitions_def is None
    everything = build_definitions(resources, **local_execution()).resolve_asset_graph()
    assert everything.get(dg.AssetKey("daring_unet")).partitions_def.get_partition_keys() == list(VARIANTS)
