"""The Flickr photo search API (``flickr.photos.search``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cosmicman.sourcing.api_client import ApiError, SearchPage, WebApiClient
from cosmicman.sourcing.rate_limit import (
    FLICKR_RATE_LIMIT,
    RateLimit,
)
from cosmicman.sourcing.sources import SourceItem, int_or_none

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
_FLICKR_ERROR_REASONS: dict[int | None, str] = {100: "auth_failed", 105: "server_error", 10: "server_error"}
# The largest size first: o (original, when the owner allows it), l (1024 px), c (800 px).
_FLICKR_SIZES = ("o", "l", "c")


class FlickrClient(WebApiClient):
    name = "flickr"
    default_base_url = "https://api.flickr.com/services/rest"
    search_path = "/"
    per_page_range = (1, 500)

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        per_page: int = 500,
        licences: Sequence[int] = (),
        sort: str = "date-posted-asc",
        rate_limit: RateLimit = FLICKR_RATE_LIMIT,
        timeout_s: float = 30.0,
    ) -> None:
        """``per_page`` defaults to Flickr's maximum: the most photos per query of the hourly budget.
        ``licences``: only photos under these licence ids (empty: any). ``sort`` defaults to oldest
        first because new uploads then land after the pages already walked instead of shifting them."""
        super().__init__(api_key, base_url=base_url, per_page=per_page, rate_limit=rate_limit, timeout_s=timeout_s)
        self.licences = tuple(licences)
        self.sort = sort

    def search_params(self, term: str, page: int) -> dict[str, str]:
        params = {
            "method": "flickr.photos.search",
            "text": term,
            "media": "photos",
            "sort": self.sort,
            "extras": "license,owner_name," + ",".join(f"url_{s}" for s in _FLICKR_SIZES),
            "per_page": str(self.per_page),
            "page": str(page),
            "format": "json",
            "nojsoncallback": "1",
        }
        if self.licences:
            params["license"] = ",".join(str(i) for i in self.licences)
        return params

    def _authorize(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return {**params, "api_key": self._api_key}, {}

    def _check_body(self, body: Any, what: str) -> None:
        if isinstance(body, dict) and body.get("stat") == "fail":
            code = int_or_none(body.get("code"))
            raise ApiError(
                _FLICKR_ERROR_REASONS.get(code, "api_error"), f"{what}: Flickr error {code}: {body.get('message', '')}"
            )

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
            items.append(
                SourceItem(
                    source=self.name,
                    source_id=photo_id,
                    url=photo[f"url_{size}"],
                    licence=FLICKR_LICENCES.get(licence_id, f"Flickr licence {licence_id or 'unknown'}"),
                    alt_text=photo.get("title") or "",
                    author=photo.get("ownername") or owner,
                    page_url=f"https://www.flickr.com/photos/{owner}/{photo_id}",
                    width=int_or_none(photo.get(f"width_{size}")),
                    height=int_or_none(photo.get(f"height_{size}")),
                )
            )
        return SearchPage(items, last_page=int(photos["pages"]), page=int(photos["page"]), skipped=skipped)
