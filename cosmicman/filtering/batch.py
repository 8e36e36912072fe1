"""One sourcing batch through the filter chain, in shards, with bounded memory (Dagster-free).

A batch's raw rows are cut into contiguous shards; each shard is filtered on its own (a separate step,
a separate pod with a GPU in production) and written as its own table; the batch table is the shards'
tables concatenated in order, so it does not depend on how the batch was cut. Filtering streams: one
image is decoded at a time and finished rows are packed into columnar chunks, so memory grows by a few
hundred bytes per row, never by an image. Example images for the UI are picked afterwards from the table
(their blob keys), and only those few are decoded again, as thumbnails.

A shard is filtered by a worker process that loads the chain once for every shard it runs with the same
fingerprint, on one OpenCV / torch thread unless told otherwise (:mod:`cosmicman.filtering.worker`).

A shard's key names a digest of its rows and of everything that decides its rows' outcome (filter config,
fake-person head, code version): re-running a shard overwrites the same key with the same table, and a
shard whose key exists is already done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import polars as pl
from PIL import Image

from cosmicman.core.imageio import decode_image
from cosmicman.core.store import Store
from cosmicman.filtering.decisions import FilterResult
from cosmicman.filtering.worker import compute_threads, worker_chain

RAW_COLUMNS = ("sha256", "blob_key", "ext")
# score columns (score_*) follow these, sorted by name: which scores exist depends on how far images got
BASE_SCHEMA = {
    "sha256": pl.Utf8,
    "blob_key": pl.Utf8,
    "ext": pl.Utf8,
    "batch": pl.Utf8,
    "decision": pl.Utf8,
    "detail": pl.Utf8,
    "filter_config": pl.Utf8,
}
SHARD_PREFIX = "shards/filtered_images"
KEPT_EXAMPLES = 12


class ImageFilter(Protocol):
    def process(self, data: bytes) -> FilterResult: ...


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, start + rows)`` of a batch's raw table, filtered into the table at ``key``;
    ``fingerprint``: what besides the rows decides the table (see :func:`config_fingerprint`)."""

    batch: str
    index: int
    raw_key: str
    start: int
    rows: int
    filter_config: str
    key: str
    fingerprint: str


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def config_fingerprint(filter_config: str, fake_head: bytes, code_version: str) -> str:
    """What, besides the rows, decides a shard's table: the chain's settings, the head's weights, the code."""
    return _digest([filter_config, hashlib.sha256(fake_head).hexdigest(), code_version])


def plan_shards(
    raw: pl.DataFrame, batch: str, raw_key: str, shard_rows: int, filter_config: str, fingerprint: str
) -> list[Shard]:
    """Contiguous shards of at most ``shard_rows`` rows; an empty batch is one empty shard, so it is still
    filtered (into an empty table) and counted in the pool."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    shas = raw["sha256"].to_list()
    shards = []
    for index, start in enumerate(range(0, max(len(shas), 1), shard_rows)):
        part = shas[start : start + shard_rows]
        key = f"{SHARD_PREFIX}/{batch}/{index:05d}-{_digest([fingerprint, *part])}.parquet"
        shards.append(Shard(batch, index, raw_key, start, len(part), filter_config, key, fingerprint))
    return shards


def filter_rows(
    rows: Iterable[Mapping[str, str]],
    read: Callable[[str], bytes],
    chain: ImageFilter,
    *,
    batch: str,
    filter_config: str,
    chunk_rows: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """Every row's image through ``chain``: its decision, the reason, and every score it reached."""
    chunks: list[pl.DataFrame] = []
    pending: list[dict] = []
    for done, r in enumerate(rows, start=1):
        result = chain.process(read(r["blob_key"]))
        pending.append(
            {
                "sha256": r["sha256"],
                "blob_key": r["blob_key"],
                "ext": r["ext"],
                "batch": batch,
                "decision": result.decision,
                "detail": result.detail,
                "filter_config": filter_config,
                **{f"score_{k}": (float(v) if v is not None else None) for k, v in result.scores.items()},
            }
        )
        if len(pending) >= chunk_rows:
            chunks.append(_chunk(pending))
            pending = []
        if progress is not None:
            progress(done)
    if pending:
        chunks.append(_chunk(pending))
    return concat_tables(chunks)


def _chunk(rows: list[dict]) -> pl.DataFrame:
    scores = {k: pl.Float64 for row in rows for k in row if k not in BASE_SCHEMA}
    return pl.DataFrame(rows, schema={**BASE_SCHEMA, **scores})


def concat_tables(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Rows in order; columns: the base ones, then the union of score columns sorted by name (absent: null)."""
    if not tables:
        return pl.DataFrame(schema=BASE_SCHEMA)
    table = pl.concat(tables, how="diagonal")
    return table.select(*BASE_SCHEMA, *sorted(c for c in table.columns if c not in BASE_SCHEMA))


def write_filtered_shard(
    store: Store,
    shard: Shard,
    load_chain: Callable[[], ImageFilter],
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
) -> bool:
    """Write ``shard``'s table unless it exists; False when it was already there. ``load_chain`` is called
    only when there is work, so a finished shard loads no model, and at most once per process for shards
    of one fingerprint; the images are filtered on ``threads`` OpenCV / torch threads."""
    if store.exists(shard.key):
        return False
    raw = store.read_table(shard.raw_key, columns=list(RAW_COLUMNS)).slice(shard.start, shard.rows)
    chain = worker_chain(shard.fingerprint, load_chain)
    with compute_threads(threads):
        table = filter_rows(
            raw.iter_rows(named=True),
            store.read_bytes,
            chain,
            batch=shard.batch,
            filter_config=shard.filter_config,
            progress=progress,
        )
    store.write_table(shard.key, table)
    return True


def merge_shards(store: Store, shards: Sequence[Shard]) -> pl.DataFrame:
    """The batch table: the shards' tables in shard order."""
    return concat_tables([store.read_table(s.key) for s in sorted(shards, key=lambda s: s.index)])


@dataclass(frozen=True)
class Examples:
    """Blob keys of what the UI shows: the first kept images and the first image of each rejection reason."""

    kept: list[str]
    rejected: dict[str, str]


def pick_examples(table: pl.DataFrame, kept: int = KEPT_EXAMPLES) -> Examples:
    kept_keys = table.filter(pl.col("decision") == "kept")["blob_key"].head(kept).to_list()
    # corrupt images have nothing to show
    firsts = (
        table.filter(~pl.col("decision").is_in(["kept", "corrupt"]))
        .group_by("decision", maintain_order=True)
        .agg(pl.col("blob_key").first())
    )
    return Examples(kept_keys, dict(firsts.iter_rows()))


def thumbnails(
    read: Callable[[str], bytes], keys: Iterable[str], size: tuple[int, int] = (64, 128)
) -> list[Image.Image]:
    return [decode_image(read(k)).resize(size) for k in keys]
