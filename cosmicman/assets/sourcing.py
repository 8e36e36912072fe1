"""Sourcing: each batch of every source fetched, decode-checked, de-duplicated and stored."""

import dagster as dg

from cosmicman.assets.common import content_digest, sourcing_batches
from cosmicman.assets.metadata import counts_table, location, tidy_metadata
from cosmicman.core.keys import raw_table_key, sourcing_log_key
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.sourcing.api_source import report_downloads
from cosmicman.sourcing.ingest import source_batch
from cosmicman.sourcing.sources import FolderSource

# the raw_images steps running at once across all runs (``dagster instance concurrency set sourcing <n>``; with no
# limit of its own a pool gets the instance's default). Batches in flight at once: COSMICMAN_SOURCING_CONCURRENCY.
SOURCING_POOL = "sourcing"


def batch_index(partition_key: str) -> int:
    """Partition keys are ``batch-00007``; the index fixes which records a source yields."""
    prefix, _, number = partition_key.rpartition("-")
    if prefix != "batch" or not number.isdigit():
        raise ValueError(f"sourcing batch keys look like 'batch-00007', got {partition_key!r}")
    return int(number)


@dg.asset(
    partitions_def=sourcing_batches,
    kinds={"python", "parquet"},
    group_name="sourcing",
    code_version="2",
    pool=SOURCING_POOL,
)
def raw_images(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, sourcing: SourcingResource
) -> dg.MaterializeResult:
    """One sourcing batch: re-queued failed URLs and every source's items, fetched, decode-checked,
    de-duplicated against the whole pool (exact and perceptual) and stored as content-addressed blobs.
    Every item ends as one outcome (stored / duplicate / near_duplicate / failed with a reason) in the
    batch's sourcing log; a killed run resumes where its last durable chunk ended. Batches run side by side:
    each plans and admits under the pool's sourcing lock, so none admits an image another already holds."""
    store = object_store.store()
    batch = context.partition_key
    last_log = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or done - last_log[0] >= max(1, total // 10):
            last_log[0] = done
            context.log.info(f"sourcing {batch}: {done}/{total}")

    sources = sourcing.sources(store)
    report = source_batch(store, batch, batch_index(batch), sources, sourcing.ingest_config(), progress)
    tracked = report_downloads(store, batch_index(batch), sources, report.raw)
    folders = [source for source, _ in sources if isinstance(source, FolderSource)]
    folder_metadata: dict[str, dg.MetadataValue] = {}
    for folder in folders:
        # every entry under the dataset root: listed for batches, or skipped with its reason
        entries = folder.accounting(store)
        folder_metadata[f"{folder.name}_entries"] = counts_table(entries, "entry", "files")
        folder_metadata[f"{folder.name}_entries_by_reason"] = dg.MetadataValue.json(entries)
        folder_metadata[f"{folder.name}_skipped_table"] = location(store.uri(folder.skipped_table_key()))
    if report.resumed_outcomes:
        context.log.info(f"resumed {batch}: {report.resumed_outcomes} outcomes were already durable")
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "images": len(report.raw),
                "requested": report.requested,
                **report.counts,
                "outcomes": counts_table(report.counts, "outcome", "items"),
                "failures": counts_table(report.failed_by_reason, "reason", "items"),
                "sources": counts_table(report.per_source, "source", "images"),
                # the same counts as plain dicts, for scripts (the CLI summary adds them up over batches)
                "failed_by_reason": dg.MetadataValue.json(report.failed_by_reason),
                "per_source": dg.MetadataValue.json(report.per_source),
                "requeued_urls": report.requeued,
                "blobs_created": report.blobs_created,
                "resumed_outcomes": report.resumed_outcomes,
                "admitted_elsewhere": report.admitted_elsewhere,
                "api_downloads_tracked": tracked,
                "images_per_s": report.requested / max(report.elapsed_s, 1e-9),
                "steady_images_per_s": report.outcomes_per_s,
                "phash_scheme": report.phash_scheme,
                "table": location(store.uri(raw_table_key(batch))),
                "sourcing_log": location(store.uri(sourcing_log_key(batch))),
                **folder_metadata,
            }
        ),
        data_version=dg.DataVersion(content_digest(report.raw["sha256"].to_list())),
    )
