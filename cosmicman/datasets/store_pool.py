"""The flywheel's pool as a version's source: the kept, parsed, annotated, captioned images of every sourcing
batch, joined batch by batch from the per-batch tables, and :func:`version_store` that builds the next
CosmicMan-HQ version from it (the ``cosmicman_hq`` asset's work, without Dagster; ``bench/scale.py`` drives it).

A batch whose annotations or captions table does not exist yet is not annotated yet: it has no candidate.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from cosmicman.core.keys import LATEST_DATASET_KEY, table_key, table_prefix
from cosmicman.core.store import Store
from cosmicman.datasets.build import BuildCounts, ShardPolicy, build_version, index_pool
from cosmicman.datasets.diff import diff_counts
from cosmicman.datasets.layout import list_versions, next_version_name
from cosmicman.datasets.samples import DatasetSample, content_keys

# the columns a sample's shard members are made of (the image and mask by their keys), in content-key order
KEYED = (
    "sha256", "ext", "mask_key", "attributes", "groups", "source", "source_id", "batch", "decision",
    "filter_config", "parser_version", "annotator_version", "annotator_round", "label_rounds", "human_answers",
    "licence",
)  # fmt: skip
TABLES = ("filtered_images", "raw_images", "human_parsing", "annotations", "captions")


class StorePool:
    """Candidates of a version from ``tables/<asset>/<batch>.parquet`` of the five assets, one batch at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def batches(self) -> list[str]:
        keys = self.store.list(table_prefix("filtered_images"))
        return [posixpath.basename(k).removesuffix(".parquet") for k in keys if k.endswith(".parquet")]

    def rows(self, batch: str) -> pl.DataFrame:
        """The batch's candidates with their content key, sorted by sha256."""
        missing = [t for t in TABLES if not self.store.exists(table_key(t, batch))]
        if missing:
            return pl.DataFrame(schema={"sha256": pl.String, "content_key": pl.String})
        read = self.store.read_table
        filtered = read(table_key("filtered_images", batch)).filter(pl.col("decision") == "kept")
        if "filter_config" not in filtered.columns:  # batches filtered before the config was recorded
            filtered = filtered.with_columns(pl.lit(None, dtype=pl.String).alias("filter_config"))
        pool = (
            filtered.select("sha256", "blob_key", "ext", "batch", "decision", "filter_config")
            .join(read(table_key("raw_images", batch), ["sha256", "source", "source_id", "licence"]), on="sha256")
            .join(read(table_key("human_parsing", batch), ["sha256", "mask_key", "parser_version"]), on="sha256")
            .join(read(table_key("annotations", batch)), on="sha256")
            .join(read(table_key("captions", batch), ["sha256", "groups"]), on="sha256")
            .sort("sha256")
        )
        return pool.with_columns(content_keys(pool.select(KEYED)))

    def samples(self, rows: pl.DataFrame) -> Iterator[DatasetSample]:
        for r in rows.iter_rows(named=True):
            yield DatasetSample(
                sha256=r["sha256"],
                image_bytes=self.store.read_bytes(r["blob_key"]),
                ext=r["ext"],
                mask=self.store.read_bytes(r["mask_key"]),  # as stored: into the shard as it is
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


@dataclass(frozen=True)
class StoreVersion:
    """The version the pool is in now: built (``counts``) or the latest one reused (the pool is unchanged)."""

    version: str
    reused: bool
    fingerprint: str
    samples: int
    counts: BuildCounts | None  # None when reused
    changes: dict[str, Any] | None  # against the version before it; None for the first or a reused one


def version_store(
    store: Store,
    policy: ShardPolicy,
    *,
    protocol=None,
    tokenizer=None,
    datacard: Mapping[str, Any] | None = None,
    created_at: str | None = None,
    workers: int = 1,
) -> StoreVersion:
    """Build the next version from the store's pool, sharing the latest version's shards, and name it the
    latest; or, when the pool's content equals the latest version's, reuse that version. A build killed
    mid-way resumes when called again. ``workers``: processes that read and prepare the samples it writes.
    Empty pool: ``ValueError``."""
    source = StorePool(store)
    index = index_pool(source)
    if index.keys.is_empty():
        raise ValueError("no kept, parsed, annotated, captioned image in the pool: nothing to version")
    latest = store.read_json(LATEST_DATASET_KEY) if store.exists(LATEST_DATASET_KEY) else None
    if latest and latest["fingerprint"] == index.fingerprint:
        return StoreVersion(latest["version"], True, index.fingerprint, index.keys.height, None, None)
    previous = latest["version"] if latest else None
    version = next_version_name(list_versions(store.url, store.storage_options))
    info, counts = build_version(
        store.url,
        version,
        source,
        index=index,
        base=previous,
        policy=policy,
        protocol=protocol,
        tokenizer=tokenizer,
        datacard=datacard,
        created_at=created_at or datetime.now(UTC).isoformat(),
        storage_options=store.storage_options,
        workers=workers,
    )
    fingerprint = index.fingerprint
    del index  # the pool's keys: the diff below joins the two versions' own
    store.write_json(LATEST_DATASET_KEY, {"version": version, "fingerprint": fingerprint})
    changes = diff_counts(store.url, previous, version, store.storage_options) if previous else None
    return StoreVersion(version, False, fingerprint, info.n_samples, counts, changes)
