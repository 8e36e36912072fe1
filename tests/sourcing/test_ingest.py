"""Sourcing batches end to end against a loopback image server with faults, hostile files and kills."""

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cosmicman.core.keys import FAILED_URLS_KEY, sourcing_staging_prefix
from cosmicman.core.store import Store
from cosmicman.sourcing.fetch import FetchConfig
from cosmicman.sourcing.ingest import IngestConfig, source_batch
from cosmicman.sourcing.sources import ParquetSource
from tests.support.hostile_files import hostile_files
from tests.support.image_server import ImageServer

FAST_FETCH = FetchConfig(connect_timeout_s=2, read_timeout_s=1.0, retries=1, backoff_s=0.05, backoff_max_s=2)


def photo_like(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A smooth random scene plus grain: perceptually distinct per seed, photo-like JPEG sizes."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(low, float) + grain, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(60):
        img = photo_like(i)
        (root / f"p{i:03d}.jpg").write_bytes(jpeg(img))
        if i < 4:  # copies of the first few: re-encoded, and resized to half
            (root / f"p{i:03d}-q60.jpg").write_bytes(jpeg(img, 60))
            (root / f"p{i:03d}-half.jpg").write_bytes(jpeg(img.resize((240, 180), Image.Resampling.LANCZOS)))
    (root / "png-named.jpg").write_bytes(_png(photo_like(99)))
    for hostile in hostile_files():
        (root / f"hostile-{hostile.name}").write_bytes(hostile.data)
    with ImageServer(root) as srv:
        yield srv


def laion(path, urls):
    pq.write_table(
        pa.table(
            {
                "url": urls,
                "caption": [f"alt {i}" for i in range(len(urls))],
                "width": [480] * len(urls),
                "height": [360] * len(urls),
                "license": ["cc-by"] * len(urls),
            }
        ),
        path,
    )
    return str(path)


def run(store, batch, urls_or_parquet, tmp_path, **config):
    parquet = (
        urls_or_parquet if isinstance(urls_or_parquet, str) else laion(tmp_path / f"{batch}.parquet", urls_or_parquet)
    )
    cfg = IngestConfig(**{"workers": 0, "fetch": FAST_FETCH, **config})
    return source_batch(store, batch, 0, [(ParquetSource(parquet), 10_000)], cfg)


def test_every_requested_item_is_accounted_for_by_reason(server, tmp_path):
    store = Store(str(tmp_path / "store"))
    good = [server.url(f"img/p{i:03d}.jpg") for i in range(20)]
    urls = good + [
        server.url("status/429/a?times=1&retry_after=1&then=p020.jpg"),  # rate limited once, then fine
        server.url("status/503/b?times=1&then=p021.jpg"),  # one 503, then fine
        server.url("status/503/c"),
        server.url("status/500/d"),  # always failing
        server.url("status/404/e"),
        server.url("status/410/f"),
        server.url("slow/5/p022.jpg"),
        server.url("html/p023.jpg"),
        server.url("json/p024.jpg"),
        server.url("drop/p025.jpg"),
        "ftp://example.invalid/x.jpg",
        "not a url",
        server.url("img/p000.jpg"),  # the same URL twice: an exact duplicate
        server.url("img/p001-q60.jpg"),
        server.url("img/p002-half.jpg"),  # near-duplicates
    ]
    report = run(store, "batch-00000", urls, tmp_path, workers=2)  # the worker-process path
    assert report.requested == len(urls) == 35
    assert report.counts == {"stored": 22, "duplicate": 1, "near_duplicate": 2, "failed": 10}
    assert report.failed_by_reason == {
        "bad_url": 2,
        "connection_error": 1,
        "http_404": 1,
        "http_410": 1,
        "not_an_image": 2,
        "server_error": 2,
        "timeout": 1,
    }
    assert sum(report.counts.values()) == report.requested
    assert len(report.raw) == 22 == len(store.list("blobs")) == report.blobs_created
    log = report.log
    assert log["position"].to_list() == list(range(35))
    # of each pair of copies, the one fetched first is kept (fetches run concurrently: either may be), the
    # other names it
    for pair in (("img/p001.jpg", "img/p001-q60.jpg"), ("img/p002.jpg", "img/p002-half.jpg")):
        rows = {
            r["status"]: r for r in log.filter(pl.col("url").is_in([server.url(u) for u in pair])).iter_rows(named=True)
        }
        assert set(rows) == {"stored", "near_duplicate"}, pair
        assert rows["near_duplicate"]["duplicate_of"] == rows["stored"]["sha256"], pair
    rate_limited = log.filter(pl.col("url").str.contains("status/429")).row(0, named=True)
    assert rate_limited["status"] == "stored" and rate_limited["fetch_attempts"] == 2
    row = report.raw.filter(pl.col("url") == good[5]).row(0, named=True)
    assert (row["licence"], row["alt_text"], row["width"], row["height"]) == ("cc-by", "alt 5", 480, 360)
    failed = store.read_table(FAILED_URLS_KEY)
    assert dict(Counter(failed["state"].to_list())) == {"pending": 4, "final": 6}  # 5xx / timeout / drop retry
    assert not store.exists(sourcing_staging_prefix("batch-00000"))
    again = run(store, "batch-00000", urls, tmp_path)  # a finished batch re-reads its log
    assert again.counts == report.counts and again.blobs_created == 0


def test_failed_urls_are_requeued_by_later_batches_up_to_the_limit(server, tmp_path):
    store = Store(str(tmp_path / "store"))
    flaky = server.url(f"status/503/flaky-{os.urandom(3).hex()}?times=2&then=p030.jpg")  # fails batch 0 only
    dead = server.url(f"status/503/dead-{os.urandom(3).hex()}")
    first = run(store, "batch-00000", [flaky, dead, server.url("img/p031.jpg")], tmp_path, max_url_attempts=2)
    assert first.failed_by_reason == {"server_error": 2}
    second = run(store, "batch-00001", [server.url("img/p032.jpg")] * 8, tmp_path, max_url_attempts=2)
    assert second.requeued == 2
    assert second.log.filter(pl.col("url") == flaky)["status"].to_list() == ["stored"]
    states = dict(store.read_table(FAILED_URLS_KEY).select("url", "state").iter_rows())
    assert states == {flaky: "recovered", dead: "exhausted"}
    third = run(store, "batch-00002", [server.url("img/p033.jpg")] * 8, tmp_path, max_url_attempts=2)
    assert third.requeued == 0


def test_near_duplicates_are_caught_across_batches(server, tmp_path):
    store = Store(str(tmp_path / "store"))
    run(store, "batch-00000", [server.url(f"img/p{i:03d}.jpg") for i in range(4)], tmp_path)
    copies = [server.url(f"img/p{i:03d}-q60.jpg") for i in range(4)] + [
        server.url(f"img/p{i:03d}-half.jpg") for i in range(4)
    ]
    report = run(
        store,
        "batch-00001",
        copies + [server.url("img/p000.jpg"), server.url("img/p040.jpg"), server.url("img/png-named.jpg")],
        tmp_path,
    )
    assert report.counts == {"stored": 2, "duplicate": 1, "near_duplicate": 8, "failed": 0}
    renamed = report.raw.filter(pl.col("url").str.ends_with("png-named.jpg")).row(0, named=True)
    assert renamed["ext"] == "png" and renamed["blob_key"].endswith(".png")
    assert "ext:jpg->png" in report.log.filter(pl.col("url") == renamed["url"])["detail"].item()
    first = store.read_table("tables/raw_images/batch-00000.parquet")
    near = report.log.filter(pl.col("status") == "near_duplicate")
    assert set(near["duplicate_of"]) == set(first["sha256"])


def test_hostile_files_end_as_recorded_rejections_and_good_images_stay(server, tmp_path):
    store = Store(str(tmp_path / "store"))
    corpus = hostile_files()
    good = [server.url(f"img/p{i:03d}.jpg") for i in range(41, 47)]
    hostile = [server.url(f"lie/hostile-{h.name}") for h in corpus]  # all served as image/jpeg
    # several kept files are variants of one photo: near-duplicate detection would merge them
    report = run(store, "batch-00000", good + hostile, tmp_path, near_dup_distance=None)
    outcome = {
        u.rsplit("hostile-", 1)[1]: (s, r)
        for u, s, r in report.log.filter(pl.col("url").str.contains("hostile-"))
        .select("url", "status", "reason")
        .iter_rows()
    }
    assert outcome == {h.name: ("stored", None) if h.reason is None else ("failed", h.reason) for h in corpus}
    assert set(good) <= set(report.raw["url"])
    assert report.counts["stored"] == len(good) + sum(h.reason is None for h in corpus)


def test_sigkill_mid_batch_then_rerun_loses_nothing_and_duplicates_nothing(server, tmp_path):
    urls = [server.url(f"slow/0.15/p{i:03d}.jpg") for i in range(48)] + [server.url("img/p000.jpg")]
    parquet = laion(tmp_path / "list.parquet", urls)
    root = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "cosmicman.sourcing.ingest",
        "--parquet",
        parquet,
        "--store",
        str(root),
        "--limit",
        "100",
        "--chunk-size",
        "6",
        "--max-in-flight",
        "4",
        "--workers",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    done_dir = root / sourcing_staging_prefix("batch-00000") / "done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(done_dir.glob("chunk-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    chunks_at_kill = len(list(done_dir.glob("chunk-*.parquet")))
    assert 3 <= chunks_at_kill < 9, "the kill must land mid-batch"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["resumed_outcomes"] >= 18 and summary["requested"] == 49
    assert summary["counts"] == {"stored": 48, "duplicate": 1, "near_duplicate": 0, "failed": 0}
    store = Store(str(root))
    log = store.read_table("tables/sourcing_log/batch-00000.parquet")
    assert sorted(log["position"]) == list(range(49))
    raw = store.read_table("tables/raw_images/batch-00000.parquet")
    assert raw["sha256"].n_unique() == len(raw) == 48
    assert len(store.list("blobs")) == 48  # no blob twice, none orphaned
    reference = Store(str(tmp_path / "reference"))
    ref = source_batch(
        reference,
        "batch-00000",
        0,
        [(ParquetSource(parquet), 100)],
        IngestConfig(workers=0, fetch=dataclasses.replace(FAST_FETCH, read_timeout_s=10)),
    )
    assert set(ref.raw["sha256"]) == set(raw["sha256"])


def test_a_pool_hashes_with_the_scheme_of_its_first_batch(server, tmp_path):
    """A new pool records the fast phash scheme with its first batch; a pool recorded under an earlier scheme keeps
    it, and a pool indexed before the record existed keeps imagehash's full phash, so that every hash a batch
    compares was made the same way."""
    from cosmicman.core.imageio import PHASH_SCHEMES, check_image
    from cosmicman.core.keys import POOL_PHASH_SCHEME_KEY

    for record, scheme in (("kept", "luma-dct"), ("luma", "luma"), ("deleted", "full")):
        store = Store(str(tmp_path / f"store-{scheme}"))
        first = run(store, "batch-00000", [server.url(f"img/p{i:03d}.jpg") for i in range(3)], tmp_path)
        assert first.phash_scheme == "luma-dct" and first.outcomes_per_s > 0
        if record == "deleted":
            store.delete(POOL_PHASH_SCHEME_KEY)  # as a pool sourced before the record existed
        elif record == "luma":
            store.write_json(POOL_PHASH_SCHEME_KEY, {"scheme": "luma"})  # as a pool sourced by the last release
        # p005 and p009 are ones whose hashes differ (most of these smooth scenes hash alike under every scheme)
        second = run(store, "batch-00001", [server.url(f"img/p{i:03d}.jpg") for i in (4, 5, 9)], tmp_path)
        assert second.phash_scheme == scheme
        blobs = [store.read_bytes(key) for key in second.raw["blob_key"]]
        hashes = {s: {check_image(blob, phash_scheme=s).phash for blob in blobs} for s in PHASH_SCHEMES}
        assert set(second.raw["phash"]) == hashes[scheme]
        assert all(hashes[scheme] != hashes[other] for other in PHASH_SCHEMES if other != scheme)


def test_the_cli_says_a_missing_url_list_or_a_bad_batch_name_in_one_line(tmp_path, capsys):
    from cosmicman.sourcing.ingest import main

    missing = str(tmp_path / "nowhere.parquet")
    assert main(["--parquet", missing, "--store", str(tmp_path / "store"), "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: parquet url list {missing!r} does not exist\n"
    with pytest.raises(SystemExit) as exited:
        main(["--parquet", missing, "--store", str(tmp_path / "store"), "--limit", "5", "--batch", "first"])
    assert exited.value.code == 2
    assert "--batch must be batch-NNNNN (e.g. batch-00000), got 'first'" in capsys.readouterr().err


def test_the_cli_says_a_pool_with_a_stale_phash_scheme_in_one_line_before_staging_anything(tmp_path, capsys):
    from cosmicman.core.keys import POOL_PHASH_SCHEME_KEY
    from cosmicman.sourcing.ingest import main

    store = Store(str(tmp_path / "store"))
    store.write_json(POOL_PHASH_SCHEME_KEY, {"scheme": "reduced"})  # an unreleased scheme's record
    parquet = laion(tmp_path / "urls.parquet", ["http://127.0.0.1:9/a.jpg"])
    assert main(["--parquet", parquet, "--store", str(tmp_path / "store"), "--limit", "5"]) == 2
    assert capsys.readouterr().err == (
        f"error: {store.uri(POOL_PHASH_SCHEME_KEY)} names phash scheme 'reduced', which this version does not make;"
        " the schemes are full, luma, luma-dct\n"
    )
    assert store.list(sourcing_staging_prefix("batch-00000")) == []
