"""Daring training, launched as its own process; it reports back through Dagster Pipes."""

import dataclasses
import hashlib
import json

import dagster as dg

from cosmicman.assets.metadata import table, tidy_metadata
from cosmicman.assets.plots import line_chart
from cosmicman.core.keys import LATENT_CACHE_PREFIX, LATEST_DATASET_KEY, model_prefix, training_run_key
from cosmicman.core.store import Store
from cosmicman.datasets.layout import shard_urls
from cosmicman.datasets.lineage import model_lineage
from cosmicman.model.run_record import summary
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.launchers import TrainingLauncher
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource

# one partition per ablation variant (cosmicman.model.train.variants): same data, seed and step budget
training_variants = dg.StaticPartitionsDefinition(list(VARIANTS))


def model_name(data_version: str, config: TrainConfig) -> str:
    """Models are keyed by their dataset version and training config: same inputs, same model folder."""
    # locations are not identity: where the output and the latent cache live does not change the model
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("shards", "output_url", "cache_url")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{data_version}-{digest}"


def _lineage(store, key: str) -> dg.MetadataValue:
    """What the model was built from (sourcing batches, filter configs, label rounds, code versions)."""
    return dg.MetadataValue.json(model_lineage(store.uri(key), store.storage_options))


@dg.asset(
    deps=["cosmicman_hq"],
    partitions_def=training_variants,
    kinds={"pytorch", "diffusers"},
    group_name="training",
    code_version="1",
    # no automation condition of its own: training_job's condition launches it (cosmicman.jobs.training)
)
def daring_unet(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    training: TrainingResource,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    """The whole UNet fine-tuned on the latest CosmicMan-HQ version with this partition's variant (noise
    loss only, or + HOLA, with SiLU or another activation), saved in diffusers format. The trainer runs as
    ``python -m cosmicman.model.train`` in its own process."""
    store = object_store.store()
    if not store.exists(LATEST_DATASET_KEY):
        raise dg.Failure("no CosmicMan-HQ version yet: materialize cosmicman_hq first")
    version = store.read_json(LATEST_DATASET_KEY)["version"]
    shards = shard_urls(store.url, version, store.storage_options)
    variant = context.partition_key
    config = training.launch_config(shards, store.uri(LATENT_CACHE_PREFIX), VARIANTS[variant])
    name = model_name(version, config)
    key = model_prefix(name)
    config.output_url = store.uri(key)
    if store.exists(training_run_key(name)):
        record = store.read_json(training_run_key(name))
        context.log.info(f"{key} already trained from {version} with this config: reusing it")
        reported = {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in summary(record).items()}
        return dg.MaterializeResult(
            metadata=tidy_metadata(
                {
                    **reported,
                    **_run_charts(store, name),
                    "dataset_version": version,
                    "variant": variant,
                    "reused": True,
                    "lineage": _lineage(store, key),
                }
            ),
            data_version=dg.DataVersion(name),
        )
    result = training_launcher.launch(context, dataclasses.asdict(config))
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **(result.metadata or {}),
                **_run_charts(store, name),
                "dataset_version": version,
                "variant": variant,
                "reused": False,
                "lineage": _lineage(store, key),
            }
        ),
        data_version=dg.DataVersion(name),
    )


def _run_charts(store: Store, name: str) -> dict[str, dg.MetadataValue]:
    """From the run's ``training_run.json``: its loss curve (total, noise and HOLA terms per step) and the
    share of each caption group's cross-attention inside its mask, against chance."""
    key = training_run_key(name)
    if not store.exists(key):
        return {"loss_curve": dg.MetadataValue.text(f"no loss curve: the trainer published no {key}")}
    record = store.read_json(key)
    history = record["loss_history"]
    out: dict[str, dg.MetadataValue] = {
        "loss_curve": line_chart(
            [float(h["step"]) for h in history],
            {term: [float(h[term]) for h in history] for term in ("loss", "noise", "hola")},
            title="training loss",
            x_label="step",
        )
    }
    alignment = record["metrics"].get("attention_alignment")
    if alignment:
        out["attention_in_mask_by_group"] = table(
            [
                {"group": g, "share_in_mask": share, "chance": alignment["chance_groups"].get(g)}
                for g, share in alignment["groups"].items()
            ],
            columns=["group", "share_in_mask", "chance"],
        )
    return out
