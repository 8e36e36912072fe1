"""Web image APIs (Flickr, Unsplash, Pixabay) as batch sources of ``SourceItem``s.

``ApiSource`` plans batches on top of a client (:mod:`cosmicman.sourcing.api_client`): it walks the
configured terms page by page, retries failed pages with backoff, keeps to the API's rate limit, and
records in the store where every batch started and ended, so a re-planned batch returns the items it
returned the first time and the next batch continues after them. It also reports downloads where an
API's terms require it (Unsplash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import polars as pl

from cosmicman.core.keys import api_batch_key, api_batches_prefix, api_cache_prefix, api_rate_limit_key
from cosmicman.core.store import Store
from cosmicman.sourcing.api_client import (
    PAGE_RETRYABLE_REASONS,
    ApiError,
    ApiKeyRejected,
    SearchPage,
    WebApiClient,
)
from cosmicman.sourcing.fetch import backoff_delay, parse_retry_after
from cosmicman.sourcing.rate_limit import (
    Clock,
    RateLimitExhausted,
    Sleep,
    SlidingWindowLimiter,
)
from cosmicman.sourcing.sources import ImageSource, SourceItem

log = logging.getLogger(__name__)


class ResponseCache:
    """API response bodies in the store, keyed by the request without the key, reused for ``ttl_s``."""

    def __init__(self, store: Store, prefix: str, ttl_s: float, clock: Clock) -> None:
        self.store = store
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.clock = clock

    def key(self, request: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        return f"{self.prefix}/{digest}.json"

    def get(self, request: dict[str, Any]) -> Any | None:
        key = self.key(request)
        if not self.store.exists(key):
            return None
        entry = self.store.read_json(key)
        return entry["body"] if self.clock() - entry["fetched_at"] < self.ttl_s else None

    def put(self, request: dict[str, Any], body: Any) -> None:
        self.store.write_json(self.key(request), {"fetched_at": self.clock(), "request": request, "body": body})


@dataclass
class PlanReport:
    """What planning one batch (or tracking its downloads) cost and met. ``stopped_because``:
    size_reached, terms_exhausted, rate_limited or auth_failed (``done`` for tracking)."""

    source: str
    batch_index: int
    items: int = 0
    queries: int = 0  # HTTP requests sent (cache hits excluded)
    cache_hits: int = 0
    retries: int = 0
    waited_s: float = 0.0  # for the rate limit and between retries
    pages_failed: dict[str, int] = field(default_factory=dict)  # pages given up on, by reason
    duplicates_skipped: int = 0
    photos_skipped: int = 0  # listed without a usable image URL
    warnings: list[str] = field(default_factory=list)
    stopped_because: str = ""
    replayed: bool = False  # the batch was planned before: its stored items were returned

    def warn(self, message: str) -> None:
        log.warning("%s batch %d: %s", self.source, self.batch_index, message)
        self.warnings.append(message)


@dataclass
class Cursor:
    """Where the walk over terms and pages stands between batches."""

    term: str | None = None  # the term being walked
    page: int = 1  # its next page to fetch
    last_page: int | None = None
    seen_ids: list[str] = field(default_factory=list)  # ids this term already yielded
    pages_without_items: int = 0  # this term's latest pages in a row that failed or held no usable new photo
    finished_terms: list[str] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # fetched items not handed out yet
    pending_download_locations: dict[str, str] = field(default_factory=dict)

    def finish_term(self) -> None:
        if self.term is not None:
            self.finished_terms.append(self.term)
        self.term, self.page, self.last_page, self.seen_ids, self.pages_without_items = None, 1, None, [], 0


T = TypeVar("T")


@dataclass
class _Plan:
    """The state of one ``plan`` call."""

    cursor: Cursor
    report: PlanReport
    limiter: SlidingWindowLimiter
    cache: ResponseCache | None


class ApiSource:
    """Batches of ``SourceItem``s from one web API, walking ``terms`` in order, each page by page.

    Store keys, under ``sourcing/apis/``: ``<name>/batches/<batch:06d>.json`` (a batch's start and end
    cursor, items, report), ``<client.name>/rate_limit.json`` (the call log shared by every source
    using that API) and ``<client.name>/cache/<sha256>.json`` (cached responses, Pixabay).
    """

    def __init__(
        self,
        client: WebApiClient,
        terms: Sequence[str],
        *,
        name: str | None = None,
        max_wait_s: float = 60.0,
        retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_pages_without_items: int = 3,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not terms:
            raise ValueError(f"{client.name}: no search terms")
        self.client = client
        self.terms = list(dict.fromkeys(terms))
        self.name = name or client.name
        self.max_wait_s = max_wait_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_pages_without_items = max_pages_without_items
        self.clock = clock
        self.sleep = sleep
        self.last_report: PlanReport | None = None

    def batch_key(self, batch_index: int) -> str:
        return api_batch_key(self.name, batch_index)

    def _limiter(self, store: Store) -> SlidingWindowLimiter:
        return SlidingWindowLimiter(
            store,
            api_rate_limit_key(self.client.name),
            self.client.rate_limit,
            max_wait_s=self.max_wait_s,
            clock=self.clock,
            sleep=self.sleep,
        )

    def plan(self, batch_index: int, size: int, store: Store) -> list[SourceItem]:
        """Up to ``size`` items for batch ``batch_index``; fewer when the terms run out or the rate
        limit would make it wait over ``max_wait_s`` (``last_report.stopped_because`` says which).

        A batch planned before returns its stored items without a request, whatever ``size`` is now
        (its items may already be ingested). Batch b starts where the latest batch planned before it
        ended. Raises ``ApiKeyRejected`` when the API refuses the key.
        """
        if size <= 0:
            raise ValueError(f"batch size must be positive, got {size}")
        key = self.batch_key(batch_index)
        if store.exists(key):
            record = store.read_json(key)
            self.last_report = PlanReport(**{**record["report"], "replayed": True})
            return [SourceItem(**item) for item in record["items"]]
        start = self._start_cursor(batch_index, store)
        state = _Plan(
            Cursor(**asdict(start)),
            PlanReport(self.name, batch_index),
            self._limiter(store),
            ResponseCache(store, api_cache_prefix(self.client.name), self.client.cache_ttl_s, self.clock)
            if self.client.cache_ttl_s
            else None,
        )
        self.last_report = state.report
        items, locations = self._fill(state, size)
        state.report.items = len(items)
        store.write_json(
            key,
            {
                "batch": batch_index,
                "size": size,
                "start": asdict(start),
                "end": asdict(state.cursor),
                "items": [asdict(i) for i in items],
                "download_locations": locations,
                "report": asdict(state.report),
            },
        )
        return items

    def _start_cursor(self, batch_index: int, store: Store) -> Cursor:
        """Where the latest batch planned before ``batch_index`` ended: a source added to the config
        later, or left out of some batches, goes on from its own last batch."""
        prefix = api_batches_prefix(self.name)
        earlier = [k for k in store.list(prefix) if int(k.rsplit("/", 1)[1].removesuffix(".json")) < batch_index]
        return Cursor(**store.read_json(max(earlier))["end"]) if earlier else Cursor()

    def _current_term(self, cursor: Cursor, report: PlanReport) -> str | None:
        if cursor.term is not None and cursor.term not in self.terms:
            report.warn(f"term {cursor.term!r} is no longer configured; leaving it")
            cursor.finish_term()
        if cursor.term is None:
            cursor.term = next((t for t in self.terms if t not in cursor.finished_terms), None)
        return cursor.term

    def _fill(self, state: _Plan, size: int) -> tuple[list[SourceItem], dict[str, str]]:
        cursor, report = state.cursor, state.report
        items: list[SourceItem] = []
        locations: dict[str, str] = {}
        taken: set[str] = set()
        while len(items) < size:
            if cursor.pending:
                item = SourceItem(**cursor.pending.pop(0))
                location = cursor.pending_download_locations.pop(item.source_id, None)
                if item.source_id in taken:  # the same photo under two terms
                    report.duplicates_skipped += 1
                    continue
                taken.add(item.source_id)
                items.append(item)
                if location:
                    locations[item.source_id] = location
                continue
            term = self._current_term(cursor, report)
            if term is None:
                report.stopped_because = "terms_exhausted"
                return items, locations
            try:
                page = self._search(state, term, cursor.page)
            except RateLimitExhausted as exc:
                report.warn(f"stopped: {exc}, more than the {self.max_wait_s:.0f}s allowed")
                report.stopped_because = "rate_limited"
                return items, locations
            self._advance(cursor, term, page, report)
        report.stopped_because = "size_reached"
        return items, locations

    def _advance(self, cursor: Cursor, term: str, page: SearchPage | None, report: PlanReport) -> None:
        """Move the cursor past one fetched (or failed, ``None``) page of ``term``."""
        if page is not None and page.page is not None and page.page != cursor.page:
            report.warn(f"pagination loop in term {term!r}: asked for page {cursor.page}, got page {page.page}")
            cursor.finish_term()
            return
        fresh: list[SourceItem] = []
        if page is not None:
            seen = set(cursor.seen_ids)
            for item in page.items:
                if item.source_id not in seen:
                    seen.add(item.source_id)
                    fresh.append(item)
            if page.items and not fresh:
                report.warn(f"pagination loop in term {term!r}: page {cursor.page} repeats only photos already seen")
                cursor.finish_term()
                return
            report.duplicates_skipped += len(page.items) - len(fresh)
            report.photos_skipped += page.skipped
            cursor.seen_ids.extend(item.source_id for item in fresh)
            cursor.pending.extend(asdict(item) for item in fresh)
            cursor.pending_download_locations.update(
                {
                    i.source_id: page.download_locations[i.source_id]
                    for i in fresh
                    if i.source_id in page.download_locations
                }
            )
            cursor.last_page = page.last_page
        cursor.pages_without_items = 0 if fresh else cursor.pages_without_items + 1
        if page is not None and page.photos_listed == 0:  # past the last result
            cursor.finish_term()
        elif cursor.pages_without_items >= self.max_pages_without_items:
            report.warn(
                f"leaving term {term!r} after {cursor.pages_without_items} pages in a row "
                "that failed or held no usable photo"
            )
            cursor.finish_term()
        elif cursor.last_page is not None and cursor.page >= cursor.last_page:
            cursor.finish_term()
        else:
            cursor.page += 1

    def _search(self, state: _Plan, term: str, page_number: int) -> SearchPage | None:
        """One page of ``term`` from the cache or the API; ``None`` when it still fails after retries."""
        params = self.client.search_params(term, page_number)
        request = {"url": self.client.search_url, "params": params}
        if state.cache is not None and (body := state.cache.get(request)) is not None:
            state.report.cache_hits += 1
            return self.client.parse_search(body)
        what = f"{self.name} {term!r} page {page_number}"
        try:
            fetched = self._call(
                state.limiter, state.report, self.client.search_url, params, what, self.client.parse_search
            )
        except ApiError:  # page_out_of_range: the result count shrank since the last page was read
            return SearchPage([], last_page=page_number - 1)
        if fetched is None:
            return None
        body, page = fetched
        if state.cache is not None:
            state.cache.put(request, body)
        return page

    def _call(
        self,
        limiter: SlidingWindowLimiter,
        report: PlanReport,
        url: str,
        params: dict[str, str],
        what: str,
        parse: Callable[[Any], T],
    ) -> tuple[Any, T] | None:
        """GET and parse with retries inside the rate limit. Returns ``None`` (recorded in the report)
        when the last try fails for a retryable reason or any try for another; raises
        ``ApiKeyRejected`` for a refused key and ``ApiError`` for ``page_out_of_range``."""
        error: ApiError | None = None
        for attempt in range(1, self.retries + 2):
            if error is not None:
                report.retries += 1
                report.waited_s += self._back_off(limiter, error, attempt - 1)
            report.waited_s += limiter.acquire()
            report.queries += 1
            try:
                response = self.client.get(url, params, what)
                limiter.observe(response.remaining, response.reset_s)
                return response.body, parse(response.body)
            except ApiError as exc:
                if exc.reason == "auth_failed":
                    report.stopped_because = "auth_failed"
                    raise ApiKeyRejected(f"{self.client.name} refused the API key: {exc}") from None
                if exc.reason == "page_out_of_range":
                    raise
                error = exc
                if exc.reason not in PAGE_RETRYABLE_REASONS:
                    break
        assert error is not None  # the loop above tries at least once
        report.pages_failed[error.reason] = report.pages_failed.get(error.reason, 0) + 1
        report.warn(f"gave up after {attempt} tries: {error}")
        return None

    def _back_off(self, limiter: SlidingWindowLimiter, error: ApiError, attempt: int) -> float:
        """Wait before retry number ``attempt``; returns the seconds slept here."""
        if error.reason == "rate_limited":
            # A pause in the shared limiter, not a sleep: other batches and processes obey it too, and
            # the next acquire stops the plan when the server asks for longer than max_wait_s.
            told = parse_retry_after(error.retry_after)
            if told is None:
                told = error.reset_s
            if told is None and error.remaining == 0:
                told = self.client.rate_limit.period_s
            if told is None:
                told = backoff_delay(attempt, None, self.backoff_base_s, self.backoff_max_s)
            limiter.pause(told)
            return 0.0
        delay = backoff_delay(attempt, error.retry_after, self.backoff_base_s, self.backoff_max_s)
        self.sleep(delay)
        return delay

    def download_locations(self, batch_index: int, store: Store) -> dict[str, str]:
        """Unsplash's tracking URL per item of a planned batch (empty for the other APIs)."""
        return store.read_json(self.batch_key(batch_index))["download_locations"]

    def track_downloads(self, batch_index: int, source_ids: Iterable[str], store: Store) -> PlanReport:
        """Tell Unsplash which photos of a batch were downloaded, as its API guidelines require
        (``links.download_location``, authorised), within the same rate limit and retries.
        ``items`` in the report counts the downloads tracked."""
        locations = self.download_locations(batch_index, store)
        report = PlanReport(self.name, batch_index)
        limiter = self._limiter(store)
        for source_id in source_ids:
            if source_id not in locations:
                continue
            try:
                tracked = self._call(
                    limiter, report, locations[source_id], {}, f"{self.name} download of {source_id}", lambda body: body
                )
            except RateLimitExhausted as exc:
                report.warn(f"stopped: {exc}")
                report.stopped_because = "rate_limited"
                return report
            if tracked is not None:
                report.items += 1
        report.stopped_because = "done"
        return report


def report_downloads(
    store: Store, batch_index: int, sources: Sequence[tuple[ImageSource, int]], stored: pl.DataFrame
) -> int:
    """Tell each web API which of its photos a batch stored, where its terms require it (Unsplash's
    ``download_location``); ``stored`` has the batch's ``source`` and ``source_id`` columns."""
    tracked = 0
    for source, _ in sources:
        if isinstance(source, ApiSource):
            ids = stored.filter(pl.col("source") == source.name)["source_id"].to_list()
            tracked += source.track_downloads(batch_index, ids, store).items
    return tracked
