"""Fake Flickr, Unsplash and Pixabay search APIs on 127.0.0.1, for the web-API source tests.

Each fake speaks its API's response format (flickr.photos.search with ``format=json&nojsoncallback=1``,
Unsplash ``/search/photos``, Pixabay ``/api/``), checks the key the way the real one does, pages over
``photos_per_term`` made-up photos per search term, and keeps a log of every request it received so a
test can assert the client stayed inside the rate limit. The fakes read time from an injected clock
(the test's ``FakeClock``), so rate windows of minutes pass without sleeping.

Faults on demand (``inject``): 429 with ``Retry-After``, 500, 503, a slow answer (for client
timeouts), malformed JSON, an HTML page; and ``loop_from_page``, from which every page repeats the one
before it and the page count never ends.

The server runs on its own event loop in a daemon thread and stops by itself after
``max_lifetime_s`` even if a test forgets to close it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from aiohttp import web

FAULT_KINDS = ("429", "500", "503", "slow", "malformed_json", "html")
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body>Checking your browser before accessing the API.</body></html>"
)


class FakeClock:
    """Wall-clock time that moves only when the code under test sleeps."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass(frozen=True)
class Fault:
    kind: str
    page: int | None = None  # only a request for this page triggers it; None: the next request
    retry_after: str | None = None
    delay_s: float = 1.0  # for "slow"


@dataclass(frozen=True)
class ReceivedRequest:
    at: float
    path: str
    params: dict[str, str]  # the query string without the key
    headers: dict[str, str]  # without Authorization
    status: int


@dataclass(frozen=True)
class SearchResult:
    term: str
    page: int  # the page number the API states (a looping page states the page it repeats)
    per_page: int
    indices: list[int]  # the photos on this page
    pages: int
    total: int


def term_number(term: str) -> int:
    """A stable three-digit number per term, so photo ids differ between terms."""
    return int(hashlib.sha256(term.encode()).hexdigest()[:6], 16) % 900 + 100


class FakeApi(ABC):
    """What the three fakes share: key check, rate limit, faults, pagination, the request log."""

    name: ClassVar[str]
    search_path: ClassVar[str]

    def __init__(
        self,
        api_key: str,
        clock: Callable[[], float],
        *,
        photos_per_term: int = 50,
        rate_limit: tuple[int, float] | None = None,
        image_base_url: str = "http://127.0.0.1:9/img",
    ) -> None:
        self.api_key = api_key
        self.clock = clock
        self.photos_per_term = photos_per_term
        self.rate_limit = rate_limit  # (calls, window_s), a sliding window like the client's
        self.image_base_url = image_base_url
        self.base_url = ""  # set by the server once it listens
        self.faults: list[Fault] = []
        self.loop_from_page: int | None = None
        # From this page on, pages start one photo earlier, as when a new upload pushes results down.
        self.shift_from_page: int | None = None
        self.requests: list[ReceivedRequest] = []
        self.refused_for_rate = 0
        self._accepted_at: list[float] = []

    def inject(
        self,
        kind: str,
        *,
        times: int = 1,
        page: int | None = None,
        retry_after: str | None = None,
        delay_s: float = 1.0,
    ) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        self.faults.extend([Fault(kind, page, retry_after, delay_s)] * times)

    def search_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(self.search_path)]

    def max_in_window(self, window_s: float) -> int:
        """The most requests received in any ``window_s`` seconds (half-open), refused ones included."""
        times = sorted(r.at for r in self.requests)
        most, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            most = max(most, end - start + 1)
        return most

    def photo_id(self, term: str, index: int) -> str:
        return str(term_number(term) * 1_000_000 + index)

    @abstractmethod
    def key_ok(self, request: web.Request) -> bool:
        """Whether the request carries the key where the API expects it."""

    @abstractmethod
    def auth_error(self) -> web.Response:
        """The API's answer to a wrong key."""

    def rate_refusal(self, headers: dict[str, str]) -> web.Response:
        return web.Response(status=429, text="Too Many Requests", headers=headers)

    def rate_headers(self, remaining: int, reset_s: float) -> dict[str, str]:
        return {}

    @abstractmethod
    def search(self, request: web.Request, now: float) -> web.Response:
        """One page of results in the API's format."""

    def redacted_params(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.query.items() if k not in ("api_key", "key")}

    def paginate(self, term: str, indices: list[int], page: int, per_page: int) -> SearchResult:
        """The photos of ``page`` among ``indices``, with the loop and shift faults applied."""
        pages = math.ceil(len(indices) / per_page)
        if self.loop_from_page is not None and page >= self.loop_from_page:
            shown = self.loop_from_page - 1  # the repeated page, page number included
            return SearchResult(
                term,
                shown,
                per_page,
                indices[(shown - 1) * per_page : shown * per_page],
                page + 1,
                (page + 1) * per_page,
            )
        start = (page - 1) * per_page
        if self.shift_from_page is not None and page >= self.shift_from_page:
            start -= 1
        return SearchResult(term, page, per_page, indices[start : start + per_page], pages, len(indices))

    def _take_fault(self, page: int | None) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.page is None or fault.page == page:
                return self.faults.pop(i)
        return None

    def _window_state(self, now: float) -> tuple[int, float]:
        """Calls left in the window after this one, and seconds until its oldest call leaves it."""
        calls, window_s = self.rate_limit
        self._accepted_at = [t for t in self._accepted_at if t > now - window_s]
        reset = self._accepted_at[0] + window_s - now if self._accepted_at else window_s
        return calls - len(self._accepted_at), reset

    async def handle(self, request: web.Request) -> web.Response:
        now = self.clock()
        response = await self._respond(request, now)
        self.requests.append(
            ReceivedRequest(
                now,
                request.path,
                self.redacted_params(request),
                {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
                response.status,
            )
        )
        return response

    async def _respond(self, request: web.Request, now: float) -> web.Response:
        if not self.key_ok(request):
            return self.auth_error()
        headers: dict[str, str] = {}
        if self.rate_limit is not None:
            left, reset = self._window_state(now)
            if left <= 0:
                self.refused_for_rate += 1
                return self.rate_refusal(self.rate_headers(0, reset))
            self._accepted_at.append(now)
            left, reset = self._window_state(now)
            headers = self.rate_headers(left, reset)
        page = int(request.query.get("page", "1"))
        fault = self._take_fault(page)
        if fault is not None and fault.kind != "slow":
            return self._fault_response(fault, headers)
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        response = self.search(request, now)
        response.headers.update(headers)
        return response

    def _fault_response(self, fault: Fault, headers: dict[str, str]) -> web.Response:
        if fault.kind == "429":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return web.Response(status=429, text="Too Many Requests", headers={**headers, **extra})
        if fault.kind in ("500", "503"):
            return web.Response(status=int(fault.kind), text="upstream error", headers=headers)
        if fault.kind == "malformed_json":
            return web.Response(text='{"photos": {"page": 1, "pho', content_type="application/json", headers=headers)
        return web.Response(text=HTML_PAGE, content_type="text/html", headers=headers)


FLICKR_LICENCE_CYCLE = ("4", "5", "9", "10", "1", "0")


class FakeFlickr(FakeApi):
    name = "flickr"
    search_path = "/flickr/services/rest/"

    def __init__(self, *args: Any, without_url: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.without_url = without_url  # photo indices listed with no url_* at all

    def key_ok(self, request: web.Request) -> bool:
        return request.query.get("api_key") == self.api_key

    def auth_error(self) -> web.Response:
        return web.json_response({"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"})

    def licence_of(self, index: int) -> str:
        return FLICKR_LICENCE_CYCLE[index % len(FLICKR_LICENCE_CYCLE)]

    def search(self, request: web.Request, now: float) -> web.Response:
        q = request.query
        if q.get("method") != "flickr.photos.search":
            return web.json_response({"stat": "fail", "code": 112, "message": f'Method "{q.get("method")}" not found'})
        wanted = set(q["license"].split(",")) if q.get("license") else None
        indices = [i for i in range(self.photos_per_term) if wanted is None or self.licence_of(i) in wanted]
        result = self.paginate(q.get("text", ""), indices, int(q.get("page", "1")), int(q.get("per_page", "100")))
        body = {
            "photos": {
                "page": result.page,
                "pages": result.pages,
                "perpage": result.per_page,
                "total": result.total,
                "photo": [self.photo(result.term, i) for i in result.indices],
            },
            "stat": "ok",
        }
        if q.get("format") == "json" and q.get("nojsoncallback") == "1":
            return web.json_response(body)
        return web.Response(text=f"jsonFlickrApi({json.dumps(body)})", content_type="text/javascript")

    def photo(self, term: str, index: int) -> dict[str, Any]:
        photo_id, owner = self.photo_id(term, index), f"{10_000_000 + index % 7}@N0{index % 3}"
        photo: dict[str, Any] = {
            "id": photo_id,
            "owner": owner,
            "secret": "5ecre7",
            "server": "65535",
            "farm": 66,
            "title": f"{term} {index}",
            "ispublic": 1,
            "isfriend": 0,
            "isfamily": 0,
            "license": self.licence_of(index),
            "ownername": f"Photographer {index % 7}",
        }
        if index in self.without_url:
            return photo
        if index % 3:  # the owner allows the original
            photo |= {"url_o": f"{self.image_base_url}/flickr/{photo_id}_o.jpg", "height_o": 3000, "width_o": 2000}
        return photo | {
            "url_l": f"{self.image_base_url}/flickr/{photo_id}_b.jpg",
            "height_l": 1024,
            "width_l": 683,
            "url_c": f"{self.image_base_url}/flickr/{photo_id}_c.jpg",
            "height_c": 800,
            "width_c": 533,
        }


class FakeUnsplash(FakeApi):
    name = "unsplash"
    search_path = "/unsplash/search/photos"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.downloads_tracked: list[str] = []

    def key_ok(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Client-ID {self.api_key}"

    def auth_error(self) -> web.Response:
        return web.json_response({"errors": ["OAuth error: The access token is invalid"]}, status=401)

    def rate_headers(self, remaining: int, reset_s: float) -> dict[str, str]:
        return {"X-Ratelimit-Limit": str(self.rate_limit[0]), "X-Ratelimit-Remaining": str(remaining)}

    def rate_refusal(self, headers: dict[str, str]) -> web.Response:
        return web.Response(status=403, text="Rate Limit Exceeded", headers=headers)

    def photo_id(self, term: str, index: int) -> str:
        return f"u{term_number(term)}x{index:06d}"

    def search(self, request: web.Request, now: float) -> web.Response:
        q = request.query
        per_page = min(30, int(q.get("per_page", "10")))
        result = self.paginate(q.get("query", ""), list(range(self.photos_per_term)), int(q.get("page", "1")), per_page)
        return web.json_response(
            {
                "total": result.total,
                "total_pages": result.pages,
                "results": [self.photo(result.term, i) for i in result.indices],
            }
        )

    def photo(self, term: str, index: int) -> dict[str, Any]:
        photo_id = self.photo_id(term, index)
        raw = f"{self.image_base_url}/unsplash/photo-{photo_id}"
        return {
            "id": photo_id,
            "created_at": "2024-05-01T10:00:00Z",
            "width": 4000,
            "height": 6000,
            "color": "#a7a2a1",
            "description": None,
            "alt_description": f"{term} {index}",
            "likes": index,
            "urls": {
                "raw": f"{raw}?ixid=fake",
                "full": f"{raw}?ixid=fake&fm=jpg&q=85",
                "regular": f"{raw}?w=1080",
                "small": f"{raw}?w=400",
                "thumb": f"{raw}?w=200",
            },
            "links": {
                "self": f"{self.base_url}/photos/{photo_id}",
                "html": f"https://unsplash.com/photos/{photo_id}",
                "download": f"https://unsplash.com/photos/{photo_id}/download",
                "download_location": f"{self.base_url}/photos/{photo_id}/download?ixid=fake{index}",
            },
            "user": {
                "id": f"user{index % 5}",
                "username": f"shooter{index % 5}",
                "name": f"Shooter {index % 5}",
                "links": {"html": f"https://unsplash.com/@shooter{index % 5}"},
            },
        }

    async def track_download(self, request: web.Request) -> web.Response:
        now = self.clock()
        ok = self.key_ok(request)
        response = (
            web.json_response({"url": f"{self.image_base_url}/unsplash/{request.match_info['photo_id']}"})
            if ok
            else self.auth_error()
        )
        if ok:
            self.downloads_tracked.append(request.match_info["photo_id"])
        self.requests.append(ReceivedRequest(now, request.path, dict(request.query), {}, response.status))
        return response


class FakePixabay(FakeApi):
    name = "pixabay"
    search_path = "/pixabay/api/"
    max_total_hits = 500  # Pixabay serves at most 500 hits per query

    def key_ok(self, request: web.Request) -> bool:
        return request.query.get("key") == self.api_key

    def auth_error(self) -> web.Response:
        return web.Response(status=400, text="[ERROR 400] Invalid or missing API key (https://pixabay.com/api/docs/).")

    def rate_headers(self, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit[0]),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(math.ceil(reset_s)),
        }

    def rate_refusal(self, headers: dict[str, str]) -> web.Response:
        return web.Response(status=429, text="[ERROR 429] Too many requests.", headers=headers)

    def search(self, request: web.Request, now: float) -> web.Response:
        q = request.query
        per_page, page = int(q.get("per_page", "20")), int(q.get("page", "1"))
        if not 3 <= per_page <= 200:
            return web.Response(status=400, text='[ERROR 400] "per_page" is out of valid range.')
        indices = list(range(min(self.photos_per_term, self.max_total_hits)))
        result = self.paginate(q.get("q", ""), indices, page, per_page)
        if page > result.pages:
            return web.Response(status=400, text='[ERROR 400] "page" is out of valid range.')
        return web.json_response(
            {
                "total": result.total,
                "totalHits": result.total,
                "hits": [self.hit(result.term, i) for i in result.indices],
            }
        )

    def hit(self, term: str, index: int) -> dict[str, Any]:
        photo_id = int(self.photo_id(term, index))
        image = f"{self.image_base_url}/pixabay/{photo_id}"
        return {
            "id": photo_id,
            "pageURL": f"https://pixabay.com/photos/{term.replace(' ', '-')}-{photo_id}/",
            "type": "photo",
            "tags": f"{term}, person, portrait",
            "previewURL": f"{image}_150.jpg",
            "previewWidth": 100,
            "previewHeight": 150,
            "webformatURL": f"{image}_640.jpg",
            "webformatWidth": 427,
            "webformatHeight": 640,
            "largeImageURL": f"{image}_1280.jpg",
            "imageWidth": 4000,
            "imageHeight": 6000,
            "imageSize": 3_500_000,
            "views": 10 * index,
            "downloads": index,
            "likes": index,
            "comments": 0,
            "user_id": 1000 + index % 4,
            "user": f"artist{index % 4}",
            "userImageURL": f"{image}_user.jpg",
        }


@dataclass
class FakeApiServer:
    """The three fakes behind one aiohttp server on 127.0.0.1; use as a context manager."""

    clock: Callable[[], float]
    flickr_key: str = "flickr-secret-key-0001"
    unsplash_key: str = "unsplash-secret-key-0002"
    pixabay_key: str = "pixabay-secret-key-0003"
    photos_per_term: int = 50
    max_lifetime_s: float = 120.0
    flickr: FakeFlickr = field(init=False)
    unsplash: FakeUnsplash = field(init=False)
    pixabay: FakePixabay = field(init=False)

    def __post_init__(self) -> None:
        self.flickr = FakeFlickr(self.flickr_key, self.clock, photos_per_term=self.photos_per_term)
        self.unsplash = FakeUnsplash(self.unsplash_key, self.clock, photos_per_term=self.photos_per_term)
        self.pixabay = FakePixabay(self.pixabay_key, self.clock, photos_per_term=self.photos_per_term)
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.flickr.search_path, self.flickr.handle)
        app.router.add_get(self.unsplash.search_path, self.unsplash.handle)
        app.router.add_get("/unsplash/photos/{photo_id}/download", self.unsplash.track_download)
        app.router.add_get(self.pixabay.search_path, self.pixabay.handle)
        return app

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        # No access log: it would print the query strings, keys included, into the tests' captured logs.
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        loop.call_later(self.max_lifetime_s, loop.stop)
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        # A handler still sleeping for a "slow" fault outlives the shutdown timeout: end it here.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name="fake-apis", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fake API server did not start in 10 s")
        self.flickr.base_url = f"{self.url}/flickr/services/rest"
        self.unsplash.base_url = f"{self.url}/unsplash"
        self.pixabay.base_url = f"{self.url}/pixabay/api"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
