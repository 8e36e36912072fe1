"""The pool's sourcing lock: exclusive creation on every store kind, the lease's edge, breaking and taking over."""

import logging
import os
import threading

import pytest

from cosmicman.core.store import ExclusiveCreateUnsupported, Store
from cosmicman.sourcing.pool_lock import SOURCING_LOCK_PREFIX, LockLost, SourcingLock, read_lock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield Store(str(tmp_path / "store"))
    elif request.param == "memory":
        yield Store(f"memory://lock-{os.urandom(4).hex()}")
    else:
        from tests.support.s3_server import moto_s3

        bucket = f"lock-{os.urandom(4).hex()}"  # s3fs caches a filesystem per endpoint, and ports come back
        with moto_s3(bucket) as endpoint:
            yield Store(f"s3://{bucket}/pool", **endpoint.storage_options())


def test_an_exclusive_create_succeeds_once_and_keeps_the_first_bytes(store):
    assert store.create_exclusive("sourcing/lock/x.json", b"first")
    assert not store.create_exclusive("sourcing/lock/x.json", b"second")
    assert store.read_bytes("sourcing/lock/x.json") == b"first"
    assert store.list("sourcing/lock") == ["sourcing/lock/x.json"]  # no temporary key left behind


def test_of_many_threads_creating_one_key_exactly_one_wins(store):
    start = threading.Barrier(8)
    wins: list[int] = []

    def create(i: int) -> None:
        start.wait()
        if store.create_exclusive("race/key", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read_bytes("race/key") == str(wins[0]).encode()


def test_a_store_without_exclusive_create_refuses_the_lock_in_one_line(tmp_path):
    store = Store(f"dir::file://{tmp_path}")  # a filesystem with no way to create a key only when absent
    with pytest.raises(ExclusiveCreateUnsupported, match=r"cannot create a key exclusively.*local disk, s3://"):
        SourcingLock(store, "batch-00000").try_acquire()
    assert not store.list(SOURCING_LOCK_PREFIX)


def test_a_held_lock_is_refused_until_released_and_leaves_one_generation(tmp_path):
    store = Store(str(tmp_path))
    a = SourcingLock(store, "batch-00000", renew=False)
    b = SourcingLock(store, "batch-00001", renew=False)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert read_lock(store).released_at is not None
    assert b.try_acquire()
    assert read_lock(store).owner == "batch-00001"
    assert store.list(SOURCING_LOCK_PREFIX) == [f"{SOURCING_LOCK_PREFIX}/000000000001.json"]


def test_the_lease_edge_a_lock_exactly_at_its_lease_holds_a_moment_later_it_is_broken(tmp_path, caplog):
    store, clock = Store(str(tmp_path)), FakeClock()
    holder = SourcingLock(store, "batch-00000", lease_s=10.0, clock=clock, renew=False)
    waiter = SourcingLock(store, "batch-00001", lease_s=10.0, clock=clock, renew=False)
    assert holder.try_acquire()
    clock.now += 10.0
    assert not waiter.try_acquire()
    clock.now += 0.001
    with caplog.at_level(logging.WARNING, logger="cosmicman.sourcing.pool_lock"):
        assert waiter.try_acquire()
    assert "breaking the sourcing lock of batch-00000" in caplog.text
    with pytest.raises(LockLost, match="batch-00000 no longer holds the sourcing lock"):
        holder.confirm()
    holder.release()  # a stalled holder's release leaves the new holder's lock alone
    assert read_lock(store).owner == "batch-00001" and read_lock(store).released_at is None


def test_a_renewed_lease_keeps_the_lock(tmp_path):
    store, clock = Store(str(tmp_path)), FakeClock()
    holder = SourcingLock(store, "batch-00000", lease_s=10.0, clock=clock, renew=False)
    waiter = SourcingLock(store, "batch-00001", lease_s=10.0, clock=clock, renew=False)
    assert holder.try_acquire()
    clock.now += 8.0
    holder.renew_lease()
    clock.now += 8.0  # 16 s after taking it, 8 s after renewing
    assert not waiter.try_acquire()


def test_a_batch_killed_while_holding_the_lock_takes_it_over_at_once(tmp_path):
    store, clock = Store(str(tmp_path)), FakeClock()
    assert SourcingLock(store, "batch-00000", clock=clock, renew=False).try_acquire()  # then killed
    rerun = SourcingLock(store, "batch-00000", clock=clock, renew=False)
    other = SourcingLock(store, "batch-00001", clock=clock, renew=False)
    assert not other.try_acquire()
    assert rerun.try_acquire()
    assert rerun.generation == 1 and read_lock(store).owner == "batch-00000"


def test_the_renewing_thread_keeps_a_live_holder_past_its_lease(tmp_path):
    store = Store(str(tmp_path))
    holder = SourcingLock(store, "batch-00000", lease_s=1.0, poll_s=0.05)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.hold():
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    refused = []
    for _ in range(25):  # 2.5 s: two and a half leases
        refused.append(not SourcingLock(store, "batch-00001", renew=False).try_acquire())
        threading.Event().wait(0.1)
    done.set()
    thread.join()
    assert all(refused)
    assert read_lock(store).released_at is not None
