"""Daring training, launched as its own process; it reports back through Dagster Pipes."""

import hashlib
import json

import dagster as dg

from cosmicman.assets.datasets import LATEST_KEY
from cosmicman.data.dataset_version import shard_urls
from cosmicman.resources.launchers import TrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource

RUN_FILE = "training_run.json"


def model_key(data_version: str, config: dict) -> str:
    """Models are keyed by their dataset version and training config: same inputs, same model folder."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in ("shards", "output_url")},
                                       sort_keys=True).encode()).hexdigest()[:10]
    return f"models/daring_unet/{data_version}-{digest}"


@dg.asset(deps=["cosmicman_hq"], kinds={"pytorch", "diffusers"}, group_name="training", code_version="1")
def daring_unet(context: dg.AssetExecutionContext, object_store: ObjectStoreResource, training: TrainingResource,
                training_launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The whole UNet fine-tuned with noise loss + HOLA on the latest CosmicMan-HQ version, saved in
    diffusers format. The trainer runs as ``python -m cosmicman.model.train`` in its own process."""
    store = object_store.store()
    if not store.exists(LATEST_KEY):
        raise dg.Failure("no CosmicMan-HQ version yet: materialize cosmicman_hq first")
    version = store.read_json(LATEST_KEY)["version"]
    shards = shard_urls(store.url, version, store.storage_options)
    config = training.train_config(shards, output_url="")
    key = model_key(version, config)
    config["output_url"] = store.uri(key)
    if store.exists(f"{key}/{RUN_FILE}"):
        record = store.read_json(f"{key}/{RUN_FILE}")
        context.log.info(f"{key} already trained from {version} with this config: reusing it")
        return dg.MaterializeResult(metadata={"output_url": config["output_url"], "dataset_version": version,
                                              "reused": True, "loss_first": record["metrics"]["loss_first"],
                                              "loss_last": record["metrics"]["loss_last"]},
                                    data_version=dg.DataVersion(key.rsplit("/", 1)[1]))
    result = training_launcher.launch(context, config)
    return dg.MaterializeResult(metadata={**(result.metadata or {}), "dataset_version": version, "reused": False},
                                data_version=dg.DataVersion(key.rsplit("/", 1)[1]))
