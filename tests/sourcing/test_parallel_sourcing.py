"""Sourcing batches in parallel: however two batches that share URLs, bytes and near-duplicates interleave, the pool
admits each image once (forced orders, a true run of two processes, a memory store's threads, a kill mid-finish)."""

import itertools
import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import polars as pl
import pytest

from cosmicman.core.keys import raw_table_key, sourcing_staging_prefix
from cosmicman.core.store import Store
from cosmicman.sourcing import ingest
from cosmicman.sourcing.dedup import PoolIndex, load_index_table
from cosmicman.sourcing.ingest import IngestConfig, source_batch
from cosmicman.sourcing.pool_lock import SourcingLock, read_lock
from cosmicman.sourcing.sources import ParquetSource
from tests.sourcing.test_ingest import FAST_FETCH, laion, server  # noqa: F401 (server: the image server fixture)

BATCHES = ("batch-00000", "batch-00001")
NEAR_DUP_DISTANCE = IngestConfig().near_dup_distance


def batch_urls(server):  # noqa: F811
    """Two batches sharing a URL, bytes under another URL, and a re-encoded and a half-size copy of two photos."""
    a = [server.url(f"img/p00{i}.jpg") for i in range(3)] + [server.url(f"img/p01{i}.jpg") for i in (0, 1, 3)]
    b = [
        server.url("img/p000.jpg"),  # the same URL
        server.url("img/p001-q60.jpg"),  # re-encoded
        server.url("img/p002-half.jpg"),  # resized to half
        server.url("slow/0.01/p010.jpg"),  # the same bytes from another URL
        server.url("img/p003.jpg"),
        server.url("img/p012.jpg"),
    ]
    return {BATCHES[0]: a, BATCHES[1]: b}


POOL_PHOTOS = 8  # p000, p001, p002, p003, p010, p011, p012, p013: one copy each


def run_batch(store, batch, urls, tmp_path, **config):
    parquet = laion(tmp_path / f"{batch}.parquet", urls)
    cfg = IngestConfig(**{"workers": 0, "fetch": FAST_FETCH, **config})
    return source_batch(store, batch, 0, [(ParquetSource(parquet), 100)], cfg)  # each batch its own list


def assert_each_image_admitted_once(store, urls):
    """The pool's tables and index hold each photo once, no two within the near-duplicate radius, and every
    outcome that is not stored names an image of the pool."""
    raw = pl.concat([store.read_table(raw_table_key(b)) for b in BATCHES])
    assert len(raw) == raw["sha256"].n_unique() == POOL_PHOTOS
    phashes = [int(p, 16) for p in raw["phash"]]
    closest = min(bin(x ^ y).count("1") for x, y in itertools.combinations(phashes, 2))
    assert closest > NEAR_DUP_DISTANCE
    index = load_index_table(store)
    assert sorted(index["sha256"]) == sorted(raw["sha256"])
    for batch in BATCHES:
        log = store.read_table(f"tables/sourcing_log/{batch}.parquet")
        assert len(log) == len(urls[batch]) and (log["status"] != "failed").all()
        assert set(log.filter(pl.col("status") != "stored")["duplicate_of"]) <= set(raw["sha256"])
        assert not store.exists(sourcing_staging_prefix(batch))
    assert read_lock(store).released_at is not None
    return raw


def start_both_then_finish_in_order(monkeypatch, first: str):
    """Both batches load the pool index before either decides anything; ``first`` finishes before the other
    starts its finish."""
    both_loaded = threading.Barrier(2, timeout=30)
    first_done = threading.Event()
    load = PoolIndex.load

    def load_then_wait(store, max_distance, exclude_batch=None):
        index = load(store, max_distance, exclude_batch)
        both_loaded.wait()
        return index

    resolve = ingest._resolve_near_duplicates

    def finish_in_order(store, log):
        if log["batch"][0] != first:
            assert first_done.wait(30)
        return resolve(store, log)

    monkeypatch.setattr(ingest, "PoolIndex", SimpleNamespace(load=load_then_wait))
    monkeypatch.setattr(ingest, "_resolve_near_duplicates", finish_in_order)
    return first_done


def run_side_by_side(store, urls, tmp_path, first_done=None, first=None):
    reports, errors = {}, []

    def work(batch):
        try:
            reports[batch] = run_batch(store, batch, urls[batch], tmp_path)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)
        finally:
            if first_done is not None and batch == first:
                first_done.set()

    threads = [threading.Thread(target=work, args=(b,)) for b in BATCHES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return reports


@pytest.mark.parametrize("first", BATCHES)
def test_two_batches_that_decided_blind_admit_each_image_once_whichever_finishes_first(
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
    first,
):
    store = Store(str(tmp_path / "store"))
    urls = batch_urls(server)
    first_done = start_both_then_finish_in_order(monkeypatch, first)
    reports = run_side_by_side(store, urls, tmp_path, first_done, first)
    raw = assert_each_image_admitted_once(store, urls)
    second = BATCHES[1] if first == BATCHES[0] else BATCHES[0]
    # the second to finish gives way on the shared URL, the same bytes and the two copies, and keeps its own photos
    assert reports[first].admitted_elsewhere == 0 and reports[second].admitted_elsewhere == 4
    expected = {"duplicate": 2, "near_duplicate": 2, "failed": 0}
    assert reports[second].counts == {"stored": len(urls[second]) - 4, **expected}
    assert reports[first].counts == {"stored": len(urls[first]), "duplicate": 0, "near_duplicate": 0, "failed": 0}
    assert set(raw.filter(pl.col("batch") == first)["url"]) == set(urls[first])
    log = reports[second].log
    near = log.filter(pl.col("status") == "near_duplicate")
    kept_by_first = dict(zip(raw["url"], raw["sha256"]))
    copy_of = {"p001-q60.jpg": "p001.jpg", "p002-half.jpg": "p002.jpg"}
    if first == BATCHES[1]:
        copy_of = {v: k for k, v in copy_of.items()}
    for url, duplicate_of in near.select("url", "duplicate_of").iter_rows():
        original = url.rsplit("/", 1)[1]
        assert kept_by_first[server.url(f"img/{copy_of[original]}")] == duplicate_of


def test_two_processes_sourcing_at_once_admit_each_image_once(server, tmp_path):  # noqa: F811
    store_root = tmp_path / "store"
    urls = batch_urls(server)
    per_batch = len(urls[BATCHES[0]])
    assert len(urls[BATCHES[1]]) == per_batch  # batch-NNNNN takes rows NNNNN * limit on of one list
    parquet = laion(tmp_path / "list.parquet", urls[BATCHES[0]] + urls[BATCHES[1]])
    procs = []
    for batch in BATCHES:
        cmd = [sys.executable, "-m", "cosmicman.sourcing.ingest", "--parquet", parquet, "--store", str(store_root)]
        cmd += ["--batch", batch, "--limit", str(per_batch), "--workers", "0"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert_each_image_admitted_once(Store(str(store_root)), urls)
    assert sum(s["counts"]["stored"] for s in summaries) == POOL_PHOTOS


def test_threads_sourcing_at_once_on_a_memory_store_admit_each_image_once(server, tmp_path):  # noqa: F811
    store = Store(f"memory://parallel-{os.urandom(4).hex()}")
    urls = batch_urls(server)
    reports = run_side_by_side(store, urls, tmp_path)
    assert_each_image_admitted_once(store, urls)
    assert sum(r.counts["stored"] for r in reports.values()) == POOL_PHOTOS


def test_a_batch_killed_holding_the_lock_mid_finish_is_waited_out_then_resumes_without_admitting_twice(
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
):
    store = Store(str(tmp_path / "store"))
    urls = batch_urls(server)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as kill:
        kill.setattr(ingest, "update_failed_urls", killed)  # after its tables and index segment, before the rest
        kill.setattr(SourcingLock, "release", lambda self: None)  # a killed process releases nothing
        with pytest.raises(KeyboardInterrupt):
            run_batch(store, BATCHES[0], urls[BATCHES[0]], tmp_path, lock_lease_s=0.5)
    assert read_lock(store).owner == BATCHES[0] and read_lock(store).released_at is None
    assert store.exists(sourcing_staging_prefix(BATCHES[0]))
    with caplog.at_level("WARNING", logger="cosmicman.sourcing.pool_lock"):
        other = run_batch(store, BATCHES[1], urls[BATCHES[1]], tmp_path, lock_lease_s=0.5)
    assert f"breaking the sourcing lock of {BATCHES[0]}" in caplog.text
    assert other.counts["stored"] == 2  # the killed batch's segment was written: the copies give way to it
    resumed = run_batch(store, BATCHES[0], urls[BATCHES[0]], tmp_path)
    assert resumed.resumed_outcomes == len(urls[BATCHES[0]]) and resumed.admitted_elsewhere == 0
    assert_each_image_admitted_once(store, urls)
