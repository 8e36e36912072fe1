"""Request budgets for the web APIs: a sliding-window limiter whose call log lives in the store.

Keeping the log in the store (not in memory) is what lets batches planned one after another, by
different processes, share one API key's budget. The log holds wall-clock times, so the default clock
is ``time.time`` (monotonic clocks are not comparable between processes); tests inject a fake clock
and a fake sleep so minutes of waiting cost nothing.

The log is read and rewritten around every call: processes planning one after another respect it
exactly; processes planning at the same instant could both take the last slot, which is why the
limiter also obeys the server's own remaining/reset headers and 429 ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cosmicman.core.store import Store

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` requests in any ``period_s`` seconds."""

    calls: int
    period_s: float


# The published limits (../shared/NOTES-data.md, "Sources and their limits").
FLICKR_RATE_LIMIT = RateLimit(3600, 3600.0)
PIXABAY_RATE_LIMIT = RateLimit(100, 60.0)
UNSPLASH_DEMO_RATE_LIMIT = RateLimit(50, 3600.0)
UNSPLASH_PRODUCTION_RATE_LIMIT = RateLimit(5000, 3600.0)


class RateLimitExhausted(Exception):
    """The next free slot is further away than the caller agreed to wait."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"rate limit: next slot in {wait_s:.1f}s")
        self.wait_s = wait_s


class SlidingWindowLimiter:
    """Grants a call only when fewer than ``limit.calls`` calls were made in the last ``limit.period_s``
    seconds and no server-imposed pause is running; waits for a slot up to ``max_wait_s``."""

    def __init__(
        self,
        store: Store,
        key: str,
        limit: RateLimit,
        *,
        max_wait_s: float = 60.0,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.store = store
        self.key = key
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.sleep = sleep

    def _load(self) -> tuple[list[float], float]:
        if not self.store.exists(self.key):
            return [], 0.0
        state = self.store.read_json(self.key)
        return [float(t) for t in state["calls"]], float(state["paused_until"])

    def _save(self, calls: list[float], paused_until: float) -> None:
        self.store.write_json(self.key, {"calls": calls, "paused_until": paused_until})

    def _in_window(self, calls: list[float], now: float) -> list[float]:
        return [t for t in calls if t > now - self.limit.period_s]

    def wait_needed(self) -> float:
        """Seconds until a call would be granted (0 when one is free now)."""
        calls, paused_until = self._load()
        now = self.clock()
        return self._wait(self._in_window(calls, now), paused_until, now)

    def _wait(self, recent: list[float], paused_until: float, now: float) -> float:
        slot_frees = recent[-self.limit.calls] + self.limit.period_s if len(recent) >= self.limit.calls else now
        return max(0.0, slot_frees - now, paused_until - now)

    def acquire(self) -> float:
        """Take one call slot and return the seconds waited for it; raise ``RateLimitExhausted``
        (taking nothing) when the slot is more than ``max_wait_s`` away in total."""
        waited = 0.0
        while True:
            calls, paused_until = self._load()
            now = self.clock()
            recent = self._in_window(calls, now)
            wait = self._wait(recent, paused_until, now)
            if wait <= 0:
                self._save(recent + [now], paused_until)
                return waited
            # Each pass sleeps at least the wait it measured, so the total is bounded by max_wait_s.
            if waited + wait > self.max_wait_s:
                raise RateLimitExhausted(waited + wait)
            self.sleep(wait)
            waited += wait

    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (a 429's ``Retry-After``, a spent server window)."""
        calls, paused_until = self._load()
        self._save(calls, max(paused_until, self.clock() + seconds))

    def observe(self, remaining: int | None, reset_s: float | None) -> None:
        """Obey the server's own count: at zero remaining, pause until its reset (a full period when
        it does not say), since the server may count calls this log never saw (another client)."""
        if remaining is not None and remaining <= 0:
            self.pause(reset_s if reset_s is not None else self.limit.period_s)
