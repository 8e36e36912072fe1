"""Web image APIs (Flickr, Unsplash, Pixabay) as batch sources of ``SourceItem``s.

A client speaks one API: it builds a search request, sends it once, classifies what came back (a
reason from ``PAGE_RETRYABLE_REASONS`` or a final one) and parses a page of photos. ``ApiSource`` plans
batches on top of a client: it walks the configured terms page by page, retries failed pages with
backoff, keeps to the API's rate limit, and records in the store where every batch started and ended,
so a re-planned batch returns the items it returned the first time and the next batch continues after
them. Nothing here downloads images: the ingest fetches each item's ``url``.

Secrets: Flickr and Pixabay take the key in the query string, Unsplash in a header. The key is never
put in an exception, a log record (httpx logs full request URLs, so its logger gets a redacting
filter) or the store (cached requests are keyed without it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import httpx
import polars as pl

from cosmicman.core.store import Store
from cosmicman.sourcing.fetch import RETRYABLE_REASONS, backoff_delay, parse_retry_after
from cosmicman.sourcing.rate_limit import (
    FLICKR_RATE_LIMIT,
    PIXABAY_RATE_LIMIT,
    UNSPLASH_DEMO_RATE_LIMIT,
    Clock,
    RateLimit,
    RateLimitExhausted,
    Sleep,
    SlidingWindowLimiter,
)
from cosmicman.sourcing.sources import ImageSource, SourceItem, int_or_none

log = logging.getLogger(__name__)

# A page failing for these reasons is tried again; any other reason is final for that page.
PAGE_RETRYABLE_REASONS = RETRYABLE_REASONS | {"malformed_json", "html_page", "unexpected_json"}

_SECRET_PARAM = re.compile(r"\b(api_key|key|client_id)=[^&\s\"'#]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every key-bearing query parameter replaced."""
    return _SECRET_PARAM.sub(r"\1=REDACTED", text)


class _RedactQueryKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# httpx logs every request's full URL at INFO; for Flickr and Pixabay that URL carries the key.
logging.getLogger("httpx").addFilter(_RedactQueryKeys())


class ApiError(Exception):
    """One request that did not yield a usable page. ``reason`` is a short machine-readable word;
    the message never contains the key."""

    def __init__(self, reason: str, message: str, *, retry_after: str | None = None,
                 remaining: int | None = None, reset_s: float | None = None) -> None:
        super().__init__(redact(message))
        self.reason = reason
        self.retry_after = retry_after
        self.remaining = remaining
        self.reset_s = reset_s


class ApiKeyRejected(Exception):
    """The API refused the key: a configuration error, so planning stops loudly instead of
    recording an empty batch."""


@dataclass(frozen=True)
class ApiResponse:
    body: Any
    remaining: int | None  # the server's count of calls left in its window, when it says
    reset_s: float | None  # seconds until its window resets, when it says


@dataclass(frozen=True)
class SearchPage:
    items: list[SourceItem]
    last_page: int | None  # the API's number of pages for this search
    page: int | None = None  # the page the API says it returned (Flickr states it)
    skipped: int = 0  # photos the API listed without a usable image URL
    download_locations: dict[str, str] = field(default_factory=dict)  # Unsplash: source_id -> tracking URL

    @property
    def photos_listed(self) -> int:
        return len(self.items) + self.skipped


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class WebApiClient(ABC):
    """What the three APIs share: one httpx connection pool, one-attempt GETs, status classification.

    Subclasses set the class attributes and implement ``search_params``, ``_parse_search`` and
    ``_authorize``. Not a dataclass on purpose: a generated ``repr`` would print the key.
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    search_path: ClassVar[str]
    per_page_range: ClassVar[tuple[int, int]]
    # How long a response may be reused instead of asking again (None: never cached).
    cache_ttl_s: ClassVar[float | None] = None

    def __init__(self, api_key: str, *, base_url: str | None, per_page: int, rate_limit: RateLimit,
                 timeout_s: float) -> None:
        if not api_key:
            raise ValueError(f"{self.name}: the API key is empty")
        low, high = self.per_page_range
        if not low <= per_page <= high:
            raise ValueError(f"{self.name}: per_page must be in [{low}, {high}], got {per_page}")
        self._api_key = api_key
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.per_page = per_page
        self.rate_limit = rate_limit
        self._http = httpx.Client(timeout=timeout_s, headers={"User-Agent": "cosmicman-prime"})

    @property
    def search_url(self) -> str:
        return self.base_url + self.search_path

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def search_params(self, term: str, page: int) -> dict[str, str]:
        """The search request's parameters without the key (also the cache's request identity)."""

    def parse_search(self, body: Any) -> SearchPage:
        """One page of photos; raises ``ApiError("unexpected_json")`` when the JSON has another shape."""
        try:
            return self._parse_search(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ApiError("unexpected_json", f"{self.name}: unexpected JSON ({type(exc).__name__}: {exc})") from None

    @abstractmethod
    def _parse_search(self, body: Any) -> SearchPage:
        """One page of photos from a JSON body (``KeyError`` and friends when it has another shape)."""

    @abstractmethod
    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """The query parameters and headers that carry the key."""

    def _rate_headers(self, headers: httpx.Headers) -> tuple[int | None, float | None]:
        return None, None

    def _client_error_reason(self, response: httpx.Response) -> str:
        return "auth_failed" if response.status_code in (401, 403) else "client_error"

    def _check_body(self, body: Any, what: str) -> None:
        """Errors an API reports inside a 200 response."""

    def get(self, url: str, params: dict[str, str], what: str) -> ApiResponse:
        """One GET with the key added; raises ``ApiError`` for anything but a JSON body."""
        query, headers = self._authorize(params)
        try:
            # Merged into the URL's own query: httpx 0.28 replaces a URL's query with ``params``, and
            # Unsplash's download_location carries an ``ixid`` that must be sent back.
            response = self._http.get(httpx.URL(url).copy_merge_params(query), headers=headers)
        except httpx.TimeoutException as exc:
            raise ApiError("timeout", f"{what}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ApiError("connection_error", f"{what}: {type(exc).__name__}: {exc}") from None
        remaining, reset_s = self._rate_headers(response.headers)
        status = response.status_code
        if status >= 400:
            reason = ("rate_limited" if status == 429 else "server_error" if status >= 500
                      else self._client_error_reason(response))
            raise ApiError(reason, f"{what}: HTTP {status} {response.text[:200]!r}",
                           retry_after=response.headers.get("Retry-After"), remaining=remaining, reset_s=reset_s)
        if "html" in response.headers.get("content-type", "") or response.text.lstrip().startswith("<"):
            raise ApiError("html_page", f"{what}: an HTML page instead of JSON (HTTP {status})")
        try:
            body = response.json()
        except ValueError:
            raise ApiError("malformed_json", f"{what}: malformed JSON {response.text[:80]!r}") from None
        self._check_body(body, what)
        return ApiResponse(body, remaining, reset_s)


# flickr.photos.licenses.getInfo; an id it does not list keeps its number in the name.
FLICKR_LICENCES = {
    "0": "All Rights Reserved",
    "1": "Attribution-NonCommercial-ShareAlike License",
    "2": "Attribution-NonCommercial License",
    "3": "Attribution-NonCommercial-NoDerivs License",
    "4": "Attribution License",
    "5": "Attribution-ShareAlike License",
    "6": "Attribution-NoDerivs License",
    "7": "No known copyright restrictions",
    "8": "United States Government Work",
    "9": "Public Domain Dedication (CC0)",
    "10": "Public Domain Mark",
}
# Flickr error codes: 100 invalid key, 105 service unavailable, 10 search unavailable.
_FLICKR_ERROR_REASONS = {100: "auth_failed", 105: "server_error", 10: "server_error"}
# The largest size first: o (original, when the owner allows it), l (1024 px), c (800 px).
_FLICKR_SIZES = ("o", "l", "c")


class FlickrClient(WebApiClient):
    name = "flickr"
    default_base_url = "https://api.flickr.com/services/rest"
    search_path = "/"
    per_page_range = (1, 500)

    def __init__(self, api_key: str, *, base_url: str | None = None, per_page: int = 500,
                 licences: Sequence[int] = (), sort: str = "date-posted-asc",
                 rate_limit: RateLimit = FLICKR_RATE_LIMIT, timeout_s: float = 30.0) -> None:
        """``per_page`` defaults to Flickr's maximum: the most photos per query of the hourly budget.
        ``licences``: only photos under these licence ids (empty: any). ``sort`` defaults to oldest
        first because new uploads then land after the pages already walked instead of shifting them."""
        super().__init__(api_key, base_url=base_url, per_page=per_page, rate_limit=rate_limit, timeout_s=timeout_s)
        self.licences = tuple(licences)
        self.sort = sort

    def search_params(self, term: str, page: int) -> dict[str, str]:
        params = {"method": "flickr.photos.search", "text": term, "media": "photos", "sort": self.sort,
                  "extras": "license,owner_name," + ",".join(f"url_{s}" for s in _FLICKR_SIZES),
                  "per_page": str(self.per_page), "page": str(page), "format": "json", "nojsoncallback": "1"}
        if self.licences:
            params["license"] = ",".join(str(i) for i in self.licences)
        return params

    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return {**params, "api_key": self._api_key}, {}

    def _check_body(self, body: Any, what: str) -> None:
        if isinstance(body, dict) and body.get("stat") == "fail":
            code = int_or_none(body.get("code"))
            raise ApiError(_FLICKR_ERROR_REASONS.get(code, "api_error"),
                           f"{what}: Flickr error {code}: {body.get('message', '')}")

    def _parse_search(self, body: Any) -> SearchPage:
        photos = body["photos"]
        items, skipped = [], 0
        for photo in photos["photo"]:
            size = next((s for s in _FLICKR_SIZES if photo.get(f"url_{s}")), None)
            if size is None:
                skipped += 1
                continue
            photo_id, owner = str(photo["id"]), str(photo["owner"])
            licence_id = str(photo.get("license", ""))
            items.append(SourceItem(
                source=self.name, source_id=photo_id, url=photo[f"url_{size}"],
                licence=FLICKR_LICENCES.get(licence_id, f"Flickr licence {licence_id or 'unknown'}"),
                alt_text=photo.get("title") or "", author=photo.get("ownername") or owner,
                page_url=f"https://www.flickr.com/photos/{owner}/{photo_id}",
                width=int_or_none(photo.get(f"width_{size}")), height=int_or_none(photo.get(f"height_{size}"))))
        return SearchPage(items, last_page=int(photos["pages"]), page=int(photos["page"]), skipped=skipped)


class UnsplashClient(WebApiClient):
    name = "unsplash"
    licence = "Unsplash License"
    default_base_url = "https://api.unsplash.com"
    search_path = "/search/photos"
    per_page_range = (1, 30)

    def __init__(self, api_key: str, *, base_url: str | None = None, per_page: int = 30,
                 rate_limit: RateLimit = UNSPLASH_DEMO_RATE_LIMIT, timeout_s: float = 30.0) -> None:
        """``rate_limit``: ``UNSPLASH_PRODUCTION_RATE_LIMIT`` once Unsplash approves the application."""
        super().__init__(api_key, base_url=base_url, per_page=per_page, rate_limit=rate_limit, timeout_s=timeout_s)

    def search_params(self, term: str, page: int) -> dict[str, str]:
        return {"query": term, "page": str(page), "per_page": str(self.per_page)}

    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return params, {"Authorization": f"Client-ID {self._api_key}", "Accept-Version": "v1"}

    def _rate_headers(self, headers: httpx.Headers) -> tuple[int | None, float | None]:
        # Unsplash states what is left of its hourly window but not when it resets.
        return int_or_none(headers.get("X-Ratelimit-Remaining")), None

    def _client_error_reason(self, response: httpx.Response) -> str:
        # A spent hourly budget answers 403 "Rate Limit Exceeded", not 429.
        if response.status_code == 403 and "rate limit" in response.text.lower():
            return "rate_limited"
        return super()._client_error_reason(response)

    def _parse_search(self, body: Any) -> SearchPage:
        items, skipped, locations = [], 0, {}
        for photo in body["results"]:
            urls, user, links = photo.get("urls") or {}, photo.get("user") or {}, photo.get("links") or {}
            url = urls.get("full") or urls.get("regular")
            if not url:
                skipped += 1
                continue
            photo_id = str(photo["id"])
            full = url == urls.get("full")  # width/height describe the full image, not the 1080 px "regular"
            items.append(SourceItem(
                source=self.name, source_id=photo_id, url=url, licence=self.licence,
                alt_text=photo.get("alt_description") or photo.get("description") or "",
                author=user.get("name") or user.get("username") or "unknown Unsplash user",
                page_url=links.get("html") or f"https://unsplash.com/photos/{photo_id}",
                width=int_or_none(photo.get("width")) if full else None,
                height=int_or_none(photo.get("height")) if full else None))
            if links.get("download_location"):
                locations[photo_id] = links["download_location"]
        return SearchPage(items, last_page=int(body["total_pages"]), skipped=skipped, download_locations=locations)


# Pixabay's largeImageURL is the photo scaled to at most 1280 px on its longer side.
_PIXABAY_LARGE_PX = 1280


class PixabayClient(WebApiClient):
    name = "pixabay"
    licence = "Pixabay Content License"
    default_base_url = "https://pixabay.com/api"
    search_path = "/"
    per_page_range = (3, 200)
    cache_ttl_s = 24 * 3600.0  # Pixabay's terms: cache responses for 24 hours

    def __init__(self, api_key: str, *, base_url: str | None = None, per_page: int = 200,
                 rate_limit: RateLimit = PIXABAY_RATE_LIMIT, timeout_s: float = 30.0) -> None:
        super().__init__(api_key, base_url=base_url, per_page=per_page, rate_limit=rate_limit, timeout_s=timeout_s)

    def search_params(self, term: str, page: int) -> dict[str, str]:
        return {"q": term, "image_type": "photo", "page": str(page), "per_page": str(self.per_page)}

    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return {"key": self._api_key, **params}, {}

    def _rate_headers(self, headers: httpx.Headers) -> tuple[int | None, float | None]:
        return int_or_none(headers.get("X-RateLimit-Remaining")), _float_or_none(headers.get("X-RateLimit-Reset"))

    def _client_error_reason(self, response: httpx.Response) -> str:
        text = response.text.lower()
        if "api key" in text:
            return "auth_failed"
        if "out of valid range" in text and '"page"' in text:
            return "page_out_of_range"
        return super()._client_error_reason(response)

    def _parse_search(self, body: Any) -> SearchPage:
        items = []
        for hit in body["hits"]:
            width, height = int(hit["imageWidth"]), int(hit["imageHeight"])
            scale = min(1.0, _PIXABAY_LARGE_PX / max(width, height, 1))
            items.append(SourceItem(
                source=self.name, source_id=str(hit["id"]), url=hit["largeImageURL"], licence=self.licence,
                alt_text=hit.get("tags") or "", author=hit.get("user") or f"Pixabay user {hit.get('user_id')}",
                page_url=hit["pageURL"], width=round(width * scale), height=round(height * scale)))
        return SearchPage(items, last_page=math.ceil(int(body["totalHits"]) / self.per_page))


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

    def __init__(self, client: WebApiClient, terms: Sequence[str], *, name: str | None = None,
                 max_wait_s: float = 60.0, retries: int = 3, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, max_pages_without_items: int = 3,
                 clock: Clock = time.time, sleep: Sleep = time.sleep) -> None:
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
        return f"sourcing/apis/{self.name}/batches/{batch_index:06d}.json"

    def _api_prefix(self) -> str:
        return f"sourcing/apis/{self.client.name}"

    def _limiter(self, store: Store) -> SlidingWindowLimiter:
        return SlidingWindowLimiter(store, f"{self._api_prefix()}/rate_limit.json", self.client.rate_limit,
                                    max_wait_s=self.max_wait_s, clock=self.clock, sleep=self.sleep)

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
        state = _Plan(Cursor(**asdict(start)), PlanReport(self.name, batch_index), self._limiter(store),
                      ResponseCache(store, f"{self._api_prefix()}/cache", self.client.cache_ttl_s, self.clock)
                      if self.client.cache_ttl_s else None)
        self.last_report = state.report
        items, locations = self._fill(state, size)
        state.report.items = len(items)
        store.write_json(key, {"batch": batch_index, "size": size, "start": asdict(start),
                               "end": asdict(state.cursor), "items": [asdict(i) for i in items],
                               "download_locations": locations, "report": asdict(state.report)})
        return items

    def _start_cursor(self, batch_index: int, store: Store) -> Cursor:
        """Where the latest batch planned before ``batch_index`` ended: a source added to the config
        later, or left out of some batches, goes on from its own last batch."""
        prefix = self.batch_key(0).rsplit("/", 1)[0]
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
            cursor.pending_download_locations.update({
                i.source_id: page.download_locations[i.source_id]
                for i in fresh if i.source_id in page.download_locations})
            cursor.last_page = page.last_page
        cursor.pages_without_items = 0 if fresh else cursor.pages_without_items + 1
        if page is not None and page.photos_listed == 0:  # past the last result
            cursor.finish_term()
        elif cursor.pages_without_items >= self.max_pages_without_items:
            report.warn(f"leaving term {term!r} after {cursor.pages_without_items} pages in a row "
                        "that failed or held no usable photo")
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
            fetched = self._call(state.limiter, state.report, self.client.search_url, params, what,
                                 self.client.parse_search)
        except ApiError:  # page_out_of_range: the result count shrank since the last page was read
            return SearchPage([], last_page=page_number - 1)
        if fetched is None:
            return None
        body, page = fetched
        if state.cache is not None:
            state.cache.put(request, body)
        return page

    def _call(self, limiter: SlidingWindowLimiter, report: PlanReport, url: str, params: dict[str, str],
              what: str, parse: Callable[[Any], T]) -> tuple[Any, T] | None:
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
                tracked = self._call(limiter, report, locations[source_id], {},
                                     f"{self.name} download of {source_id}", lambda body: body)
            except RateLimitExhausted as exc:
                report.warn(f"stopped: {exc}")
                report.stopped_because = "rate_limited"
                return report
            if tracked is not None:
                report.items += 1
        report.stopped_because = "done"
        return report


def report_downloads(store: Store, batch_index: int, sources: Sequence[tuple[ImageSource, int]],
                     stored: pl.DataFrame) -> int:
    """Tell each web API which of its photos a batch stored, where its terms require it (Unsplash's
    ``download_location``); ``stored`` has the batch's ``source`` and ``source_id`` columns."""
    tracked = 0
    for source, _ in sources:
        if isinstance(source, ApiSource):
            ids = stored.filter(pl.col("source") == source.name)["source_id"].to_list()
            tracked += source.track_downloads(batch_index, ids, store).items
    return tracked

