"""One sourcing batch: plan, fetch, check, de-duplicate and store, surviving a kill at any point.

Every planned item ends as exactly one outcome row: ``stored`` (a new pool image), ``duplicate`` (its
bytes are already in the pool), ``near_duplicate`` (a re-encoded / resized copy of a pool image, by
perceptual hash) or ``failed`` with a reason (``http_404``, ``timeout``, ``truncated``, ``svg``, ...)
and a short description that never quotes the item's bytes (:mod:`cosmicman.sourcing.rejection_details`).
So ``stored + duplicate + near_duplicate + failed == requested`` for every batch. Within a batch the copy
fetched first is the one kept: fetches run concurrently, so which of two copies that is may differ between
runs (the pool holds one of them either way; waiting to decide in plan order would hold every image).

Durability (datatrove's pattern: finished work leaves a marker, a re-run skips it):

1. The plan (re-queued failed URLs first, then each source's items) is written once to
   ``sourcing/staging/<batch>/plan.parquet``; a re-run reuses it, so it fetches the same items. Beside it goes
   the list of index segments the batch's decisions will have seen (:mod:`cosmicman.sourcing.admission`).
2. Outcomes are decided in completion order (checks run on worker processes, ``check_pool.py``) and
   appended in that order to numbered chunk files (``done/chunk-NNNNN.parquet``), each written atomically;
   a stored image's row only once its blob is written (blob writes run on threads, ``ordered_commits.py``).
   A re-run loads them, rebuilds the batch's de-duplication state from them and fetches only the items
   without an outcome. Decisions reference only earlier outcomes, so the chunks on disk are always
   consistent; a kill loses at most the outcomes not yet in a chunk, whose blobs are content-addressed and
   are found again, not duplicated.
3. Finishing checks the images it would store against the batches that finished while it ran
   (:mod:`cosmicman.sourcing.admission`), writes the batch's tables (``tables/raw_images``,
   ``tables/sourcing_log``), lets each source keep its own records of the items it stored
   (``StoredItemsRecorder``), writes the index segment and the failed-URL table
   (:mod:`cosmicman.sourcing.failed_urls`), and only then removes the staging folder. Every step is idempotent.

Batches run in parallel. Planning (1: it reads the failed-URL table and the sources' shared cursors) and
finishing (3: it reads what other batches admitted and writes what they read) each run under the pool's
sourcing lock (:mod:`cosmicman.sourcing.pool_lock`); fetching, checking and storing blobs (2) run outside it.
However batches interleave, no image enters the pool twice: the batch that finishes second sees the first's
index segment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import posixpath
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import polars as pl

from cosmicman.core.imageio import CheckedImage, sha256_hex
from cosmicman.core.keys import raw_table_key, sourcing_log_key, sourcing_staging_prefix
from cosmicman.core.store import ExclusiveCreateUnsupported, Store
from cosmicman.sourcing.admission import admit, record_seen_segments, segments_since_start
from cosmicman.sourcing.check_pool import CheckPool
from cosmicman.sourcing.dedup import PoolIndex, UnknownPhashScheme, pool_phash_scheme, resolve_shas, write_segment
from cosmicman.sourcing.failed_urls import staged_plan_key, update_failed_urls, urls_to_requeue
from cosmicman.sourcing.fetch import FetchConfig, fetch_all
from cosmicman.sourcing.folder_walk import IMAGE_SUFFIXES, RefusedRead
from cosmicman.sourcing.ordered_commits import OrderedCommits
from cosmicman.sourcing.pool_lock import DEFAULT_LEASE_S, SourcingLock
from cosmicman.sourcing.rejection_details import rejection_detail
from cosmicman.sourcing.sources import (
    ImageSource,
    ItemReader,
    ParquetSource,
    SourceItem,
    StoredItemsRecorder,
)

ITEM_SCHEMA = {
    "position": pl.Int64,
    "source": pl.Utf8,
    "source_id": pl.Utf8,
    "url": pl.Utf8,
    "licence": pl.Utf8,
    "alt_text": pl.Utf8,
    "author": pl.Utf8,
    "page_url": pl.Utf8,
    "stated_width": pl.Int32,
    "stated_height": pl.Int32,
    "url_attempt": pl.Int32,
}
OUTCOME_SCHEMA = {
    **ITEM_SCHEMA,
    "status": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "http_status": pl.Int32,
    "fetch_attempts": pl.Int32,
    "sha256": pl.Utf8,
    "blob_key": pl.Utf8,
    "ext": pl.Utf8,
    "width": pl.Int32,
    "height": pl.Int32,
    "n_bytes": pl.Int64,
    "phash": pl.Utf8,
    "duplicate_of": pl.Utf8,
    "batch": pl.Utf8,
}
RAW_COLUMNS = [
    "sha256",
    "blob_key",
    "ext",
    "source",
    "source_id",
    "url",
    "licence",
    "alt_text",
    "author",
    "page_url",
    "width",
    "height",
    "n_bytes",
    "phash",
    "batch",
]
STATUSES = ("stored", "duplicate", "near_duplicate", "failed")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """- ``chunk_size``: outcomes per durable chunk (the most a kill can make us redo).
    - ``workers``: decode-check processes; None picks 0 (in-process) for batches under 256 items, else
      one per core.
    - ``resize_to``: store a re-encoded copy whose smaller side is this many pixels (img2dataset's
      ``keep_ratio``) instead of the original bytes.
    - ``near_dup_distance``: phash Hamming radius of a near-duplicate (None: exact duplicates only).
    - ``max_url_attempts``: batches that may try a URL whose failure is retryable.
    - ``max_requeue_fraction``: share of a batch's size given to re-queued URLs.
    - ``blob_writers``: threads writing new blobs (an object store's PUT is mostly waiting; 0: inline).
    - ``lock_lease_s``: how long the pool's sourcing lock outlives a holder that stopped renewing it (died).
    """

    chunk_size: int = 512
    workers: int | None = None
    resize_to: int | None = None
    near_dup_distance: int | None = 4
    max_url_attempts: int = 3
    max_requeue_fraction: float = 0.25
    blob_writers: int = 8
    lock_lease_s: float = DEFAULT_LEASE_S
    fetch: FetchConfig = field(default_factory=FetchConfig)


@dataclass
class BatchReport:
    batch: str
    requested: int
    counts: dict[str, int]
    failed_by_reason: dict[str, int]
    per_source: dict[str, int]
    requeued: int
    blobs_created: int
    resumed_outcomes: int
    # stored outcomes that batches finished while this one ran had admitted first (turned into duplicates)
    admitted_elsewhere: int
    elapsed_s: float
    outcomes_per_s: float  # steady: from this run's first outcome to its last (start-up and finish left out)
    phash_scheme: str  # the pool's (cosmicman.core.imageio.PHASH_SCHEMES)
    raw: pl.DataFrame = field(repr=False)
    log: pl.DataFrame = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("raw", "log")}


def _item_row(position: int, item: SourceItem, url_attempt: int) -> dict:
    return {
        "position": position,
        "source": item.source,
        "source_id": item.source_id,
        "url": item.url,
        "licence": item.licence,
        "alt_text": item.alt_text,
        "author": item.author,
        "page_url": item.page_url,
        "stated_width": item.width,
        "stated_height": item.height,
        "url_attempt": url_attempt,
    }


def _row_item(row: dict) -> SourceItem:
    return SourceItem(
        row["source"],
        row["source_id"],
        row["url"],
        row["licence"],
        row["alt_text"],
        row["author"],
        row["page_url"],
        row["stated_width"],
        row["stated_height"],
    )


def plan_batch(
    store: Store, batch: str, batch_index: int, sources: Sequence[tuple[ImageSource, int]], config: IngestConfig
) -> pl.DataFrame:
    """The batch's items, written once: re-queued failed URLs first, then each source's share. Run under the
    pool's sourcing lock (it reads the failed-URL table and the sources' shared cursors)."""
    key = staged_plan_key(batch)
    if store.exists(key):
        return store.read_table(key)
    rows: list[dict] = []
    requeue = urls_to_requeue(store, batch, sum(size for _, size in sources), config.max_requeue_fraction)
    for r in requeue.iter_rows(named=True):
        rows.append(_item_row(len(rows), _row_item(r), r["attempts"] + 1))
    for source, size in sources:
        for item in source.plan(batch_index, size, store):
            rows.append(_item_row(len(rows), item, 1))
    plan = pl.DataFrame(rows, schema=ITEM_SCHEMA)
    store.write_table(key, plan)
    return plan


@dataclass
class _Fetched:
    position: int
    data: bytes | None
    reason: str | None = None
    detail: str = ""
    http_status: int | None = None
    attempts: int = 1


def _fetch_items(
    plan_rows: list[dict], sources: Sequence[ImageSource], fetch_config: FetchConfig
) -> Iterator[_Fetched]:
    """Bytes for each pending item: what sources read themselves (dataset files, renders) first, then
    HTTP downloads. Any other URL that is not http(s) is a ``bad_url``."""
    readers = {s.name: s for s in sources if isinstance(s, ItemReader)}
    http = []
    for r in plan_rows:
        reader = readers.get(r["source"])
        if reader is None or (r["url"] or "").startswith(("http://", "https://")):
            http.append(r)  # fetch_all rejects what is not http(s) as bad_url
            continue
        try:
            yield _Fetched(r["position"], reader.read(_row_item(r)))
        except RefusedRead as exc:
            yield _Fetched(r["position"], None, exc.reason, exc.detail)
        except FileNotFoundError as exc:
            yield _Fetched(r["position"], None, "missing_file", str(exc))
        except (OSError, ValueError) as exc:
            yield _Fetched(r["position"], None, "read_error", f"{type(exc).__name__}: {exc}")
    for res in fetch_all(((str(r["position"]), r["url"]) for r in http), fetch_config):
        yield _Fetched(
            int(res.key),
            res.data,
            res.reason,
            "" if res.data is not None else res.reason or "",
            res.http_status,
            res.attempts,
        )


def claimed_extension(url: str | None) -> str | None:
    """The image extension a URL's path ends in, if any: a mismatch with the bytes is recorded."""
    suffix = posixpath.splitext(urllib.parse.urlsplit(url or "").path)[1].lower()
    return suffix.lstrip(".") if suffix in IMAGE_SUFFIXES else None


class _SteadyRate:
    """Outcomes a second between the first and the last one: the rate a long batch runs at."""

    def __init__(self) -> None:
        self.count, self.first, self.last = 0, 0.0, 0.0

    def tick(self) -> None:
        self.last = time.monotonic()
        if self.count == 0:
            self.first = self.last
        self.count += 1

    @property
    def per_s(self) -> float:
        return (self.count - 1) / (self.last - self.first) if self.count > 1 and self.last > self.first else 0.0


class _ChunkWriter:
    """Outcome rows in completion order, flushed atomically every ``size`` rows."""

    def __init__(self, store: Store, batch: str, size: int, first_index: int) -> None:
        self.store, self.size, self.next_index = store, size, first_index
        self.prefix = f"{sourcing_staging_prefix(batch)}/done"
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.write_table(
                f"{self.prefix}/chunk-{self.next_index:05d}.parquet", pl.DataFrame(self.rows, schema=OUTCOME_SCHEMA)
            )
            self.next_index += 1
            self.rows = []


def source_batch(
    store: Store,
    batch: str,
    batch_index: int,
    sources: Sequence[tuple[ImageSource, int]],
    config: IngestConfig = IngestConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> BatchReport:
    """Run (or resume, or re-read) one sourcing batch; see the module docstring."""
    t0 = time.monotonic()
    if store.exists(sourcing_log_key(batch)) and not store.exists(staged_plan_key(batch)):
        log = store.read_table(sourcing_log_key(batch))
        return _report(store, batch, log, 0, 0, 0, t0, pool_phash_scheme(store), 0.0)
    phash_scheme = pool_phash_scheme(store)  # before the plan: a pool it cannot hash for gets no staged batch
    lock = SourcingLock(store, batch, config.lock_lease_s)
    with lock.hold():
        plan = plan_batch(store, batch, batch_index, sources, config)
        record_seen_segments(store, batch)
    done_keys = store.list(f"{sourcing_staging_prefix(batch)}/done")
    done = pl.concat([store.read_table(k) for k in done_keys]) if done_keys else pl.DataFrame(schema=OUTCOME_SCHEMA)
    index = PoolIndex.load(store, config.near_dup_distance, exclude_batch=batch)
    for sha, phash in done.filter(pl.col("status") == "stored").select("sha256", "phash").iter_rows():
        index.add(sha, phash)
    finished = set(done["position"].to_list())
    pending = [r for r in plan.iter_rows(named=True) if r["position"] not in finished]
    by_position = {r["position"]: r for r in pending}
    workers = config.workers if config.workers is not None else (0 if len(pending) < 256 else os.cpu_count() or 1)
    writer = _ChunkWriter(store, batch, config.chunk_size, len(done_keys))
    checker: CheckPool[_Fetched] = CheckPool(workers, config.resize_to, phash_scheme)
    n_done, total = len(finished), len(plan)

    rate = _SteadyRate()

    def committed(row: dict) -> None:
        nonlocal n_done
        writer.add(row)
        n_done += 1
        rate.tick()
        if progress:
            progress(n_done, total)

    commits = OrderedCommits(store, config.blob_writers, committed)

    def outcome(fetched: _Fetched, data: bytes | None, checked: CheckedImage | None) -> None:
        row = {
            **by_position.pop(fetched.position),
            "batch": batch,
            "http_status": fetched.http_status,
            "fetch_attempts": fetched.attempts,
            "detail": fetched.detail,
        }
        if data is None or checked is None:
            row.update(status="failed", reason=fetched.reason)
        elif checked.reason is not None:
            row.update(
                status="failed",
                reason=checked.reason,
                detail=rejection_detail(checked.reason, checked.ext, len(data)),
                sha256=checked.sha256,
                n_bytes=len(data),
            )
        else:
            stored = checked.stored_bytes if checked.stored_bytes is not None else data
            sha = checked.sha256 if checked.stored_bytes is None else sha256_hex(stored)
            row.update(
                sha256=sha,
                ext=checked.ext,
                width=checked.width,
                height=checked.height,
                n_bytes=len(stored),
                phash=checked.phash,
                detail=checked.detail,
            )
            match = index.match(sha, checked.phash)
            if match is not None:
                row.update(status=match.kind, duplicate_of=match.sha256 or f"{match.sha_prefix:016x}")
            else:
                index.add(sha, checked.phash)  # decided now: the next item is compared with it
                row.update(status="stored")
                commits.add(row, (stored, checked.ext, sha))
                return
        commits.add(row)

    try:
        for fetched in _fetch_items(pending, [s for s, _ in sources], config.fetch):
            if fetched.data is None:
                outcome(fetched, None, None)
                continue
            claimed = claimed_extension(by_position[fetched.position]["url"])
            for item in checker.submit(fetched, fetched.data, claimed):
                outcome(*item)
        for item in checker.drain():
            outcome(*item)
        commits.drain()
        writer.flush()
    finally:
        checker.close()
        commits.close()
    log = pl.concat([store.read_table(k) for k in store.list(f"{sourcing_staging_prefix(batch)}/done")]).sort(
        "position"
    )
    if len(log) != len(plan):
        raise RuntimeError(f"batch {batch}: {len(log)} outcomes for {len(plan)} planned items")
    log = _resolve_near_duplicates(store, log)
    with lock.hold():
        log, admitted_elsewhere = admit(log, segments_since_start(store, batch), config.near_dup_distance)
        if admitted_elsewhere:
            logger.info(f"{batch}: {admitted_elsewhere} images were admitted first by batches finished meanwhile")
        lock.confirm()
        _finish(store, batch, log, sources, config, phash_scheme)
    return _report(store, batch, log, commits.created, len(finished), admitted_elsewhere, t0, phash_scheme, rate.per_s)


def _resolve_near_duplicates(store: Store, log: pl.DataFrame) -> pl.DataFrame:
    """Replace sha prefixes (16 hex digits) in ``duplicate_of`` by the full sha256 from the index."""
    short = [v for v in log["duplicate_of"].drop_nulls().to_list() if len(v) == 16]
    if not short:
        return log
    full = {f"{k:016x}": v for k, v in resolve_shas(store, {int(v, 16) for v in short}).items()}
    return log.with_columns(pl.col("duplicate_of").replace(full))


def _finish(
    store: Store,
    batch: str,
    log: pl.DataFrame,
    sources: Sequence[tuple[ImageSource, int]],
    config: IngestConfig,
    phash_scheme: str,
) -> None:
    stored = log.filter(pl.col("status") == "stored")
    store.write_table(raw_table_key(batch), stored.select(RAW_COLUMNS))
    for source, _ in sources:
        if isinstance(source, StoredItemsRecorder):
            mine = stored.filter(pl.col("source") == source.name).iter_rows(named=True)
            source.record_stored(batch, [(_row_item(r), r["sha256"]) for r in mine], store)
    store.write_table(sourcing_log_key(batch), log)
    write_segment(store, batch, stored.select("sha256", "phash"), phash_scheme)
    update_failed_urls(store, batch, log, config.max_url_attempts)
    store.delete(sourcing_staging_prefix(batch))


def _report(
    store: Store,
    batch: str,
    log: pl.DataFrame,
    created: int,
    resumed: int,
    admitted_elsewhere: int,
    t0: float,
    phash_scheme: str,
    outcomes_per_s: float,
) -> BatchReport:
    counts = Counter(log["status"].to_list())
    failed = log.filter(pl.col("status") == "failed")
    return BatchReport(
        batch,
        len(log),
        {s: counts.get(s, 0) for s in STATUSES},
        dict(sorted(Counter(failed["reason"].to_list()).items())),
        dict(sorted(Counter(log["source"].to_list()).items())),
        int((log["url_attempt"] > 1).sum()),
        created,
        resumed,
        admitted_elsewhere,
        time.monotonic() - t0,
        outcomes_per_s,
        phash_scheme,
        log.filter(pl.col("status") == "stored").select(RAW_COLUMNS),
        log,
    )


def main(argv: list[str] | None = None) -> int:
    """Source one batch from a LAION-style parquet into a store; the last stdout line is a JSON summary."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--parquet", required=True, help="parquet file or folder (local, file://, s3://)")
    p.add_argument("--store", required=True, help="store root URL")
    p.add_argument("--batch", default="batch-00000", help="batch key, batch-NNNNN")
    p.add_argument("--limit", type=int, required=True, help="rows per batch")
    p.add_argument("--resize-to", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--near-dup-distance", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=IngestConfig.chunk_size)
    p.add_argument("--max-in-flight", type=int, default=FetchConfig.max_in_flight)
    p.add_argument("--per-host", type=int, default=FetchConfig.per_host)
    args = p.parse_args(argv)
    number = args.batch.rpartition("-")[2]
    if not args.batch.startswith("batch-") or not number.isdigit():
        p.error(f"--batch must be batch-NNNNN (e.g. batch-00000), got {args.batch!r}")
    index = int(number)
    fetch = dataclasses.replace(FetchConfig(), max_in_flight=args.max_in_flight, per_host=args.per_host)
    config = IngestConfig(
        workers=args.workers,
        resize_to=args.resize_to,
        near_dup_distance=args.near_dup_distance,
        chunk_size=args.chunk_size,
        fetch=fetch,
    )
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 5 or done == total:
            last[0] = time.monotonic()
            print(f"sourcing {args.batch}: {done}/{total}", file=sys.stderr, flush=True)

    try:
        report = source_batch(
            Store(args.store), args.batch, index, [(ParquetSource(args.parquet), args.limit)], config, progress
        )
    except (
        FileNotFoundError,
        UnknownPhashScheme,
        ExclusiveCreateUnsupported,
    ) as exc:  # a wrong --parquet or --store, a stale pool: one line
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
