"""The Unsplash photo search API (``/search/photos``)."""

from __future__ import annotations

from typing import Any

import httpx

from cosmicman.sourcing.api_client import SearchPage, WebApiClient
from cosmicman.sourcing.rate_limit import (
    UNSPLASH_DEMO_RATE_LIMIT,
    RateLimit,
)
from cosmicman.sourcing.sources import SourceItem, int_or_none


class UnsplashClient(WebApiClient):
    name = "unsplash"
    licence = "Unsplash License"
    default_base_url = "https://api.unsplash.com"
    search_path = "/search/photos"
    per_page_range = (1, 30)

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        per_page: int = 30,
        rate_limit: RateLimit = UNSPLASH_DEMO_RATE_LIMIT,
        timeout_s: float = 30.0,
    ) -> None:
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
            items.append(
                SourceItem(
                    source=self.name,
                    source_id=photo_id,
                    url=url,
                    licence=self.licence,
                    alt_text=photo.get("alt_description") or photo.get("description") or "",
                    author=user.get("name") or user.get("username") or "unknown Unsplash user",
                    page_url=links.get("html") or f"https://unsplash.com/photos/{photo_id}",
                    width=int_or_none(photo.get("width")) if full else None,
                    height=int_or_none(photo.get("height")) if full else None,
                )
            )
            if links.get("download_location"):
                locations[photo_id] = links["download_location"]
        return SearchPage(items, last_page=int(body["total_pages"]), skipped=skipped, download_locations=locations)
