"""CosmicMan-HQ: immutable dataset versions built from the captioned, parsed, annotated pool."""

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from cosmicman.assets.automation import on_newly_annotated_images
from cosmicman.assets.common import content_digest
from cosmicman.assets.metadata import counts_table, location, table, tidy, tidy_metadata
from cosmicman.core.keys import LATEST_DATASET_KEY, dataset_version_prefix, table_key, table_prefix
from cosmicman.core.masks import read_mask
from cosmicman.core.store import Store
from cosmicman.datasets.diff import diff_versions
from cosmicman.datasets.layout import DATACARD, list_versions, next_version_name, read_manifest, read_stats
from cosmicman.datasets.lineage import dataset_lineage
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.version import write_dataset_version
from cosmicman.environments.settings import new_images_per_version
from cosmicman.resources.storage import ObjectStoreResource


def _joined_pool(store: Store) -> pl.DataFrame:
    filtered = pl.concat(
        [df.filter(pl.col("decision") == "kept") for _, df in store.iter_tables(table_prefix("filtered_images"))],
        how="diagonal_relaxed",
    )
    if "filter_config" not in filtered.columns:  # batches filtered before the config was recorded
        filtered = filtered.with_columns(pl.lit(None, dtype=pl.String).alias("filter_config"))
    raw = pl.concat([df for _, df in store.iter_tables(table_prefix("raw_images"))]).select(
        "sha256", "source", "source_id", "licence"
    )
    parsing = pl.concat([df for _, df in store.iter_tables(table_prefix("human_parsing"))])
    return (
        filtered.select("sha256", "blob_key", "ext", "batch", "decision", "filter_config")
        .join(raw, on="sha256")
        .join(parsing.select("sha256", "mask_key", "parser_version"), on="sha256")
        .join(store.read_table(table_key("annotations")), on="sha256")
        .join(store.read_table(table_key("captions")).select("sha256", "groups"), on="sha256")
        .sort("sha256")
    )


def _fingerprint(pool: pl.DataFrame) -> str:
    return content_digest(
        f"{r['sha256']}|{r['attributes']}|{r['groups']}|{r['mask_key']}" for r in pool.iter_rows(named=True)
    )


@dg.asset(
    deps=["captions", "human_parsing", "annotations", "filtered_images"],
    kinds={"python", "webdataset"},
    group_name="datasets",
    code_version="1",
    automation_condition=on_newly_annotated_images(new_images_per_version()),
)
def cosmicman_hq(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """A new immutable CosmicMan-HQ version: WebDataset shards, manifest, stats, datacard. When the
    pool's content equals the latest version's, that version is reused instead of duplicated."""
    store = object_store.store()
    pool = _joined_pool(store)
    if pool.is_empty():
        raise dg.Failure("no kept, parsed, captioned image in the pool: nothing to version")
    fingerprint = _fingerprint(pool)
    latest = store.read_json(LATEST_DATASET_KEY) if store.exists(LATEST_DATASET_KEY) else None
    changes = None
    if latest and latest["fingerprint"] == fingerprint:
        version, reused = latest["version"], True
        context.log.info(f"pool unchanged since {version}: reusing it")
    else:
        previous = latest["version"] if latest else None
        version = next_version_name(list_versions(store.url, store.storage_options))
        samples = (
            DatasetSample(
                sha256=r["sha256"],
                image_bytes=store.read_bytes(r["blob_key"]),
                ext=r["ext"],
                mask=read_mask(store.read_bytes(r["mask_key"])),
                attributes=json.loads(r["attributes"]),
                caption=json.loads(r["groups"]),
                provenance={
                    "source": r["source"],
                    "source_id": r["source_id"],
                    "source_batch": r["batch"],
                    "filter_decision": r["decision"],
                    "filter_config": r["filter_config"],
                    "parser_version": r["parser_version"],
                    "annotator_version": r["annotator_version"],
                    "annotator_round": r["annotator_round"],
                    "label_rounds": json.loads(r["label_rounds"]),
                    "human_answers": r["human_answers"],
                    "licence": r["licence"],
                },
            )
            for r in pool.iter_rows(named=True)
        )
        write_dataset_version(
            store.url,
            version,
            samples,
            samples_per_shard=64,
            created_at=datetime.now(UTC).isoformat(),
            storage_options=store.storage_options,
        )
        store.write_json(LATEST_DATASET_KEY, {"version": version, "fingerprint": fingerprint})
        reused = False
        if previous:
            changes = diff_versions(store.url, previous, version, store.storage_options).counts()
            context.log.info(f"{version} vs {previous}: {changes}")
    stats = read_stats(store.url, version, store.storage_options)
    manifest = read_manifest(store.url, version, store.storage_options)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "version": version,
                "reused": reused,
                "samples": len(manifest),
                "fingerprint": fingerprint,
                "statistics": _statistics(stats),
                "sources": counts_table(stats.get("sources", {}), "source"),
                "caption_groups": _caption_groups(stats),
                # added / removed / relabelled samples against the version before it (none for the first)
                "changes": _changes(changes),
                # the whole stats.json, for scripts (the CLI summary prints its numbers)
                "stats": dg.MetadataValue.json(stats),
                "lineage": dg.MetadataValue.json(dataset_lineage(store.url, version, store.storage_options)),
                "url": location(store.uri(dataset_version_prefix(version))),
                "datacard": dg.MetadataValue.md(
                    store.read_bytes(f"{dataset_version_prefix(version)}/{DATACARD}").decode()
                ),
            }
        ),
        data_version=dg.DataVersion(f"{version}-{fingerprint}"),
    )


def _statistics(stats: Mapping[str, Any]) -> dg.TableMetadataValue:
    """The version's single-number statistics (the paper's Table 1 columns), one row each."""
    rows = [
        {"statistic": k, "value": str(tidy(v))}
        for k, v in stats.items()
        if isinstance(v, int | float | str) and not k.endswith("_note")
    ]
    return table(rows, columns=["statistic", "value"])


def _caption_groups(stats: Mapping[str, Any]) -> dg.TableMetadataValue:
    """How often each caption group is present, and how often it was dropped, per image."""
    present, dropped = stats.get("group_frequency", {}), stats.get("group_dropped_frequency", {})
    return table(
        [{"group": g, "frequency": f, "dropped": dropped.get(g, 0.0)} for g, f in present.items()],
        columns=["group", "frequency", "dropped"],
        descriptions={"dropped": "frequency of the group dropped from the caption"},
    )


def _changes(changes: Mapping[str, Any] | None) -> dg.MetadataValue:
    if not changes:
        return dg.MetadataValue.text("first version: nothing before it to compare with")
    return table(
        [
            {"against": changes["old"], "change": k, "samples": changes[k]}
            for k in ("added", "removed", "relabelled", "unchanged")
        ],
        columns=["against", "change", "samples"],
    )
