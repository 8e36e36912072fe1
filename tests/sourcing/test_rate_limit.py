"""The sliding-window limiter's rules at their edges: how long a caller may wait, what a pause and the server's
own count do, and the log another process reads."""

import os

import pytest

from cosmicman.core.store import Store
from cosmicman.sourcing.rate_limit import RateLimit, RateLimitExhausted, SlidingWindowLimiter
from tests.support.fake_apis import FakeClock

KEY = "limits/rules.json"
ONE_PER_10_S = RateLimit(1, 10.0)


@pytest.fixture
def store():
    return Store(f"memory://rate-limit-{os.urandom(4).hex()}")


def _limiter(store, clock, limit=ONE_PER_10_S, **options) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(store, KEY, limit, clock=clock, sleep=clock.sleep, **options)


def test_a_wait_of_exactly_max_wait_s_is_taken_and_a_longer_one_refused(store):
    clock = FakeClock()
    _limiter(store, clock).acquire()
    clock.now += 4.0
    with pytest.raises(RateLimitExhausted, match=r"^rate limit: next slot in 6\.0s$") as over:
        _limiter(store, clock, max_wait_s=5.999).acquire()
    assert (over.value.wait_s, clock.slept) == (6.0, [])  # refused without sleeping or taking a slot
    assert _limiter(store, clock, max_wait_s=6.0).acquire() == 6.0
    assert store.read_json(KEY) == {"calls": [clock.now], "paused_until": 0.0}  # the call 10 s old left the log


def test_the_default_max_wait_is_one_minute(store):
    clock = FakeClock()
    _limiter(store, clock, RateLimit(1, 60.0)).acquire()
    assert _limiter(store, clock, RateLimit(1, 60.0)).acquire() == 60.0
    with pytest.raises(RateLimitExhausted) as over:
        _limiter(store, clock, RateLimit(1, 60.5)).acquire()
    assert over.value.wait_s == 60.5


def test_waits_add_up_when_another_process_takes_the_slot_during_a_sleep(store):
    clock = FakeClock()
    other = _limiter(store, clock)
    other.acquire()

    def sleep_while_another_process_calls(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.slept) == 1:
            other.acquire()  # the freed slot is taken at the instant this process wakes up

    mine = SlidingWindowLimiter(store, KEY, RateLimit(1, 10.0), clock=clock, sleep=sleep_while_another_process_calls)
    assert mine.acquire() == 20.0
    other.acquire()  # the other process again: this time the total would exceed the limit
    impatient = SlidingWindowLimiter(
        store, KEY, RateLimit(1, 10.0), max_wait_s=15.0, clock=clock, sleep=sleep_while_another_process_calls
    )
    clock.slept.clear()
    with pytest.raises(RateLimitExhausted) as over:
        impatient.acquire()
    assert (over.value.wait_s, clock.slept) == (20.0, [10.0])


def test_a_pause_keeps_the_later_end_and_grants_nothing_until_then(store):
    clock = FakeClock(start=0.0)
    limiter = _limiter(store, clock, RateLimit(5, 10.0))
    assert limiter.wait_needed() == 0.0  # a fresh log holds no pause, even at time 0
    limiter.pause(30.0)
    limiter.pause(10.0)  # a shorter pause never shortens a running one
    assert limiter.wait_needed() == 30.0
    clock.now = 29.5
    assert limiter.wait_needed() == 0.5
    clock.now = 30.0
    assert (limiter.wait_needed(), limiter.acquire()) == (0.0, 0.0)
    assert store.read_json(KEY) == {"calls": [30.0], "paused_until": 30.0}


def test_the_server_count_pauses_only_at_zero_remaining(store):
    clock = FakeClock(start=0.0)
    limiter = _limiter(store, clock, RateLimit(5, 10.0))
    limiter.observe(remaining=1, reset_s=40.0)  # one left: the log decides
    limiter.observe(remaining=None, reset_s=40.0)  # the server said nothing
    assert limiter.wait_needed() == 0.0
    limiter.observe(remaining=0, reset_s=7.0)
    assert limiter.wait_needed() == 7.0
    limiter.observe(remaining=-1, reset_s=None)  # spent (some servers go below zero) and no reset stated: a period
    assert limiter.wait_needed() == 10.0


def test_the_call_log_is_shared_through_the_store(store):
    clock = FakeClock(start=100.0)
    first = _limiter(store, clock, RateLimit(2, 10.0))
    first.acquire()
    clock.now = 103.0
    first.acquire()
    assert store.read_json(KEY) == {"calls": [100.0, 103.0], "paused_until": 0.0}
    second = _limiter(store, clock, RateLimit(2, 10.0), max_wait_s=0.0)
    with pytest.raises(RateLimitExhausted, match=r"^rate limit: next slot in 7\.0s$"):
        second.acquire()
    assert second.wait_needed() == 7.0
