"""The pool's sourcing lock: one batch at a time plans and admits, while the fetching of many runs in parallel.

The lock lives in the store itself, as generations: ``sourcing/lock/<generation>.json`` holds its owner (a
batch), when it last renewed its lease and, once released, when. Taking the lock is the exclusive creation
of the generation after the newest one (``Store.create_exclusive``: of two batches trying, exactly one
creates it), allowed when the newest is released, its lease has run out (its holder died: the lock is
broken, with a log line), or its owner is the same batch (an earlier run of it was killed while holding it:
no other run of a batch runs beside it, its staging folder is its own). Nothing is ever deleted to break a
lock, so two breakers can never free each other's fresh lock; a new holder removes the generations before
the one it holds.

While held, a thread renews the lease every quarter of it, so a live holder keeps the lock through a long
finish and a dead one loses it one lease later. A holder that finds a newer generation (it stalled past its
lease and was broken) stops at its next ``confirm`` with LockLost before writing anything shared.

Leases compare wall clocks of different hosts (as the API rate limiter does): they are minutes long, clocks
under NTP differ by far less.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cosmicman.core.store import Store

SOURCING_LOCK_PREFIX = "sourcing/lock"
DEFAULT_LEASE_S = 120.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]

log = logging.getLogger(__name__)


class LockLost(RuntimeError):
    """A newer generation of the lock exists: this holder stalled past its lease and another batch broke it."""


@dataclass(frozen=True)
class LockState:
    generation: int
    owner: str
    renewed_at: float
    lease_s: float
    released_at: float | None

    def expired(self, now: float) -> bool:
        """Older than its lease: ``lease_s`` seconds since the last renewal is still held, a moment later broken."""
        return now - self.renewed_at > self.lease_s


def _generation_key(generation: int) -> str:
    return f"{SOURCING_LOCK_PREFIX}/{generation:012d}.json"


def _generations(store: Store) -> list[int]:
    return sorted(int(posixpath.basename(k).removesuffix(".json")) for k in store.list(SOURCING_LOCK_PREFIX))


def read_lock(store: Store) -> LockState | None:
    """The newest generation of the lock, or None when it was never taken."""
    generations = _generations(store)
    if not generations:
        return None
    record = store.read_json(_generation_key(generations[-1]))
    return LockState(generations[-1], **record)


class SourcingLock:
    """The pool-wide lock of one batch (``owner``); ``hold()`` waits for it, holds it and releases it."""

    def __init__(
        self,
        store: Store,
        owner: str,
        lease_s: float = DEFAULT_LEASE_S,
        *,
        poll_s: float = 1.0,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        renew: bool = True,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"the sourcing lock's lease must be positive seconds, got {lease_s}")
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self.poll_s, self.clock, self.sleep, self.renew = poll_s, clock, sleep, renew
        self.generation: int | None = None

    def _record(self, released_at: float | None = None) -> bytes:
        body = {"owner": self.owner, "renewed_at": self.clock(), "lease_s": self.lease_s, "released_at": released_at}
        return json.dumps(body, sort_keys=True).encode()

    def try_acquire(self) -> bool:
        """Take the lock if it is free, broken or this batch's own; False while another batch holds it."""
        current = read_lock(self.store)
        if current is not None and current.released_at is None:
            if current.owner == self.owner:
                log.warning(f"{self.owner}: taking over the sourcing lock an earlier run of it held")
            elif current.expired(self.clock()):
                log.warning(
                    f"{self.owner}: breaking the sourcing lock of {current.owner}: not renewed for"
                    f" {self.clock() - current.renewed_at:.0f}s, over its lease of {current.lease_s:.0f}s"
                )
            else:
                return False
        generation = current.generation + 1 if current is not None else 0
        if not self.store.create_exclusive(_generation_key(generation), self._record()):
            return False  # another batch took this generation first
        self.generation = generation
        for older in _generations(self.store):
            if older < generation:
                self.store.delete(_generation_key(older))
        return True

    def acquire(self) -> None:
        """Wait until the lock is this batch's (a live holder renews; a dead one's lease runs out)."""
        waited_since = self.clock()
        last_said = waited_since
        while not self.try_acquire():
            if self.clock() - last_said >= 60:
                last_said = self.clock()
                holder = read_lock(self.store)
                log.info(
                    f"{self.owner}: waiting {last_said - waited_since:.0f}s for the sourcing lock"
                    f" held by {holder.owner if holder else 'nobody'}"
                )
            self.sleep(self.poll_s)

    def confirm(self) -> None:
        """Raise LockLost unless this batch still holds the newest generation (call before shared writes)."""
        current = read_lock(self.store)
        if self.generation is None or current is None or current.generation != self.generation:
            raise LockLost(
                f"{self.owner} no longer holds the sourcing lock (generation {self.generation}, newest"
                f" {current.generation if current else None}): it was broken after its lease ran out"
            )

    def renew_lease(self) -> None:
        self.confirm()
        assert self.generation is not None  # confirm() raised otherwise
        self.store.write_bytes(_generation_key(self.generation), self._record())

    def release(self) -> None:
        if self.generation is None:
            return
        current = read_lock(self.store)
        if current is not None and current.generation == self.generation:
            self.store.write_bytes(_generation_key(self.generation), self._record(released_at=self.clock()))
        self.generation = None

    @contextmanager
    def hold(self) -> Iterator[SourcingLock]:
        self.acquire()
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(stop,), daemon=True) if self.renew else None
        if renewer is not None:
            renewer.start()
        try:
            yield self
        finally:
            stop.set()
            if renewer is not None:
                renewer.join()
            self.release()

    def _renew_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 4):
            try:
                self.renew_lease()
            except LockLost as exc:
                log.error(str(exc))  # the holder's next confirm() stops it
                return
