"""Blob writes run beside the decisions, but rows reach the chunks in decision order, each after its blob."""

from __future__ import annotations

import os
import threading

import pytest

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.keys import blob_key
from cosmicman.core.store import Store
from cosmicman.sourcing.ordered_commits import OrderedCommits


class HeldStore(Store):
    """A store whose write of one chosen blob waits until the test releases it (a slow PUT), or fails."""

    def __init__(self, held: bytes, fail: bool = False) -> None:
        super().__init__(f"memory://commits-{os.urandom(4).hex()}")
        self.held, self.fail, self.release = held, fail, threading.Event()

    def put_blob(self, data, ext, sha256=None):
        if data == self.held:
            self.release.wait(10)
            if self.fail:
                raise OSError("PUT refused")
        return super().put_blob(data, ext, sha256)


def blob(n: int) -> tuple[bytes, str, str]:
    data = f"image {n}".encode()
    return data, "jpg", sha256_hex(data)


def test_a_row_waits_for_its_blob_and_for_every_row_decided_before_it():
    store = HeldStore(held=blob(0)[0])
    committed: list[dict] = []
    commits = OrderedCommits(store, threads=4, commit=committed.append)
    commits.add({"position": 0, "status": "stored"}, blob(0))  # its write is held
    commits.add({"position": 1, "status": "near_duplicate"})  # decided against image 0 while it is in flight
    commits.add({"position": 2, "status": "stored"}, blob(2))
    written = blob_key(blob(2)[2], "jpg")
    for _ in range(250):  # image 2's write is not held: it lands while image 0's waits
        if store.exists(written):
            break
        threading.Event().wait(0.02)
    assert store.exists(written) and committed == []  # but row 0 is not done: nothing is committed yet
    store.release.set()
    commits.drain()
    assert [r["position"] for r in committed] == [0, 1, 2]
    assert committed[0]["blob_key"].endswith(".jpg") and "blob_key" not in committed[1]
    assert store.exists(committed[0]["blob_key"]) and store.exists(committed[2]["blob_key"])
    assert commits.created == 2
    commits.close()


def test_a_failed_write_commits_neither_its_row_nor_the_rows_after_it():
    store = HeldStore(held=blob(1)[0], fail=True)
    committed: list[dict] = []
    commits = OrderedCommits(store, threads=2, commit=committed.append)
    commits.add({"position": 0, "status": "stored"}, blob(0))
    commits.add({"position": 1, "status": "stored"}, blob(1))
    commits.add({"position": 2, "status": "failed"})
    store.release.set()
    with pytest.raises(OSError, match="PUT refused"):
        commits.drain()
    assert [r["position"] for r in committed] == [0]
    commits.close()


def test_inline_writes_commit_at_once_and_count_only_new_blobs():
    store = Store(f"memory://commits-{os.urandom(4).hex()}")
    committed: list[dict] = []
    commits = OrderedCommits(store, threads=0, commit=committed.append)
    commits.add({"position": 0}, blob(0))
    assert [r["position"] for r in committed] == [0]
    commits.add({"position": 1}, blob(0))  # the same bytes again: stored once
    assert commits.created == 1 and committed[1]["blob_key"] == committed[0]["blob_key"]
