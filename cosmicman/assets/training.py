"""Daring training, launched as its own process; it reports back through Dagster Pipes."""

import hashlib
import json

import dagster as dg

from cosmicman.assets.datasets import LATEST_KEY
from cosmicman.datasets.lineage import model_lineage
from cosmicman.datasets.version import shard_urls
from cosmicman.model.run_record import summary
from cosmicman.resources.launchers import TrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource

RUN_FILE = "training_run.json"

# Variants share the dataset version, seed and step budget; each differs from the baseline config only
# here, so a comparison between partitions is a fair ablation (Daring's HOLA, Prime's activations).
VARIANTS: dict[str, dict] = {
    "baseline": {"beta": 0.0},
    "hola": {},
    "hola-gelu": {"act_fn": "gelu"},
    "hola-mish": {"act_fn": "mish"},
    "hola-relu": {"act_fn": "relu"},
    "hola-leaky_relu": {"act_fn": "leaky_relu"},
    "hola-mp_silu": {"act_fn": "mp_silu"},
}
training_variants = dg.StaticPartitionsDefinition(list(VARIANTS))


def model_key(data_version: str, config: dict) -> str:
    """Models are keyed by their dataset version and training config: same inputs, same model folder."""
    # locations are not identity: where the output and the latent cache live does not change the model
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items()
                                        if k not in ("shards", "output_url", "cache_url")},
                                       sort_keys=True).encode()).hexdigest()[:10]
    return f"models/daring_unet/{data_version}-{digest}"


def _lineage(store, key: str) -> dg.MetadataValue:
    """What the model was built from (sourcing batches, filter configs, label rounds, code versions)."""
    return dg.MetadataValue.json(model_lineage(store.uri(key), store.storage_options))


@dg.asset(deps=["cosmicman_hq"], partitions_def=training_variants, kinds={"pytorch", "diffusers"},
          group_name="training", code_version="1")
def daring_unet(context: dg.AssetExecutionContext, object_store: ObjectStoreResource, training: TrainingResource,
                training_launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The whole UNet fine-tuned on the latest CosmicMan-HQ version with this partition's variant (noise
    loss only, or + HOLA, with SiLU or another activation), saved in diffusers format. The trainer runs as
    ``python -m cosmicman.model.train`` in its own process."""
    store = object_store.store()
    if not store.exists(LATEST_KEY):
        raise dg.Failure("no CosmicMan-HQ version yet: materialize cosmicman_hq first")
    version = store.read_json(LATEST_KEY)["version"]
    shards = shard_urls(store.url, version, store.storage_options)
    variant = context.partition_key
    config = {**training.train_config(shards, output_url="", cache_url=store.uri("cache/latents")),
              **VARIANTS[variant]}
    key = model_key(version, config)
    config["output_url"] = store.uri(key)
    if store.exists(f"{key}/{RUN_FILE}"):
        record = store.read_json(f"{key}/{RUN_FILE}")
        context.log.info(f"{key} already trained from {version} with this config: reusing it")
        reported = {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in summary(record).items()}
        return dg.MaterializeResult(metadata={**reported, "dataset_version": version, "variant": variant,
                                              "reused": True, "lineage": _lineage(store, key)},
                                    data_version=dg.DataVersion(key.rsplit("/", 1)[1]))
    result = training_launcher.launch(context, config)
    return dg.MaterializeResult(metadata={**(result.metadata or {}), "dataset_version": version, "variant": variant,
                                          "reused": False, "lineage": _lineage(store, key)},
                                data_version=dg.DataVersion(key.rsplit("/", 1)[1]))
