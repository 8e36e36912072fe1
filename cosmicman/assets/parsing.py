"""Human parsing of each sourcing batch's kept people: 18-class ATR label maps stored as PNGs."""

import dagster as dg
import polars as pl

from cosmicman.assets.common import Progress, content_digest, sourcing_batches
from cosmicman.assets.metadata import counts_table, table, tidy_metadata
from cosmicman.core.imageio import decode_image
from cosmicman.core.keys import parsing_mask_key, table_key
from cosmicman.core.masks import mask_png
from cosmicman.parsing.parsers import ParserUnavailableError, unparsed_by_reason
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.storage import ObjectStoreResource


@dg.asset(
    partitions_def=sourcing_batches,
    deps=["filtered_images"],
    kinds={"python", "parquet"},
    group_name="parsing",
    code_version="1",
)
def human_parsing(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, parser: ParserResource
) -> dg.MaterializeResult:
    """18-class ATR label maps of the batch's kept people, stored as PNGs keyed by image sha."""
    store = object_store.store()
    batch = context.partition_key
    kept = store.read_table(table_key("filtered_images", batch)).filter(pl.col("decision") == "kept")
    backend = parser.parser(store)
    backend.setup()
    rows, failures, progress = [], {}, Progress(context.log, "parsing", len(kept))
    for i, (sha, key) in enumerate(kept.select("sha256", "blob_key").iter_rows()):
        try:
            mask = backend.parse(sha, decode_image(store.read_bytes(key)))
        except ParserUnavailableError as exc:
            failures[sha] = str(exc)
            continue
        mkey = parsing_mask_key(backend.version, sha)
        if not store.exists(mkey):
            store.write_bytes(mkey, mask_png(mask))
        rows.append(
            {
                "sha256": sha,
                "mask_key": mkey,
                "parser_version": backend.version,
                "foreground_fraction": float((mask != 0).mean()),
            }
        )
        progress(i + 1)
    df = pl.DataFrame(
        rows,
        schema={"sha256": pl.Utf8, "mask_key": pl.Utf8, "parser_version": pl.Utf8, "foreground_fraction": pl.Float64},
    )
    store.write_table(table_key("human_parsing", batch), df)
    by_reason = unparsed_by_reason(failures)
    for reason, count in by_reason.items():
        context.log.warning(f"{count} kept images not parsed, so they stay out of datasets: {reason}")
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "parsed": len(df),
                "unparsed": len(failures),
                # every unparsed image counted by its reason (the summary of `make run` prints these)
                "unparsed_by_reason": dg.MetadataValue.json(by_reason),
                "unparsed_reasons": counts_table(by_reason, "reason"),
                "unparsed_examples": table(
                    [{"image_sha256": sha, "reason": why} for sha, why in list(failures.items())[:10]],
                    columns=["image_sha256", "reason"],
                ),
                "parser": backend.version,
                "mean_foreground_fraction": sum(r["foreground_fraction"] for r in rows) / len(rows) if rows else 0.0,
            }
        ),
        data_version=dg.DataVersion(content_digest(df["sha256"].to_list())),
    )
