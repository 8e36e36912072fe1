"""The filter chain over each sourcing batch, the fake-person head it uses, and human parsing."""
import json

import dagster as dg
import polars as pl
from PIL import Image

from cosmicman.assets.common import Progress, content_digest, image_grid_markdown, sourcing_batches, table_key
from cosmicman.data.imageio import decode_image
from cosmicman.data.parsing import ParserUnavailableError
from cosmicman.data.pool import record_batch
from cosmicman.data.truth import mask_png
from cosmicman.resources.filters import FAKE_HEAD_KEY, FilterResource
from cosmicman.resources.parsing import ParserResource
from cosmicman.resources.storage import ObjectStoreResource


@dg.asset(kinds={"python"}, group_name="filtering", code_version="1")
def fake_person_classifier(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                           filters: FilterResource) -> dg.MaterializeResult:
    """The fake-person head (image embedding + linear head), trained on labelled real / fake people."""
    store = object_store.store()
    head_bytes, metrics = filters.train_fake_person_head()
    store.write_bytes(FAKE_HEAD_KEY, head_bytes)
    return dg.MaterializeResult(metadata={k: float(v) if isinstance(v, (int, float)) else str(v)
                                          for k, v in metrics.items()},
                                data_version=dg.DataVersion(content_digest([head_bytes.hex()])))


@dg.asset(partitions_def=sourcing_batches, deps=["raw_images", "fake_person_classifier"], kinds={"python", "parquet"},
          group_name="filtering", code_version="1")
def filtered_images(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                    filters: FilterResource) -> dg.MaterializeResult:
    """Every image of the batch through the ordered chain: all scores it reached, one decision."""
    store = object_store.store()
    batch = context.partition_key
    raw = store.read_table(table_key("raw_images", batch))
    chain = filters.chain(store)
    chain.setup()
    # recorded with every decision: the lineage of a dataset names the filter config its samples passed
    filter_config = json.dumps({"backend": filters.backend, **filters.thresholds()}, sort_keys=True)
    rows, kept_images, progress = [], [], Progress(context.log, "filtering", len(raw))
    rejected_images: dict[str, Image.Image] = {}  # one example per rejection reason
    for i, r in enumerate(raw.iter_rows(named=True)):
        result = chain.process(store.read_bytes(r["blob_key"]))
        rows.append({"sha256": r["sha256"], "blob_key": r["blob_key"], "ext": r["ext"], "batch": batch,
                     "decision": result.decision, "detail": result.detail, "filter_config": filter_config,
                     **{f"score_{k}": (float(v) if v is not None else None) for k, v in result.scores.items()}})
        if result.decision == "kept" and len(kept_images) < 12:
            kept_images.append(decode_image(store.read_bytes(r["blob_key"])))
        elif result.decision not in ("kept", "corrupt") and result.decision not in rejected_images:
            rejected_images[result.decision] = decode_image(store.read_bytes(r["blob_key"]))
        progress(i + 1)
    df = pl.DataFrame(rows, infer_schema_length=None)
    store.write_table(table_key("filtered_images", batch), df)
    counts = dict(df.group_by("decision").len().sort("decision").iter_rows())
    kept = counts.get("kept", 0)
    pool = record_batch(store, batch, raw=len(df), kept=kept)
    return dg.MaterializeResult(metadata={
        "raw": len(df), "kept": kept, "rejected": len(df) - kept,
        "decisions": dg.MetadataValue.json(counts), "pool_kept_total": pool.kept,
        "thresholds": dg.MetadataValue.json(filters.thresholds()), "kept_sample": image_grid_markdown(kept_images),
        "rejected_examples": image_grid_markdown(rejected_images.values(), rejected_images.keys())},
        data_version=dg.DataVersion(content_digest(f"{s}|{d}" for s, d in df.select("sha256", "decision").iter_rows())))


@dg.asset(partitions_def=sourcing_batches, deps=["filtered_images"], kinds={"python", "parquet"},
          group_name="filtering", code_version="1")
def human_parsing(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                  parser: ParserResource) -> dg.MaterializeResult:
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
        mkey = f"parsing/{backend.version}/{sha[:2]}/{sha}.png"
        if not store.exists(mkey):
            store.write_bytes(mkey, mask_png(mask))
        rows.append({"sha256": sha, "mask_key": mkey, "parser_version": backend.version,
                     "foreground_fraction": float((mask != 0).mean())})
        progress(i + 1)
    df = pl.DataFrame(rows, schema={"sha256": pl.Utf8, "mask_key": pl.Utf8, "parser_version": pl.Utf8,
                                    "foreground_fraction": pl.Float64})
    store.write_table(table_key("human_parsing", batch), df)
    if failures:
        context.log.warning(f"{len(failures)} kept images could not be parsed and stay out of datasets")
    return dg.MaterializeResult(metadata={
        "parsed": len(df), "unparsed": len(failures), "parser": backend.version,
        "unparsed_reasons": dg.MetadataValue.json(dict(list(failures.items())[:10]))},
        data_version=dg.DataVersion(content_digest(df["sha256"].to_list())))
