"""The filter chain over each sourcing batch, and the fake-person head it uses.

``filtered_images`` is a graph: plan the batch's shards, filter each shard in its own step (in parallel
under the multiprocess executor; one pod each under the Kubernetes executor), merge. Only shard
descriptions pass between the steps; images and tables stay in the object store.
"""

import json
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import polars as pl

from cosmicman.assets.automation import on_missing
from cosmicman.assets.common import Progress, content_digest, sourcing_batches
from cosmicman.assets.gpu_pools import FILTER_POOL
from cosmicman.assets.metadata import counts_table, location, table, tidy_metadata
from cosmicman.assets.plots import histogram, image_grid
from cosmicman.core.keys import FAKE_HEAD_KEY, raw_table_key, table_key
from cosmicman.filtering.batch import (
    ImageFilter,
    Shard,
    config_fingerprint,
    merge_shards,
    pick_examples,
    plan_shards,
    thumbnails,
    write_filtered_shard,
)
from cosmicman.resources.filters import FilterResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.pool import record_batch

# also part of every shard's key: a new version re-filters shards written by the old one
FILTERED_IMAGES_CODE_VERSION = "2"


@dg.asset(kinds={"python"}, group_name="filtering", code_version="1", automation_condition=on_missing())
def fake_person_classifier(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, filters: FilterResource
) -> dg.MaterializeResult:
    """The fake-person head (image embedding + linear head), trained on labelled real / fake people."""
    store = object_store.store()
    head_bytes, metrics = filters.train_fake_person_head(store)
    store.write_bytes(FAKE_HEAD_KEY, head_bytes)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                **{k: v for k, v in metrics.items() if "/" not in k and k != "train_url"},
                "train_url": location(str(metrics["train_url"])),
                "held_out_accuracy": _held_out_accuracy(metrics),
            }
        ),
        data_version=dg.DataVersion(content_digest([head_bytes.hex()])),
    )


def _held_out_accuracy(metrics: dict) -> dg.TableMetadataValue:
    """The head's per-group and per-scenario metrics (``val_accuracy/real_human/dance``, ``n_val/...``) as rows."""
    groups = sorted(k.removeprefix("val_accuracy/") for k in metrics if k.startswith("val_accuracy/"))
    return table(
        [
            {"group": g, "accuracy": metrics[f"val_accuracy/{g}"], "held_out_images": metrics.get(f"n_val/{g}")}
            for g in groups
        ],
        columns=["group", "accuracy", "held_out_images"],
    )


class FilterShardsConfig(dg.Config):
    """How a batch is cut into filter steps (run config of ``plan_filter_shards``)."""

    shard_rows: int = 10_000


def _filter_config(filters: FilterResource) -> str:
    # recorded with every decision: the lineage of a dataset names the filter config its samples passed
    return json.dumps(filters.chain_settings(), sort_keys=True)


@dg.op(ins={"raw_images": dg.In(dg.Nothing), "fake_person_classifier": dg.In(dg.Nothing)}, out=dg.DynamicOut(Shard))
def plan_filter_shards(
    context: dg.OpExecutionContext,
    config: FilterShardsConfig,
    object_store: ObjectStoreResource,
    filters: FilterResource,
) -> Iterator[dg.DynamicOutput[Shard]]:
    """Cut the batch's raw table into shards of ``shard_rows`` rows: one filter step each."""
    store = object_store.store()
    batch = context.partition_key
    raw_key = raw_table_key(batch)
    raw = store.read_table(raw_key, columns=["sha256"])
    filter_config = _filter_config(filters)
    # a missing head fails in the filter step, with the chain's own message
    head = store.read_bytes(FAKE_HEAD_KEY) if store.exists(FAKE_HEAD_KEY) else b""
    fingerprint = config_fingerprint(filter_config, head, FILTERED_IMAGES_CODE_VERSION)
    shards = plan_shards(raw, batch, raw_key, config.shard_rows, filter_config, fingerprint)
    context.log.info(f"{len(raw)} rows in {len(shards)} shard(s) of at most {config.shard_rows}")
    for shard in shards:
        yield dg.DynamicOutput(shard, mapping_key=f"shard_{shard.index:05d}")


@dg.op(pool=FILTER_POOL)
def filter_shard(
    context: dg.OpExecutionContext, shard: Shard, object_store: ObjectStoreResource, filters: FilterResource
) -> Shard:
    """Every image of one shard through the ordered chain: all scores it reached, one decision."""
    store = object_store.store()

    def chain() -> ImageFilter:
        loaded = filters.chain(store)
        loaded.setup()
        return loaded

    progress = Progress(context.log, f"filtering shard {shard.index}", shard.rows)
    if not write_filtered_shard(store, shard, chain, progress):
        context.log.info(f"shard {shard.index} is already filtered with this config: {shard.key}")
    return shard


@dg.op(out=dg.Out(dg.Nothing))
def merge_filter_shards(
    context: dg.OpExecutionContext, shards: list[Shard], object_store: ObjectStoreResource, filters: FilterResource
) -> dg.MaterializeResult:
    """The batch table from its shards, the batch's pool counts, and what the UI shows of it."""
    store = object_store.store()
    batch = context.partition_key
    df = merge_shards(store, shards)
    store.write_table(table_key("filtered_images", batch), df)
    counts = dict(df.group_by("decision").len().sort("decision").iter_rows())
    kept = counts.get("kept", 0)
    pool = record_batch(store, batch, raw=len(df), kept=kept)
    examples = pick_examples(df)
    thresholds = filters.thresholds()
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "raw": len(df),
                "kept": kept,
                "rejected": len(df) - kept,
                "shards": len(shards),
                "decision_counts": counts_table(counts, "decision"),
                # the same counts as a plain dict, for scripts (the CLI summary adds them up over batches)
                "decisions": dg.MetadataValue.json(counts),
                "pool_kept_total": pool.kept,
                "thresholds": table(
                    [{"setting": k, "value": v} for k, v in thresholds.items()], columns=["setting", "value"]
                ),
                **_score_histograms(df, thresholds),
                "kept_sample": image_grid(thumbnails(store.read_bytes, examples.kept, GRID_THUMB), thumb=GRID_THUMB),
                "rejected_examples": image_grid(
                    thumbnails(store.read_bytes, examples.rejected.values(), GRID_THUMB),
                    examples.rejected.keys(),
                    thumb=GRID_THUMB,
                ),
            }
        ),
        data_version=dg.DataVersion(content_digest(f"{s}|{d}" for s, d in df.select("sha256", "decision").iter_rows())),
    )


GRID_THUMB = (128, 256)  # people are portrait: six across fill the UI's markdown dialog
# score column -> (what the chart says, the threshold setting that decides on it)
SCORE_HISTOGRAMS = {
    "score_fake_score": ("P(fake person)", "max_fake_score"),
    "score_quality": ("quality", "min_quality"),
    "score_max_face_px": ("largest face, px", "min_face_px"),
}


def _score_histograms(df: pl.DataFrame, thresholds: dict) -> dict[str, dg.MetadataValue]:
    """One histogram per filter score over the images that reached it, with the filter's threshold; a score
    no image reached says so."""
    out: dict[str, dg.MetadataValue] = {}
    for column, (title, setting) in SCORE_HISTOGRAMS.items():
        name = f"{column.removeprefix('score_')}_histogram"
        values = df[column].drop_nulls().to_list() if column in df.columns else []
        out[name] = (
            histogram(values, title=title, threshold=thresholds.get(setting))
            if values
            else dg.MetadataValue.text(f"no image of this batch reached the {title} filter")
        )
    return out


def build_filtered_images(filter_step_tags: Mapping[str, Any] | None = None) -> dg.AssetsDefinition:
    """``filtered_images`` for one environment. Op tags are fixed when a job is built, so the environment
    chooses its filter steps' tags (e.g. a ``dagster-k8s/config`` asking for a GPU) by building the asset."""
    shard_step = filter_shard.tag(dict(filter_step_tags)) if filter_step_tags else filter_shard

    @dg.graph_asset(
        partitions_def=sourcing_batches,
        kinds={"python", "parquet"},
        group_name="filtering",
        code_version=FILTERED_IMAGES_CODE_VERSION,
        ins={
            "raw_images": dg.AssetIn(dagster_type=dg.Nothing),
            "fake_person_classifier": dg.AssetIn(dagster_type=dg.Nothing),
        },
    )
    def filtered_images(raw_images, fake_person_classifier):
        """Every image of the batch through the ordered chain, one step per shard: all scores it reached,
        one decision."""
        shards = plan_filter_shards(raw_images=raw_images, fake_person_classifier=fake_person_classifier)
        return merge_filter_shards(shards.map(shard_step).collect())

    return filtered_images
