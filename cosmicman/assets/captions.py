"""Daring's discretized captions of the annotated pool, one sourcing batch per partition: a batch's captions
read that batch's annotations only."""

import hashlib
import json

import dagster as dg
import polars as pl

from cosmicman.assets.common import content_digest, sourcing_batches
from cosmicman.assets.metadata import frame_table, tidy_metadata
from cosmicman.core.keys import table_key
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption
from cosmicman.resources.storage import ObjectStoreResource

CAPTIONS_SCHEMA = {
    "sha256": pl.Utf8,
    "caption": pl.Utf8,
    "groups": pl.Utf8,
    "n_groups": pl.Int64,
    "n_spans": pl.Int64,
    "n_tokens": pl.Int64,
}


@dg.asset(
    partitions_def=sourcing_batches,
    deps=["annotations"],
    kinds={"python", "parquet"},
    group_name="datasets",
    code_version="2",
)
def captions(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    """Daring's discretized captions of the batch: groups, token spans in the CLIP prompt, and their ATR labels."""
    store = object_store.store()
    batch = context.partition_key
    key = table_key("annotations", batch)
    if not store.exists(key):
        raise dg.Failure(f"{batch} has no annotations table ({key}): materialize annotations[{batch}] first")
    ann = store.read_table(key, columns=["sha256", "attributes"])
    tokenizer = load_clip_tokenizer()
    rows = []
    for sha, attrs in ann.select("sha256", "attributes").iter_rows():
        seed = int.from_bytes(hashlib.sha256(sha.encode()).digest()[:8], "little")
        cap = build_caption(json.loads(attrs), tokenizer=tokenizer, rng=seed)
        rows.append(
            {
                "sha256": sha,
                "caption": cap.text,
                "groups": json.dumps(cap.to_json(), sort_keys=True),
                "n_groups": len(cap.groups),
                "n_spans": sum(g.span is not None for g in cap.groups),
                "n_tokens": len(tokenizer(cap.text)["input_ids"]),
            }
        )
    df = pl.DataFrame(rows, schema=CAPTIONS_SCHEMA)
    store.write_table(table_key("captions", batch), df)
    return dg.MaterializeResult(
        metadata=tidy_metadata(
            {
                "captions": len(df),
                "mean_groups": float(df["n_groups"].cast(pl.Float64).sum()) / max(len(df), 1),
                "mean_tokens": float(df["n_tokens"].cast(pl.Float64).sum()) / max(len(df), 1),
                "groups_without_span": int((df["n_groups"] - df["n_spans"]).sum()),
                "examples": frame_table(df.select("caption"), limit=8),  # one column: the page is narrow
            }
        ),
        data_version=dg.DataVersion(content_digest(f"{s}|{g}" for s, g in df.select("sha256", "groups").iter_rows())),
    )
