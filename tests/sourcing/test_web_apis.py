import logging
import os
import time
import traceback
from typing import Any

import pytest

from cosmicman.core.store import Store
from cosmicman.sourcing.api_client import ApiError, ApiKeyRejected, ApiResponse, WebApiClient
from cosmicman.sourcing.api_source import ApiSource
from cosmicman.sourcing.flickr import FlickrClient
from cosmicman.sourcing.pixabay import PixabayClient
from cosmicman.sourcing.rate_limit import (
    RateLimit,
    RateLimitExhausted,
    SlidingWindowLimiter,
)
from cosmicman.sourcing.unsplash import UnsplashClient
from tests.support.fake_apis import FakeApi, FakeApiServer, FakeClock
from tests.support.servers import free_port

APIS = ("flickr", "unsplash", "pixabay")
TERMS = ["woman in a red dress", "man in a suit"]
GENEROUS = RateLimit(1000, 60.0)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def server(clock):
    with FakeApiServer(clock, photos_per_term=25) as fake:
        yield fake


@pytest.fixture
def store():
    return Store(f"memory://web-apis-{os.urandom(4).hex()}")


def fake_of(server: FakeApiServer, api: str) -> FakeApi:
    return getattr(server, api)


def client_for(
    server: FakeApiServer,
    api: str,
    *,
    key: str | None = None,
    per_page: int = 10,
    rate_limit: RateLimit = GENEROUS,
    timeout_s: float = 5.0,
) -> WebApiClient:
    cls = {"flickr": FlickrClient, "unsplash": UnsplashClient, "pixabay": PixabayClient}[api]
    return cls(
        key or fake_of(server, api).api_key,
        base_url=fake_of(server, api).base_url,
        per_page=per_page,
        rate_limit=rate_limit,
        timeout_s=timeout_s,
    )


@pytest.fixture
def make_client(server):
    """``client_for`` on this test's server; every client is closed at teardown."""
    clients: list[WebApiClient] = []

    def make(api: str, **options) -> WebApiClient:
        clients.append(client_for(server, api, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def source_for(client: WebApiClient, clock: FakeClock, terms=TERMS, **policy) -> ApiSource:
    policy = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_wait_s": 600.0, **policy}
    return ApiSource(client, terms, clock=clock, sleep=clock.sleep, **policy)


@pytest.mark.parametrize("api", APIS)
def test_batches_walk_terms_and_pages_and_continue_where_the_last_ended(api, server, make_client, clock, store):
    source = source_for(make_client(api), clock)
    first = source.plan(0, 30, store)
    report = source.last_report
    assert (len(first), report.queries, report.stopped_because) == (30, 4, "size_reached")  # 3 + 1 pages
    second = source.plan(1, 30, store)
    assert (len(second), source.last_report.queries, source.last_report.stopped_because) == (20, 2, "terms_exhausted")
    assert source.plan(2, 30, store) == [] and source.last_report.queries == 0
    ids = [item.source_id for item in first + second]
    assert len(set(ids)) == 50
    assert all(
        item.source == api and item.licence and item.author and item.page_url.startswith("https://")
        for item in first + second
    )
    assert len(fake_of(server, api).search_requests()) == 6


def test_flickr_items_carry_licence_names_owner_and_the_largest_size(server, make_client, clock, store):
    items = source_for(make_client("flickr"), clock).plan(0, 2, store)
    assert items[0].licence == "Attribution License" and items[1].licence == "Attribution-ShareAlike License"
    assert items[0].author == "Photographer 0"
    assert items[0].page_url == f"https://www.flickr.com/photos/10000000@N00/{items[0].source_id}"
    assert (items[0].url.endswith("_b.jpg"), items[0].width, items[0].height) == (True, 683, 1024)  # no original
    assert (items[1].url.endswith("_o.jpg"), items[1].width, items[1].height) == (True, 2000, 3000)
    assert items[0].alt_text == "woman in a red dress 0"


def test_flickr_licence_filter_duplicates_and_photos_without_url(server, make_client, clock, store):
    server.flickr.shift_from_page = 2  # page 2 starts with page 1's last photo
    server.flickr.without_url = frozenset({3, 4})
    source = source_for(make_client("flickr"), clock, terms=TERMS[:1])
    items = source.plan(0, 100, store)
    report = source.last_report
    assert (len(items), report.duplicates_skipped, report.photos_skipped) == (23, 1, 2)
    server.flickr.without_url = frozenset()
    with FlickrClient(server.flickr_key, base_url=server.flickr.base_url, per_page=100, licences=(9, 10)) as filtered:
        items = source_for(filtered, clock, terms=TERMS[:1], name="flickr-public-domain").plan(0, 100, store)
    assert {i.licence for i in items} == {"Public Domain Dedication (CC0)", "Public Domain Mark"}
    assert len(items) == 8 and server.flickr.search_requests()[-1].params["license"] == "9,10"


def test_unsplash_items_and_download_tracking(server, make_client, clock, store):
    source = source_for(make_client("unsplash"), clock)
    items = source.plan(0, 12, store)
    first = items[0]
    assert (first.licence, first.author, first.width, first.height) == ("Unsplash License", "Shooter 0", 4000, 6000)
    assert first.page_url == f"https://unsplash.com/photos/{first.source_id}" and "fm=jpg" in first.url
    assert all(r.headers.get("Accept-Version") == "v1" for r in server.unsplash.search_requests())
    report = source.track_downloads(0, [i.source_id for i in items[:5]] + ["not-in-this-batch"], store)
    assert (report.items, report.queries, report.stopped_because) == (5, 5, "done")
    assert server.unsplash.downloads_tracked == [i.source_id for i in items[:5]]
    tracked = [r for r in server.unsplash.requests if r.path.endswith("/download")]
    assert [r.params["ixid"] for r in tracked] == [f"fake{i}" for i in range(5)]


def test_pixabay_items_state_the_1280px_size_of_the_large_image(server, make_client, clock, store):
    first = source_for(make_client("pixabay"), clock).plan(0, 1, store)[0]
    assert (first.licence, first.author, first.width, first.height) == ("Pixabay Content License", "artist0", 853, 1280)
    assert first.page_url.startswith("https://pixabay.com/photos/") and first.url.endswith("_1280.jpg")
    assert first.alt_text == "woman in a red dress, person, portrait"


@pytest.mark.parametrize("api", APIS)
def test_faults_are_retried_and_a_failing_page_is_recorded_and_skipped(api, server, make_client, clock, store):
    fake = fake_of(server, api)
    fake.inject("503", page=1)
    fake.inject("malformed_json", page=1)
    fake.inject("html", page=2, times=4)  # 1 try + 3 retries: the page is given up
    fake.inject("429", page=3, retry_after="7")
    fake.inject("500", page=3)
    source = source_for(make_client(api), clock, terms=TERMS[:1])
    items = source.plan(0, 30, store)
    report = source.last_report
    assert len(items) == 15  # pages 1 and 3
    assert report.pages_failed == {"html_page": 1}
    assert (report.queries, report.retries, report.stopped_because) == (10, 7, "terms_exhausted")
    assert 7.0 in clock.slept  # the Retry-After, waited through the shared limiter
    assert len(report.warnings) == 1 and "gave up after 4 tries" in report.warnings[0]


@pytest.mark.parametrize(("api", "status"), [("unsplash", 403), ("pixabay", 429)])
def test_a_refusal_for_the_rate_limit_is_read_as_rate_limited(api, status, server):
    fake = fake_of(server, api)
    fake.rate_limit = (1, 60.0)
    with client_for(server, api) as client:
        assert client.get(client.search_url, client.search_params("x", 1), "first").remaining == 0
        with pytest.raises(ApiError) as caught:
            client.get(client.search_url, client.search_params("x", 1), "second")
    assert (caught.value.reason, caught.value.remaining, fake.requests[-1].status) == ("rate_limited", 0, status)


def test_a_slow_answer_times_out_and_is_retried(server, make_client, clock, store, monkeypatch):
    server.unsplash.inject("slow", page=1, delay_s=1.0)
    client = make_client("unsplash", timeout_s=0.2)
    failures: list[str] = []
    real_get = client.get

    def get(*args: Any) -> ApiResponse:
        try:
            return real_get(*args)
        except ApiError as error:
            failures.append(error.reason)
            raise

    monkeypatch.setattr(client, "get", get)
    source = source_for(client, clock, terms=TERMS[:1])
    items = source.plan(0, 10, store)
    report = source.last_report
    assert (len(items), report.retries, report.queries) == (10, 1, 2)
    assert failures == ["timeout"]  # the first try gave up at the client's timeout; waited for, it would pass
    # the one wait, the backoff before the retry, went through the injected sleep: within its first step
    # (backoff_base_s 0.01) and all that the report counts as waited
    assert len(clock.slept) == 1 and 0.0 <= clock.slept[0] <= 0.01 and report.waited_s == clock.slept[0]


@pytest.mark.parametrize("api", APIS)
def test_the_rate_limit_is_never_exceeded(api, server, make_client, clock, store):
    fake = fake_of(server, api)
    fake.photos_per_term, fake.rate_limit = 30, (5, 60.0)
    source = source_for(make_client(api, per_page=3, rate_limit=RateLimit(5, 60.0)), clock, terms=TERMS[:1])
    started = clock.now
    items = source.plan(0, 30, store)
    assert len(items) == 30 and source.last_report.queries == 10
    assert (fake.max_in_window(60.0), fake.refused_for_rate) == (5, 0)
    assert clock.now - started == 60.0 == source.last_report.waited_s


def test_a_spent_budget_stops_the_plan_and_the_next_process_respects_the_same_log(server, make_client, clock, store):
    server.flickr.photos_per_term = 30
    client = make_client("flickr", per_page=3, rate_limit=RateLimit(5, 60.0))
    items = source_for(client, clock, terms=TERMS[:1], max_wait_s=10.0).plan(0, 30, store)
    another_process = source_for(client, clock, terms=TERMS[:1], max_wait_s=10.0)
    assert len(items) == 15
    assert another_process.plan(1, 30, store) == []
    assert (another_process.last_report.stopped_because, another_process.last_report.queries) == ("rate_limited", 0)
    clock.now += 60.0
    later = another_process.plan(2, 30, store)
    assert len(later) == 15 and not {i.source_id for i in later} & {i.source_id for i in items}
    assert server.flickr.max_in_window(60.0) == 5


@pytest.mark.parametrize("api", ["unsplash", "pixabay"])
def test_the_servers_remaining_count_pauses_the_client_before_it_is_refused(api, server, make_client, clock, store):
    fake = fake_of(server, api)
    fake.photos_per_term, fake.rate_limit = 30, (4, 60.0)
    # The client's own budget is larger: another client shares the key, only the server knows.
    source = source_for(make_client(api, per_page=3, rate_limit=RateLimit(100, 60.0)), clock, terms=TERMS[:1])
    started = clock.now
    assert len(source.plan(0, 30, store)) == 30
    assert (fake.refused_for_rate, fake.max_in_window(60.0)) == (0, 4)
    assert clock.now - started == 120.0  # pages 1-4, 5-8, 9-10 in three windows


def test_a_429_asking_longer_than_max_wait_stops_with_the_items_so_far(server, make_client, clock, store):
    server.unsplash.inject("429", page=2, retry_after="3600")
    source = source_for(make_client("unsplash"), clock, terms=TERMS[:1], max_wait_s=60.0)
    assert len(source.plan(0, 30, store)) == 10
    assert (source.last_report.stopped_because, source.last_report.pages_failed) == ("rate_limited", {})
    clock.now += 3600.0
    assert len(source.plan(1, 30, store)) == 15  # page 2 again, then 3


def test_real_time_rate_limit_with_a_margin_for_latency(store):
    with FakeApiServer(time.time, photos_per_term=36) as server:
        server.unsplash.rate_limit = (5, 0.5)
        client = client_for(server, "unsplash", per_page=3, rate_limit=RateLimit(5, 0.6))
        items = ApiSource(client, TERMS[:1]).plan(0, 36, store)
        client.close()
    assert len(items) == 36
    assert server.unsplash.refused_for_rate == 0 and server.unsplash.max_in_window(0.5) <= 5


def test_pixabay_responses_are_reused_for_24_hours(server, make_client, clock, store):
    def plan(name: str):
        source = source_for(make_client("pixabay"), clock, terms=TERMS[:1], name=name)
        return source.plan(0, 25, store), source.last_report

    first, report = plan("pixabay-a")
    assert (report.queries, report.cache_hits) == (3, 0)
    clock.now += 24 * 3600 - 1
    again, report = plan("pixabay-b")
    assert (report.queries, report.cache_hits, again) == (0, 3, first)
    clock.now += 2
    _, report = plan("pixabay-c")
    assert (report.queries, report.cache_hits) == (3, 0)
    assert len(server.pixabay.search_requests()) == 6
    flickr_requests = [
        source_for(make_client("flickr"), clock, terms=TERMS[:1], name=n).plan(0, 25, store) for n in ("f1", "f2")
    ]
    assert flickr_requests[0] == flickr_requests[1] and len(server.flickr.search_requests()) == 6  # Flickr: no cache


def test_replanning_a_batch_returns_its_items_without_a_request(server, make_client, clock, store):
    source = source_for(make_client("flickr"), clock)
    first, second = source.plan(0, 15, store), source.plan(1, 15, store)
    requests = len(server.flickr.requests)
    after_crash = source_for(make_client("flickr"), clock)
    assert after_crash.plan(1, 15, store) == second and after_crash.plan(0, 15, store) == first
    assert after_crash.last_report.replayed and len(server.flickr.requests) == requests
    record = store.read_json(source.batch_key(1))
    assert (record["start"]["term"], record["start"]["page"], len(record["start"]["pending"])) == (TERMS[0], 3, 5)
    skipped_one = source.plan(3, 15, store)  # batch 2 had no share of this source: 3 goes on from 1
    assert not set(i.source_id for i in skipped_one) & set(i.source_id for i in first + second)
    assert store.read_json(source.batch_key(3))["start"] == record["end"]


@pytest.mark.parametrize("api", APIS)
def test_a_pagination_loop_stops_the_term_with_a_warning(api, server, make_client, clock, store):
    fake = fake_of(server, api)
    fake.photos_per_term, fake.loop_from_page = 100, 3
    source = source_for(make_client(api), clock)
    items = source.plan(0, 100, store)
    report = source.last_report
    assert (len(items), report.queries, report.stopped_because) == (40, 6, "terms_exhausted")
    assert [w.split(":")[0] for w in report.warnings] == [f"pagination loop in term {t!r}" for t in TERMS]


def test_pixabay_page_out_of_range_ends_the_term_without_a_failure(server, make_client, clock, store):
    source = source_for(make_client("pixabay"), clock, terms=TERMS[:1])
    assert len(source.plan(0, 10, store)) == 10
    server.pixabay.photos_per_term = 10  # the result count shrank: page 2 no longer exists
    assert source.plan(1, 10, store) == []
    report = source.last_report
    assert (report.queries, report.pages_failed, report.stopped_because) == (1, {}, "terms_exhausted")


def test_an_unreachable_api_leaves_the_term_after_three_failed_pages(clock, store):
    with FlickrClient("any-key", base_url=f"http://127.0.0.1:{free_port()}/services/rest", per_page=10) as client:
        source = source_for(client, clock, terms=TERMS[:1])
        assert source.plan(0, 10, store) == []
    report = source.last_report
    assert (report.queries, report.pages_failed, report.stopped_because) == (
        12,
        {"connection_error": 3},
        "terms_exhausted",
    )
    assert report.warnings[-1] == (
        f"leaving term {TERMS[0]!r} after 3 pages in a row that failed or held no usable photo"
    )


@pytest.mark.parametrize("api", APIS)
def test_a_refused_key_stops_loudly_and_records_no_batch(api, server, make_client, clock, store):
    source = source_for(make_client(api, key="wrong-secret-9999"), clock)
    with pytest.raises(ApiKeyRejected) as caught:
        source.plan(0, 10, store)
    assert "wrong-secret-9999" not in "".join(traceback.format_exception(caught.value))
    assert source.last_report.stopped_because == "auth_failed" and not store.exists(source.batch_key(0))


def test_the_key_never_reaches_logs_exceptions_or_the_store(server, make_client, clock, store, caplog):
    caplog.set_level(logging.DEBUG)
    for api in APIS:
        fake = fake_of(server, api)
        fake.inject("500", page=1, times=4)
        fake.inject("malformed_json", page=2)
        source_for(make_client(api), clock, terms=TERMS[:1]).plan(0, 30, store)
    with client_for(server, "flickr", timeout_s=0.2) as client:
        server.flickr.inject("slow", delay_s=0.5)
        with pytest.raises(ApiError) as caught:
            client.get(client.search_url, client.search_params("x", 1), "flickr 'x' page 1")
    keys = (server.flickr_key, server.unsplash_key, server.pixabay_key)
    messages = [r.getMessage() for r in caplog.records]
    assert any("api_key=REDACTED" in m for m in messages) and any("/pixabay/api/?key=REDACTED&" in m for m in messages)
    assert any("gave up after 4 tries" in m for m in messages)
    texts = messages + ["".join(traceback.format_exception(caught.value))]
    texts += [store.read_bytes(k).decode() for k in store.list("sourcing")]
    assert not [t for t in texts for k in keys if k in t]
    assert caught.value.reason == "timeout"


def test_sliding_window_limiter_waits_pauses_and_persists(store, clock):
    def limiter(max_wait_s: float = 30.0) -> SlidingWindowLimiter:
        return SlidingWindowLimiter(
            store, "limits/test.json", RateLimit(2, 10.0), max_wait_s=max_wait_s, clock=clock, sleep=clock.sleep
        )

    assert (limiter().acquire(), limiter().acquire()) == (0.0, 0.0)
    clock.now += 4.0
    assert limiter().acquire() == 6.0  # the first call leaves the window 10 s after it was made
    limiter().pause(30.0)
    with pytest.raises(RateLimitExhausted) as caught:
        limiter(max_wait_s=5.0).acquire()
    assert caught.value.wait_s == 30.0
    clock.now += 30.0
    limiter().observe(remaining=0, reset_s=None)  # no reset stated: a full period
    assert limiter().wait_needed() == 10.0


def test_the_next_slot_frees_one_period_after_the_oldest_call_in_the_window(store, clock):
    limiter = SlidingWindowLimiter(store, "limits/edge.json", RateLimit(2, 10.0), clock=clock, sleep=clock.sleep)
    start = clock.now
    limiter.acquire()
    clock.now = start + 3.0
    limiter.acquire()
    clock.now = start + 5.0
    assert limiter.wait_needed() == 5.0  # the call at 0 leaves the window at 10; the one at 3 only at 13
    clock.now = start + 10.0  # exactly one period after the oldest call: it is out, a slot is free
    assert limiter.wait_needed() == 0.0
    assert limiter.acquire() == 0.0
    clock.now = start + 12.999
    assert limiter.wait_needed() == pytest.approx(0.001, abs=1e-6)  # now the call at 3 is the oldest in the window
