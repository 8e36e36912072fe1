"""Daring training, launched as its own process; it reports back through Dagster Pipes."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cosmicman.assets.ablation_rows import group_shares_over_seeds, over_seeds
from cosmicman.assets.gpu_pools import TRAINING_POOL, launcher_step_tags
from cosmicman.assets.metadata import table, tidy_metadata
from cosmicman.assets.plots import line_chart
from cosmicman.core.keys import LATENT_CACHE_PREFIX, LATEST_DATASET_KEY, model_prefix, training_run_key
from cosmicman.core.store import Store
from cosmicman.datasets.layout import excluded_samples, shard_urls
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
    # locations are not identity: where the output and the latent cache live does not change the model; the
    # shards, the samples they hold outside the version and its name follow from the version the name starts with
    identity = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("shards", "excluded_samples", "dataset_version", "output_url", "cache_url")
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{data_version}-{digest}"


def _lineage(store, key: str) -> dg.MetadataValue:
    """What the model was built from (sourcing batches, filter configs, label rounds, code versions)."""
    return dg.MetadataValue.json(model_lineage(store.uri(key), store.storage_options))


# the trainer's figures averaged over a variant's seeds (each also in the per-seed ``models`` table)
AVERAGED = ("loss_first", "loss_last", "noise_loss_last", "hola_loss_last", "attention_in_mask")
# the model's name is its output_url's last segment: no column of its own, so the table stays narrow
MODEL_COLUMNS = ["seed", "loss_last", "attention_in_mask", "reused", "output_url"]


@dataclass(frozen=True)
class VersionData:
    """What a run trains on: the version's (shared) shards, and the samples they hold that it does not."""

    shards: list[str]
    excluded_samples: list[str]


@dataclass(frozen=True)
class TrainedSeed:
    """One replicate of a variant: its training seed, model name, published run record, and whether it was
    already trained."""

    seed: int
    name: str
    record: dict[str, Any]
    reused: bool


@dg.asset(
    deps=["cosmicman_hq"],
    partitions_def=training_variants,
    kinds={"pytorch", "diffusers"},
    group_name="training",
    code_version="2",
    # no automation condition of its own: training_job's condition launches it (cosmicman.jobs.training)
    pool=TRAINING_POOL,
    op_tags=launcher_step_tags(),
)
def daring_unet(
    context: dg.AssetExecutionContext,
    object_store: ObjectStoreResource,
    training: TrainingResource,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    """The whole UNet fine-tuned on the latest CosmicMan-HQ version with this partition's variant (noise
    loss only, or + HOLA, with SiLU or another activation), saved in diffusers format, once per training seed
    (``TrainingResource.seeds`` / ``seeds_by_variant``), each seed its own model folder. Each trainer runs as
    ``python -m cosmicman.model.train`` in its own process, one seed after the other; a seed already trained
    from this version with this config is reused. The figures are means over the seeds (``*_sd``: their
    spread), ``models`` lists each seed's; ``output_url`` is the first seed's model."""
    store = object_store.store()
    if not store.exists(LATEST_DATASET_KEY):
        raise dg.Failure("no CosmicMan-HQ version yet: materialize cosmicman_hq first")
    version = store.read_json(LATEST_DATASET_KEY)["version"]
    data = VersionData(
        shard_urls(store.url, version, store.storage_options),
        excluded_samples(store.url, version, store.storage_options),
    )
    variant = context.partition_key
    trained = [
        _train_seed(context, store, training, training_launcher, version, data, variant, seed)
        for seed in training.seeds_of(variant)
    ]
    first = trained[0]
    reported = {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in summary(first.record).items()}
    per_seed = [summary(t.record) for t in trained]
    charts = _run_charts(store, first.name)
    by_group = _attention_by_group_over_seeds(per_seed, [t.record for t in trained])
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **reported,
                **charts,
                **{k: v for k, v in over_seeds(per_seed, AVERAGED).items() if v is not None},
                **({"attention_in_mask_by_group": by_group} if by_group is not None else {}),
                "seeds": [t.seed for t in trained],
                "models": table(
                    [
                        {
                            "seed": t.seed,
                            "loss_last": s["loss_last"],
                            "attention_in_mask": s.get("attention_in_mask"),
                            "reused": t.reused,
                            "output_url": s["output_url"],
                        }
                        for t, s in zip(trained, per_seed)
                    ],
                    columns=MODEL_COLUMNS,
                ),
                "dataset_version": version,
                "variant": variant,
                "reused": all(t.reused for t in trained),
                "lineage": _lineage(store, model_prefix(first.name)),
            }
        ),
        data_version=dg.DataVersion(models_version([t.name for t in trained])),
    )


def models_version(names: list[str]) -> str:
    """The data version of a variant's models: the one model's name, or a digest of every seed's (in order)."""
    if len(names) == 1:
        return names[0]
    return "seeds-" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


def _train_seed(
    context: dg.AssetExecutionContext,
    store: Store,
    training: TrainingResource,
    launcher: TrainingLauncher,
    version: str,
    data: VersionData,
    variant: str,
    seed: int,
) -> TrainedSeed:
    """One replicate: trained in its own process under Pipes unless its model folder already holds a run."""
    launched = training.launch_config(
        data.shards,
        store.uri(LATENT_CACHE_PREFIX),
        VARIANTS[variant],
        seed=seed,
        excluded_samples=data.excluded_samples,
    )
    config = dataclasses.replace(launched, dataset_version=version)  # the record names it for lineage
    name = model_name(version, config)
    key = model_prefix(name)
    config.output_url = store.uri(key)
    reused = store.exists(training_run_key(name))
    if reused:
        context.log.info(f"{key} (seed {seed}) already trained from {version} with this config: reusing it")
    else:
        context.log.info(f"training {variant} seed {seed} into {key}")
        launcher.launch(context, dataclasses.asdict(config), store)
        if not store.exists(training_run_key(name)):
            raise dg.Failure(f"the trainer of {variant} seed {seed} finished but published no {training_run_key(name)}")
    return TrainedSeed(seed, name, store.read_json(training_run_key(name)), reused)


def _attention_by_group_over_seeds(
    per_seed: list[dict[str, Any]], records: list[dict[str, Any]]
) -> dg.TableMetadataValue | None:
    """Each caption group's share of cross-attention inside its mask, mean and spread over the seeds that
    measured it, against chance; None when no seed measured it (alignment_batches 0)."""
    measured = [
        {
            group: {
                "share_in_mask": share,
                "chance": record["metrics"]["attention_alignment"]["chance_groups"].get(group),
            }
            for group, share in s["attention_in_mask_by_group"].items()
        }
        for s, record in zip(per_seed, records)
        if s.get("attention_in_mask_by_group")
    ]
    if not measured:
        return None
    return table(
        group_shares_over_seeds(measured),
        columns=["group", "share_in_mask", "share_in_mask_sd", "chance", "seeds"],
        descriptions={"share_in_mask_sd": "spread over training seeds (sample sd; empty for one seed)"},
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
