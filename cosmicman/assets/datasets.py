"""CosmicMan-HQ: immutable dataset versions built from the captioned, parsed, annotated pool."""

import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from cosmicman.assets.common import content_digest
from cosmicman.core.keys import LATEST_DATASET_KEY, dataset_version_prefix, table_key, table_prefix
from cosmicman.core.masks import read_mask
from cosmicman.core.store import Store
from cosmicman.datasets.diff import diff_versions
from cosmicman.datasets.layout import DATACARD, list_versions, next_version_name, read_manifest, read_stats
from cosmicman.datasets.lineage import dataset_lineage
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.shards import verify_shards
from cosmicman.datasets.version import write_dataset_version
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
    check_specs=[dg.AssetCheckSpec("shards_match_manifest", asset="cosmicman_hq", blocking=True)],
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
    problems = verify_shards(store.url, version, store.storage_options)
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "reused": reused,
            "samples": len(manifest),
            "fingerprint": fingerprint,
            "stats": dg.MetadataValue.json(stats),
            # added / removed / relabelled samples against the version before it (none for the first)
            "changes": dg.MetadataValue.json(changes or {}),
            "lineage": dg.MetadataValue.json(dataset_lineage(store.url, version, store.storage_options)),
            "url": dg.MetadataValue.path(store.uri(dataset_version_prefix(version))),
            "datacard": dg.MetadataValue.md(store.read_bytes(f"{dataset_version_prefix(version)}/{DATACARD}").decode()),
        },
        data_version=dg.DataVersion(f"{version}-{fingerprint}"),
        check_results=[
            dg.AssetCheckResult(
                check_name="shards_match_manifest",
                passed=not problems,
                metadata={"problems": dg.MetadataValue.json(problems)},
            )
        ],
    )
