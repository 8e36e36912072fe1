"""The check pool returns every item once with the check an inline run gives, sending several items a task through
buffers shared with its workers, and says so when a worker is gone instead of waiting for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cosmicman.core.imageio import check_image
from cosmicman.sourcing import check_pool
from cosmicman.sourcing.check_pool import CheckPool, CheckWorkerDied
from tests.support.hostile_files import encoded, hostile_files, photo

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(pool: CheckPool[str], items: list[tuple[str, bytes, str | None]]) -> list[tuple[str, bytes, object]]:
    try:
        results = [r for ticket, data, claimed in items for r in pool.submit(ticket, data, claimed)]
        return results + list(pool.drain())
    finally:
        pool.close()


def assert_each_once_as_inline(results, items, resize_to, scheme):
    assert sorted(t for t, _, _ in results) == sorted(t for t, _, _ in items)
    claimed_of = {t: c for t, _, c in items}
    for ticket, data, checked in results:
        assert checked == check_image(data, resize_to, claimed_of[ticket], scheme)


def test_every_item_comes_back_once_with_its_inline_check_in_tasks_of_per_task():
    items = [(f"item-{i}", encoded(photo(64 + i, 48, seed=i), "JPEG"), "jpg" if i % 2 else "png") for i in range(7)]
    pool: CheckPool[str] = CheckPool(workers=1, resize_to=None, phash_scheme="luma", per_task=3)
    sent: list[int] = []
    send = pool._send

    def counted():
        sent.append(len(pool.gathering))
        return send()

    pool._send = counted  # type: ignore[method-assign]
    results = run(pool, items)
    assert sent == [3, 3, 1]  # two full tasks, and the rest at the drain
    assert_each_once_as_inline(results, items, None, "luma")


def test_tasks_outgrowing_their_slots_buffers_get_larger_ones_and_every_verdict_stays(monkeypatch):
    """Small buffers to begin with, so that most tasks need a new one on the way; hostile files and resized copies
    (which come back through the socket) included, on more workers and slots than tasks at once."""
    monkeypatch.setattr(check_pool, "FIRST_BUFFER_BYTES", 256)
    files = [f.data for f in hostile_files()] + [encoded(photo(700 + 40 * i, 500, seed=i), "JPEG") for i in range(6)]
    items = [(f"item-{i}", data, None) for i, data in enumerate(files)]
    pool: CheckPool[str] = CheckPool(workers=2, resize_to=256, phash_scheme="luma-dct", per_task=4, depth=2)
    results = run(pool, items)
    assert_each_once_as_inline(results, items, 256, "luma-dct")
    assert any(checked.stored_bytes for _, _, checked in results)


def test_without_memfd_the_buffers_are_unlinked_temporary_files_and_every_verdict_stays(monkeypatch):
    """macOS has no memfd_create: the same pool on the fallback buffers."""
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(check_pool, "FIRST_BUFFER_BYTES", 256)  # a new buffer on the way, too
    items = [(f"item-{i}", encoded(photo(80 + 8 * i, 60, seed=i), "JPEG"), None) for i in range(5)]
    pool: CheckPool[str] = CheckPool(workers=1, resize_to=None, phash_scheme="luma", per_task=2)
    assert_each_once_as_inline(run(pool, items), items, None, "luma")


def test_a_worker_that_died_fails_the_batch_at_once():
    pool: CheckPool[str] = CheckPool(workers=1, resize_to=None, phash_scheme="luma-dct", per_task=1)
    worker = pool.workers[0].process
    worker.kill()
    worker.join()
    with pytest.raises(CheckWorkerDied, match="is gone"):
        run(pool, [("item", encoded(photo(), "JPEG"), None)])


def test_a_worker_that_dies_holding_a_task_fails_the_batch_instead_of_hanging_it():
    pool: CheckPool[str] = CheckPool(workers=1, resize_to=None, phash_scheme="luma-dct", per_task=1)
    worker = pool.workers[0].process
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGSTOP)  # it takes the task but cannot answer before it is killed
    try:
        assert list(pool.submit("item", encoded(photo(), "JPEG"), None)) == []
        worker.kill()
        with pytest.raises(CheckWorkerDied, match="unanswered tasks: 1"):
            list(pool.drain())
    finally:
        pool.close()


def test_workers_end_when_their_parent_is_killed():
    """A SIGKILLed ingest leaves no check worker behind: each sees its socket close and ends."""
    program = (
        "import time\n"
        "from cosmicman.sourcing.check_pool import CheckPool\n"
        "pool = CheckPool(workers=2, resize_to=None, phash_scheme='luma-dct')\n"
        "print(' '.join(str(w.process.pid) for w in pool.workers), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert parent.stdout is not None
    workers = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive and len(gone) == 2
