"""The image fetch engine against a real loopback server with fault routes (tests/support/image_server.py)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from cosmicman.sourcing import fetch
from cosmicman.sourcing.fetch import RESULT_BUFFER, FetchConfig, Fetcher, FetchResult, fetch_all
from tests.support.image_server import ImageServer
from tests.support.servers import free_port

GOOD = 20
# Small timeouts and backoff keep the file fast.
FAST = FetchConfig(
    connect_timeout_s=1.0, read_timeout_s=1.0, retries=2, backoff_s=0.01, backoff_max_s=0.05, max_bytes=20_000
)


def jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 12 % 256, 40, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(GOOD):
        (root / f"good_{i}.jpg").write_bytes(jpeg(i))
    (root / "big.jpg").write_bytes(bytes(range(256)) * 200)  # 51,200 bytes > FAST.max_bytes
    (root / "hostile.bin").write_bytes(b"<script>alert(1)</script>" * 10)
    return root


@pytest.fixture(scope="module")
def servers(image_root):
    with ImageServer(image_root) as main, ImageServer(image_root) as other:
        yield main, other


@pytest.fixture
def srv(servers) -> ImageServer:
    servers[0].reset_stats()
    return servers[0]


@pytest.fixture
def other_srv(servers) -> ImageServer:
    servers[1].reset_stats()
    return servers[1]


# What the engine's clock reads under ``paced``: a 429's pause then asks for exactly its Retry-After.
FROZEN_NOW = 1000.0
Step = tuple[str, float | str]  # ("sleep", seconds asked for) or ("send", url)


@pytest.fixture
def paced(monkeypatch) -> Callable[[], dict[str, list[Step]]]:
    """Freezes the engine's clock and records what each fetch asks for, in order: the sleeps (which return at
    once) and the requests it sends. A pause shows as the seconds asked for, never as time measured.

    Returns a function giving each item's steps by the URL of its first request."""
    steps: defaultdict[asyncio.Task | None, list[Step]] = defaultdict(list)
    real_sleep, real_attempt = asyncio.sleep, Fetcher.attempt

    async def sleep(delay: float) -> None:
        steps[asyncio.current_task()].append(("sleep", delay))
        await real_sleep(0)

    async def attempt(self: Fetcher, url) -> fetch.Outcome:
        steps[asyncio.current_task()].append(("send", str(url)))
        return await real_attempt(self, url)

    monkeypatch.setattr(fetch, "time", SimpleNamespace(monotonic=lambda: FROZEN_NOW, time=time.time))
    monkeypatch.setattr(fetch, "asyncio", SimpleNamespace(**{**vars(asyncio), "sleep": sleep}))
    monkeypatch.setattr(Fetcher, "attempt", attempt)
    return lambda: {next(str(v) for k, v in item if k == "send"): item for item in steps.values()}


def sleeps_between_sends(steps: list[Step]) -> list[list[float | str]]:
    """The sleeps asked for between one request and the next, for each request after the first."""
    gaps: list[list[float | str]] = []
    for kind, value in steps:
        if kind == "send":
            gaps.append([])
        elif gaps:
            gaps[-1].append(value)
    return gaps[:-1]


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fetch_all"]


def by_key(results: list[FetchResult]) -> dict[str, FetchResult]:
    return {r.key: r for r in results}


def test_mixed_batch_gives_one_result_per_request_with_exact_reasons(srv, image_root):
    good = [(f"good_{i}", srv.url(f"img/good_{i}.jpg")) for i in range(GOOD)]
    faults = {
        "rate_limited_twice": "status/429/rl?times=2&retry_after=1&then=good_0.jpg",
        "always_503": "status/503/down",
        "missing": "img/missing.jpg",
        "forbidden": "status/403/forbidden",
        "request_timeout": "status/408/rt",
        "slow": "slow/5/good_1.jpg",
        "html": "html/page",
        "json": "json/doc",
        "dropped": "drop/good_2.jpg",
        "big": "img/big.jpg",
        "big_chunked": "chunked/big.jpg",
        "chunked": "chunked/good_3.jpg",
        "hostile": "lie/hostile.bin",
        "redirected": "redirect/3/good_4.jpg",
        "redirect_loop": "redirect/20/good_5.jpg",
    }
    others = {
        "refused": f"http://127.0.0.1:{free_port()}/x.jpg",
        "ftp": "ftp://example.com/a.jpg",
        "no_scheme": "not a url",
        "no_host": "http://",
        "empty": "",
    }
    requests = good + [(k, srv.url(p)) for k, p in faults.items()] + list(others.items())

    results = list(fetch_all(requests, FAST))
    got = by_key(results)
    stats = srv.stats()

    assert len(results) == len(got) == len(requests) == 40
    assert Counter(r.reason for r in results) == {
        None: 24,
        "bad_url": 4,
        "timeout": 2,
        "not_an_image": 2,
        "connection_error": 2,
        "too_large": 2,
        "server_error": 1,
        "http_404": 1,
        "http_403": 1,
        "http_302": 1,
    }
    assert all((r.data is None) == (r.reason is not None) for r in results)
    for i in range(GOOD):
        assert got[f"good_{i}"].data == (image_root / f"good_{i}.jpg").read_bytes()
        assert (got[f"good_{i}"].attempts, got[f"good_{i}"].content_type) == (1, "image/jpeg")
    assert got["chunked"].data == (image_root / "good_3.jpg").read_bytes()
    assert got["redirected"].data == (image_root / "good_4.jpg").read_bytes()
    assert (got["hostile"].data, got["hostile"].content_type) == (
        (image_root / "hostile.bin").read_bytes(),
        "image/jpeg",
    )
    assert got["rate_limited_twice"].data == (image_root / "good_0.jpg").read_bytes()

    assert {
        k: (got[k].reason, got[k].http_status, got[k].attempts)
        for k in [
            "rate_limited_twice",
            "always_503",
            "missing",
            "forbidden",
            "request_timeout",
            "slow",
            "html",
            "dropped",
            "big",
            "big_chunked",
            "redirect_loop",
            "refused",
            "ftp",
            "empty",
        ]
    } == {
        "rate_limited_twice": (None, 200, 3),
        "always_503": ("server_error", 503, 3),
        "missing": ("http_404", 404, 1),
        "forbidden": ("http_403", 403, 1),
        "request_timeout": ("timeout", 408, 3),
        "slow": ("timeout", None, 3),
        "html": ("not_an_image", 200, 1),
        "dropped": ("connection_error", None, 3),
        "big": ("too_large", 200, 1),
        "big_chunked": ("too_large", 200, 1),
        "redirect_loop": ("http_302", 302, 1),
        "refused": ("connection_error", None, 3),
        "ftp": ("bad_url", None, 0),
        "empty": ("bad_url", None, 0),
    }

    paths = stats["by_path"]
    assert [
        paths["/status/429/rl"],
        paths["/status/503/down"],
        paths["/status/403/forbidden"],
        paths["/status/408/rt"],
        paths["/slow/5/good_1.jpg"],
        paths["/img/big.jpg"],
    ] == [3, 3, 1, 3, 3, 1]
    # aiohttp resends once, by itself, a request whose reused keep-alive connection was closed (RFC 9112 9.3.1.1).
    assert 3 <= paths["/drop/good_2.jpg"] <= 6
    assert stats["by_route"]["redirect"] == 3 + 10  # aiohttp gives up on a loop at its tenth redirect response


def test_a_429_waits_its_retry_after_beyond_the_backoff_cap(srv, paced):
    url = srv.url("status/429/rl?times=2&retry_after=1&then=good_0.jpg")

    (result,) = fetch_all([("rl", url)], FAST)

    assert (result.reason, result.attempts) == (None, 3)
    # before each retry: the backoff (capped at FAST.backoff_max_s = 0.05), then the host's pause, which is
    # the server's Retry-After (1 s) whole
    assert sleeps_between_sends(paced()[url]) == [[0.05, 1.0], [0.05, 1.0]]


def test_429_pauses_its_host_and_only_its_host(srv, other_srv, paced):
    requests = [("a", srv.url("status/429/a?times=1&retry_after=1&then=good_0.jpg"))]
    requests += [(f"b{i}", srv.url(f"status/200/b{i}?times=0&then=good_{i}.jpg")) for i in range(1, 5)]
    requests += [("elsewhere", other_srv.url("img/good_9.jpg"))]

    got = by_key(list(fetch_all(requests, FetchConfig(per_host=1, backoff_s=0.01))))
    steps = paced()

    assert {k: (r.reason, r.attempts) for k, r in got.items()} == {
        "a": (None, 2),
        "b1": (None, 1),
        "b2": (None, 1),
        "b3": (None, 1),
        "b4": (None, 1),
        "elsewhere": (None, 1),
    }
    # per_host=1 sends "a" first; every later item of its host waits out the Retry-After before its request,
    # the other host's item waits for nothing
    assert {k: steps[url][: steps[url].index(("send", url))] for k, url in requests} == {
        "a": [],
        **{f"b{i}": [("sleep", 1.0)] for i in range(1, 5)},
        "elsewhere": [],
    }


def test_retry_after_beyond_the_limit_fails_the_host_now_as_rate_limited(srv, monkeypatch):
    requests = [("long", srv.url("status/429/long?retry_after=60"))]
    requests += [(f"queued_{i}", srv.url(f"img/good_{i}.jpg")) for i in range(3)]
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay, *args, **kwargs):
        waits.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)

    got = by_key(list(fetch_all(requests, FetchConfig(per_host=1, max_retry_after_s=5.0))))

    assert not [w for w in waits if w >= 1.0]  # nobody waited for the 60 s the server asked, nor for a second
    assert {k: (r.reason, r.http_status, r.attempts) for k, r in got.items()} == {
        "long": ("rate_limited", 429, 1),
        "queued_0": ("rate_limited", None, 0),
        "queued_1": ("rate_limited", None, 0),
        "queued_2": ("rate_limited", None, 0),
    }
    assert srv.stats()["requests"] == 1


@pytest.mark.parametrize("per_host,max_in_flight,cap", [(3, 64, 3), (16, 2, 2)])
def test_concurrency_caps_hold_exactly(srv, per_host, max_in_flight, cap):
    requests = [(str(i), srv.url(f"slow/0.2/good_{i}.jpg")) for i in range(9)]
    config = FetchConfig(per_host=per_host, max_in_flight=max_in_flight)

    results = list(fetch_all(requests, config))

    assert [r.reason for r in results] == [None] * 9
    assert srv.stats()["max_concurrent"] == cap


def test_inputs_are_pulled_lazily_and_closing_early_stops_the_thread(srv):
    pulled = 0

    def requests():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield str(i), srv.url(f"img/good_{i % GOOD}.jpg")

    config = FetchConfig(max_in_flight=8)
    results = fetch_all(requests(), config)
    first = [next(results) for _ in range(10)]
    results.close()

    assert [r.reason for r in first] == [None] * 10
    assert pulled <= config.max_in_flight + RESULT_BUFFER + len(first)
    assert srv.stats()["requests"] <= pulled
    assert fetch_threads() == []


@pytest.mark.timeout(60)  # a safety net: a close that leaves the fetching running never returns
def test_closing_with_requests_in_flight_cancels_them(srv, monkeypatch):
    ended: Counter[str] = Counter()
    real_attempt = Fetcher.attempt

    async def attempt(self: Fetcher, url) -> fetch.Outcome:
        try:
            outcome = await real_attempt(self, url)
        except asyncio.CancelledError:
            ended["cancelled"] += 1
            raise
        ended["answered"] += 1
        return outcome

    monkeypatch.setattr(Fetcher, "attempt", attempt)
    requests = [("fast", srv.url("img/good_0.jpg"))] + [(f"s{i}", srv.url("slow/5/good_1.jpg")) for i in range(4)]
    results = fetch_all(requests, FetchConfig(read_timeout_s=10))
    assert next(results).key == "fast"

    results.close()

    # the four slow requests were dropped mid-flight, not waited for (that would answer them, 5 s later)
    assert ended == {"answered": 1, "cancelled": 4}
    assert fetch_threads() == []


def test_an_error_in_the_caller_leaves_no_thread(srv):
    requests = [(str(i), srv.url(f"img/good_{i}.jpg")) for i in range(GOOD)]
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in fetch_all(requests, FetchConfig(max_in_flight=2)):
            raise RuntimeError("consumer failed")
    assert fetch_threads() == []


def test_an_error_in_the_inputs_reaches_the_caller(srv):
    def requests():
        yield "ok", srv.url("img/good_0.jpg")
        raise ValueError("broken input row")

    with pytest.raises(ValueError, match="broken input row"):
        list(fetch_all(requests()))
    assert fetch_threads() == []
