"""HTTP fetching: the retry policy shared with the web-API clients, and the concurrent image fetch engine."""

from __future__ import annotations

import asyncio
import email.utils
import queue
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

# Failure reasons worth another try in a later batch (the failed-URL table re-queues them);
# every other reason (404, not an image, too large, ...) is final.
RETRYABLE_REASONS = frozenset({"timeout", "connection_error", "server_error", "rate_limited"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int, retry_after: str | None, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1-based): the server's ``Retry-After`` when it gives one,
    else exponential backoff with full jitter, capped at ``max_s``."""
    told = parse_retry_after(retry_after)
    if told is not None:
        return min(told, max_s)
    return (rng or random).uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class FetchConfig:
    max_in_flight: int = 64  # requests in flight overall
    per_host: int = 16  # requests in flight per host:port
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # one whole attempt: connect, headers and body
    retries: int = 3  # extra attempts for retryable failures within this batch
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer wait fails the item now as rate_limited; a later batch re-queues it
    max_bytes: int = 50_000_000
    user_agent: str = "cosmicman-prime/0.1"


@dataclass(frozen=True)
class FetchResult:
    key: str
    url: str
    data: bytes | None  # the body when the fetch succeeded
    reason: str | None  # why it failed; None exactly when data is not None
    http_status: int | None  # of the last response, when one came
    attempts: int  # requests sent (0 for a bad URL or a host still rate-limited)
    content_type: str | None
    elapsed_s: float  # from the start of this item, waits for host slots and backoff included


# Results fetched ahead of the caller; with max_in_flight it bounds how many inputs are held at once.
RESULT_BUFFER = 16
# Taken results whose slots go back to the fetch loop in one call: each call wakes the loop's thread, so handing them
# back one by one would cost a cross-thread wakeup per image. Owed slots go back at once whenever no result waits.
RELEASE_EVERY = 8
# Error bodies this small are read so the keep-alive connection can be reused instead of closed.
DRAINED_ERROR_BYTES = 65536
NOT_IMAGE_SUBTYPES = frozenset({"json", "xml"})


@dataclass(frozen=True)
class Outcome:
    """One attempt's result; ``retry_after`` is the raw header of a failed response."""

    data: bytes | None
    reason: str | None
    http_status: int | None = None
    content_type: str | None = None
    retry_after: str | None = None


@dataclass
class HostState:
    slots: asyncio.Semaphore
    resume_at: float = 0.0  # monotonic time before which nothing more is sent (the host answered 429)
    users: int = 0  # items holding this state; it is dropped at zero so the table stays bounded


class Hosts:
    """Per-host slots and cool-downs, kept only while items for the host are outstanding or it cools down,
    so millions of distinct hosts do not pile up."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self.states: dict[tuple[str, int | None], HostState] = {}

    def checkout(self, host: tuple[str, int | None]) -> HostState:
        state = self.states.get(host)
        if state is None:
            state = self.states[host] = HostState(asyncio.Semaphore(self.per_host))
        state.users += 1
        return state

    def checkin(self, host: tuple[str, int | None], state: HostState) -> None:
        state.users -= 1
        self.drop_if_idle(host, state)

    def drop_if_idle(self, host: tuple[str, int | None], state: HostState) -> None:
        if state.users or self.states.get(host) is not state:
            return
        cooling_s = state.resume_at - time.monotonic()
        if cooling_s > 0:
            asyncio.get_running_loop().call_later(cooling_s, self.drop_if_idle, host, state)
        else:
            del self.states[host]


def is_not_an_image(mime_type: str) -> bool:
    """Text, JSON and XML answers are error or landing pages, never images (SVG stays: it is ``image/``)."""
    main_type, _, subtype = mime_type.partition("/")
    if main_type == "text":
        return True
    return main_type == "application" and (subtype in NOT_IMAGE_SUBTYPES or subtype.endswith(("+json", "+xml")))


def parse_http_url(url: object) -> URL | None:
    """The URL when it is an absolute http(s) URL with a host, else None (-> ``bad_url``)."""
    if not isinstance(url, str):
        return None
    try:
        parsed = URL(url)
        ok = parsed.scheme in ("http", "https") and bool(parsed.host)
    except (ValueError, UnicodeError):
        return None
    return parsed if ok else None


def failure_reason(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    return f"http_{status}"


async def read_body(response: aiohttp.ClientResponse, max_bytes: int) -> Outcome:
    status, content_type = response.status, response.headers.get("Content-Type")
    if not 200 <= status < 300:
        if response.content_length is not None and response.content_length <= DRAINED_ERROR_BYTES:
            await response.read()
        return Outcome(None, failure_reason(status), status, content_type, response.headers.get("Retry-After"))
    if is_not_an_image(response.content_type):
        return Outcome(None, "not_an_image", status, content_type)
    if response.content_length is not None and response.content_length > max_bytes:
        return Outcome(None, "too_large", status, content_type)
    # Counted as it streams: a body may come without a length, or compressed to far beyond its length.
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            return Outcome(None, "too_large", status, content_type)
        chunks.append(chunk)
    return Outcome(b"".join(chunks), None, status, content_type)


class Fetcher:
    """The asyncio side of ``fetch_all``: one session, the global and per-host limits, retries."""

    def __init__(self, session: aiohttp.ClientSession, config: FetchConfig) -> None:
        self.session = session
        self.config = config
        self.in_flight = asyncio.Semaphore(config.max_in_flight)
        self.hosts = Hosts(config.per_host)
        self.timeout = aiohttp.ClientTimeout(total=config.read_timeout_s, connect=config.connect_timeout_s)

    async def fetch(self, key: str, url: str) -> FetchResult:
        started = time.monotonic()
        parsed = parse_http_url(url)
        if parsed is None:
            return FetchResult(key, url, None, "bad_url", None, 0, None, time.monotonic() - started)
        host = (parsed.host or "", parsed.port)  # parse_http_url only accepts URLs with a host
        state = self.hosts.checkout(host)
        try:
            outcome, attempts = await self.fetch_with_retries(parsed, state)
        finally:
            self.hosts.checkin(host, state)
        return FetchResult(
            key,
            url,
            outcome.data,
            outcome.reason,
            outcome.http_status,
            attempts,
            outcome.content_type,
            time.monotonic() - started,
        )

    async def fetch_with_retries(self, url: URL, state: HostState) -> tuple[Outcome, int]:
        attempts = 0
        while True:
            async with state.slots:
                wait_s = state.resume_at - time.monotonic()
                if wait_s > self.config.max_retry_after_s:
                    return Outcome(None, "rate_limited"), attempts
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                attempts += 1
                async with self.in_flight:
                    outcome = await self.attempt(url)
            told_s = parse_retry_after(outcome.retry_after)
            if outcome.http_status == 429 and told_s is not None:
                # The whole host asked for a pause, so every item bound for it waits (or fails when too long).
                state.resume_at = max(state.resume_at, time.monotonic() + told_s)
            if (
                outcome.reason not in RETRYABLE_REASONS
                or attempts > self.config.retries
                or (told_s is not None and told_s > self.config.max_retry_after_s)
            ):
                return outcome, attempts
            await asyncio.sleep(
                backoff_delay(attempts, outcome.retry_after, self.config.backoff_s, self.config.backoff_max_s)
            )

    async def attempt(self, url: URL) -> Outcome:
        try:
            async with self.session.get(url, timeout=self.timeout) as response:
                return await read_body(response, self.config.max_bytes)
        except TimeoutError:
            return Outcome(None, "timeout")
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):  # a redirect to one, as parsing checked ours
            return Outcome(None, "bad_url")
        except aiohttp.TooManyRedirects as error:
            last_status = error.history[-1].status
            return Outcome(None, f"http_{last_status}", last_status)
        except (aiohttp.ClientError, OSError):
            return Outcome(None, "connection_error")


class Done:
    """Marks the end of the results; carries the error that ended them early, if any."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def run_fetches(
    requests: Iterable[tuple[str, str]], config: FetchConfig, results: queue.SimpleQueue, unclaimed: asyncio.Semaphore
) -> None:
    """Pull a request whenever ``unclaimed`` has room and fetch it, putting results on ``results`` as they
    complete; the consumer releases ``unclaimed`` for the results it took, which bounds what is held in memory."""
    connector = aiohttp.TCPConnector(limit=config.max_in_flight, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": config.user_agent}, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        fetcher = Fetcher(session, config)
        tasks: set[asyncio.Task] = set()

        def hand_over(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not task.cancelled():
                error = task.exception()
                results.put(Done(error) if error is not None else task.result())

        pending = iter(requests)
        try:
            while True:
                await unclaimed.acquire()
                request = next(pending, None)
                if request is None:
                    break
                task = asyncio.create_task(fetcher.fetch(*request))
                tasks.add(task)
                task.add_done_callback(hand_over)
            if tasks:
                await asyncio.wait(set(tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_loop(loop: asyncio.AbstractEventLoop, main: asyncio.Task, results: queue.SimpleQueue) -> None:
    """The background thread: runs ``main`` to the end; the consumer closes the loop once this returns, so its
    calls into the loop never meet a closed one."""
    try:
        loop.run_until_complete(main)
        results.put(Done())
    except BaseException as error:  # the consumer re-raises it; a cancellation it asked for goes unread
        results.put(Done(error))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())


def fetch_all(requests: Iterable[tuple[str, str]], config: FetchConfig = FetchConfig()) -> Iterator[FetchResult]:
    """Fetch ``(key, url)`` pairs, yielding one FetchResult per request in completion order.

    ``requests`` is read lazily: at most ``max_in_flight + RESULT_BUFFER`` items are pulled and not yet yielded.
    The fetching runs on an event loop in a background thread; closing the generator cancels it and waits for
    the thread to end. An error from ``requests`` itself is raised here.
    """
    results: queue.SimpleQueue = queue.SimpleQueue()
    loop = new_event_loop()
    unclaimed = asyncio.Semaphore(config.max_in_flight + RESULT_BUFFER)
    main = loop.create_task(run_fetches(requests, config, results, unclaimed))
    thread = threading.Thread(target=run_loop, args=(loop, main, results), name="fetch_all", daemon=True)
    thread.start()
    owed = 0  # results taken whose slots the loop has not been given back yet

    def give_back(n: int) -> None:
        for _ in range(n):
            unclaimed.release()

    try:
        while True:
            try:
                item = results.get_nowait()
            except queue.Empty:
                if owed:  # the loop may be waiting for these slots to fetch what comes next
                    loop.call_soon_threadsafe(give_back, owed)
                    owed = 0
                item = results.get()
            if isinstance(item, Done):
                break
            owed += 1
            if owed == RELEASE_EVERY:
                loop.call_soon_threadsafe(give_back, owed)
                owed = 0
            yield item
        if item.error is not None:
            raise item.error
    finally:
        loop.call_soon_threadsafe(main.cancel)
        thread.join()
        loop.close()
