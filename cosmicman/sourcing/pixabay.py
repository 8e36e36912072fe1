"""The Pixabay image search API."""

from __future__ import annotations

import math
from typing import Any

import httpx

from cosmicman.sourcing.api_client import SearchPage, WebApiClient, float_or_none
from cosmicman.sourcing.rate_limit import (
    PIXABAY_RATE_LIMIT,
    RateLimit,
)
from cosmicman.sourcing.sources import SourceItem, int_or_none

# Pixabay's largeImageURL is the photo scaled to at most 1280 px on its longer side.
_PIXABAY_LARGE_PX = 1280


class PixabayClient(WebApiClient):
    name = "pixabay"
    licence = "Pixabay Content License"
    default_base_url = "https://pixabay.com/api"
    search_path = "/"
    per_page_range = (3, 200)
    cache_ttl_s = 24 * 3600.0  # Pixabay's terms: cache responses for 24 hours

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        per_page: int = 200,
        rate_limit: RateLimit = PIXABAY_RATE_LIMIT,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(api_key, base_url=base_url, per_page=per_page, rate_limit=rate_limit, timeout_s=timeout_s)

    def search_params(self, term: str, page: int) -> dict[str, str]:
        return {"q": term, "image_type": "photo", "page": str(page), "per_page": str(self.per_page)}

    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return {"key": self._api_key, **params}, {}

    def _rate_headers(self, headers: httpx.Headers) -> tuple[int | None, float | None]:
        return int_or_none(headers.get("X-RateLimit-Remaining")), float_or_none(headers.get("X-RateLimit-Reset"))

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
            items.append(
                SourceItem(
                    source=self.name,
                    source_id=str(hit["id"]),
                    url=hit["largeImageURL"],
                    licence=self.licence,
                    alt_text=hit.get("tags") or "",
                    author=hit.get("user") or f"Pixabay user {hit.get('user_id')}",
                    page_url=hit["pageURL"],
                    width=round(width * scale),
                    height=round(height * scale),
                )
            )
        return SearchPage(items, last_page=math.ceil(int(body["totalHits"]) / self.per_page))
