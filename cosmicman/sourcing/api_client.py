"""The client side of a web image API: one search request sent, its answer classified, a page parsed.

A client speaks one API: it builds a search request, sends it once, classifies what came back (a
reason from ``PAGE_RETRYABLE_REASONS`` or a final one) and parses a page of photos. Nothing here
downloads images: the ingest fetches each item's ``url``.

Secrets: Flickr and Pixabay take the key in the query string, Unsplash in a header. The key is never
put in an exception, a log record (httpx logs full request URLs, so its logger gets a redacting
filter) or the store (cached requests are keyed without it).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import httpx

from cosmicman.sourcing.fetch import RETRYABLE_REASONS
from cosmicman.sourcing.rate_limit import (
    RateLimit,
)
from cosmicman.sourcing.sources import SourceItem

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

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: str | None = None,
        remaining: int | None = None,
        reset_s: float | None = None,
    ) -> None:
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


def float_or_none(value: Any) -> float | None:
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

    def __init__(
        self, api_key: str, *, base_url: str | None, per_page: int, rate_limit: RateLimit, timeout_s: float
    ) -> None:
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
        """Errors an API reports inside a 200 response; most APIs report none (a hook, not abstract)."""
        return None

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
            reason = (
                "rate_limited"
                if status == 429
                else "server_error"
                if status >= 500
                else self._client_error_reason(response)
            )
            raise ApiError(
                reason,
                f"{what}: HTTP {status} {response.text[:200]!r}",
                retry_after=response.headers.get("Retry-After"),
                remaining=remaining,
                reset_s=reset_s,
            )
        if "html" in response.headers.get("content-type", "") or response.text.lstrip().startswith("<"):
            raise ApiError("html_page", f"{what}: an HTML page instead of JSON (HTTP {status})")
        try:
            body = response.json()
        except ValueError:
            raise ApiError("malformed_json", f"{what}: malformed JSON {response.text[:80]!r}") from None
        self._check_body(body, what)
        return ApiResponse(body, remaining, reset_s)
