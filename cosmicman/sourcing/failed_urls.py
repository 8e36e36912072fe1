"""The failed-URL table (``sourcing/failed_urls.parquet``): every failure with its reason, and which to re-queue.

Retryable failures (timeouts, 5xx, 429, connection errors) are re-queued by later batches until
``max_url_attempts`` batches have tried them (img2dataset never retries a failed URL later, its issue #333).
The table is read and rewritten whole, so both its readers and its writer run under the pool's sourcing lock
(:mod:`cosmicman.sourcing.pool_lock`): a batch picks its re-queued URLs while planning and folds its outcomes in
while finishing. A URL another batch re-queued is in that batch's staged plan until it finishes, and that
batch's outcome is in the table before its staging folder goes, so a URL is never re-queued by two batches.
"""

from __future__ import annotations

import math
import posixpath

import polars as pl

from cosmicman.core.keys import FAILED_URLS_KEY, sourcing_staging_prefix
from cosmicman.core.store import Store
from cosmicman.sourcing.fetch import RETRYABLE_REASONS

FAILED_SCHEMA = {
    "url": pl.Utf8,
    "source": pl.Utf8,
    "source_id": pl.Utf8,
    "licence": pl.Utf8,
    "alt_text": pl.Utf8,
    "author": pl.Utf8,
    "page_url": pl.Utf8,
    "stated_width": pl.Int32,
    "stated_height": pl.Int32,
    "reason": pl.Utf8,
    "http_status": pl.Int32,
    "attempts": pl.Int32,
    "first_batch": pl.Utf8,
    "last_batch": pl.Utf8,
    "state": pl.Utf8,
}
PLAN_NAME = "plan.parquet"


def staged_plan_key(batch: str) -> str:
    return f"{sourcing_staging_prefix(batch)}/{PLAN_NAME}"


def requeued_by_batches_in_flight(store: Store, batch: str) -> set[str]:
    """URLs the staged plans of other unfinished batches re-queued (at most the batches in flight are read)."""
    staging = posixpath.dirname(sourcing_staging_prefix(batch))
    claimed: set[str] = set()
    for key in store.list(staging):
        if posixpath.basename(key) == PLAN_NAME and key != staged_plan_key(batch):
            plan = store.read_table(key, columns=["url", "url_attempt"])
            claimed.update(plan.filter(pl.col("url_attempt") > 1)["url"].to_list())
    return claimed


def urls_to_requeue(store: Store, batch: str, batch_size: int, max_requeue_fraction: float) -> pl.DataFrame:
    """Pending failed URLs for ``batch`` (oldest first, up to its share of the batch), none another batch in
    flight has taken."""
    if not store.exists(FAILED_URLS_KEY):
        return pl.DataFrame(schema=FAILED_SCHEMA)
    claimed = requeued_by_batches_in_flight(store, batch)
    pending = (
        store.read_table(FAILED_URLS_KEY)
        .filter((pl.col("state") == "pending") & (pl.col("last_batch") != batch) & ~pl.col("url").is_in(claimed))
        .sort("last_batch", "url")
    )
    return pending.head(math.floor(batch_size * max_requeue_fraction))


def update_failed_urls(store: Store, batch: str, log: pl.DataFrame, max_url_attempts: int) -> None:
    """Fold one batch's outcomes into the failed-URL table; idempotent (rows already at ``batch`` are kept)."""
    table = store.read_table(FAILED_URLS_KEY) if store.exists(FAILED_URLS_KEY) else pl.DataFrame(schema=FAILED_SCHEMA)
    known = {r["url"]: r for r in table.iter_rows(named=True)}
    changed = False
    for r in log.filter((pl.col("status") == "failed") | (pl.col("url_attempt") > 1)).iter_rows(named=True):
        prev = known.get(r["url"])
        if prev is not None and prev["last_batch"] == batch:
            continue
        if r["status"] != "failed":
            if prev is not None:
                known[r["url"]] = {**prev, "state": "recovered", "last_batch": batch}
                changed = True
            continue
        attempts = r["url_attempt"]
        state = (
            "pending"
            if r["reason"] in RETRYABLE_REASONS and attempts < max_url_attempts
            else "exhausted"
            if r["reason"] in RETRYABLE_REASONS
            else "final"
        )
        known[r["url"]] = {
            **{k: r[k] for k in FAILED_SCHEMA if k in r},
            "attempts": attempts,
            "state": state,
            "first_batch": prev["first_batch"] if prev else batch,
            "last_batch": batch,
        }
        changed = True
    if changed:
        store.write_table(FAILED_URLS_KEY, pl.DataFrame(list(known.values()), schema=FAILED_SCHEMA))
