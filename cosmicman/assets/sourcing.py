
import polars as pl
import dagster as dg

from cosmicman.assets.common import Progress, content_digest, sourcing_batches, table_key
from cosmicman.data.sources import ingest
from cosmicman.data.truth import store_truth
from cosmicman.resources.sourcing import SourcingResource
from cosmicman.resources.storage import ObjectStoreResource


def batch_index(partition_key: str) -> int:
    """Partition keys are ``batch-00007``; the index fixes which records a source yields."""
    prefix, _, number = partition_key.rpartition("-")
    if prefix != "batch" or not number.isdigit():
        raise ValueError(f"sourcing batch keys look like 'batch-00007', got {partition_key!r}")
    return int(number)


@dg.asset(partitions_def=sourcing_batches, kinds={"python", "parquet"}, group_name="sourcing",
          code_version="1")
def raw_images(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
               sourcing: SourcingResource) -> dg.MaterializeResult:
    """One sourcing batch: every source's records stored as content-addressed blobs, one row each.
    Bytes already in the pool from another batch are skipped, so re-runs and overlapping sources
    add nothing twice."""
    store = object_store.store()
    batch = context.partition_key
    index = batch_index(batch)
    own_key = table_key("raw_images", batch)
    known: set[str] = set()
    for key, df in store.iter_tables("tables/raw_images"):
        if key != own_key:
            known.update(df["sha256"].to_list())
    tables, truth, sourced, dups, created = [], [], 0, 0, 0
    for source, size in sourcing.sources():
        result = ingest(source.records(index, size), store, batch, known,
                        progress=Progress(context.log, f"sourcing {source.name}", size))
        tables.append(result.table)
        truth += result.truth
        known.update(result.table["sha256"].to_list())
        sourced, dups, created = sourced + result.sourced, dups + result.duplicates, created + result.blobs_created
    table = pl.concat(tables)
    if truth:
        store.write_table(table_key("synthetic_truth", batch), store_truth(truth, store))
    store.write_table(own_key, table)
    per_source = table.group_by("source").len().sort("source")
    return dg.MaterializeResult(metadata={
        "images": len(table), "sourced": sourced, "duplicates_skipped": dups, "blobs_created": created,
        "undecodable": table["decode_error"].is_not_null().sum(),
        "per_source": dg.MetadataValue.json(dict(per_source.iter_rows())),
        "table": dg.MetadataValue.path(store.uri(own_key)),
    }, data_version=dg.DataVersion(content_digest(table["sha256"].to_list())))
