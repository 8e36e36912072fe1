"""Admission at finish: the edge of the near-duplicate radius, what names a turned image, and which failed URLs a
batch may re-queue while others are in flight."""

import polars as pl

from cosmicman.core.keys import FAILED_URLS_KEY
from cosmicman.core.store import Store
from cosmicman.sourcing.admission import admit, record_seen_segments, segments_since_start
from cosmicman.sourcing.dedup import write_segment
from cosmicman.sourcing.failed_urls import FAILED_SCHEMA, staged_plan_key, urls_to_requeue

BASE = 0x0F0F_0F0F_0F0F_0F0F


def sha(c: str) -> str:
    return c * 64


def phash(bits_flipped: int) -> str:
    return f"{BASE ^ ((1 << bits_flipped) - 1):016x}"


def newer(*rows: tuple[str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sha_prefix": [int(s[:16], 16) for s, _ in rows],
            "phash": [int(p, 16) for _, p in rows],
            "sha256": [s for s, _ in rows],
            "batch": ["batch-00009"] * len(rows),
        },
        schema={"sha_prefix": pl.UInt64, "phash": pl.UInt64, "sha256": pl.Utf8, "batch": pl.Utf8},
    )


def log(*rows: tuple[str, str, str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"status": st, "sha256": s, "phash": p, "duplicate_of": d} for st, s, p, d in rows],
        schema={"status": pl.Utf8, "sha256": pl.Utf8, "phash": pl.Utf8, "duplicate_of": pl.Utf8},
    )


def test_the_radius_edge_at_the_distance_an_image_gives_way_one_further_it_stays():
    pool = newer((sha("a"), phash(0)))
    at_radius = log(("stored", sha("b"), phash(4), None))
    out, turned = admit(at_radius, pool, max_distance=4)
    assert turned == 1 and out.row(0) == ("near_duplicate", sha("b"), phash(4), sha("a"))
    beyond = log(("stored", sha("c"), phash(5), None))
    out, turned = admit(beyond, pool, max_distance=4)
    assert turned == 0 and out.row(0) == ("stored", sha("c"), phash(5), None)
    exact_only, turned = admit(at_radius, pool, max_distance=None)
    assert turned == 0 and exact_only["status"].to_list() == ["stored"]


def test_an_exact_match_comes_first_and_copies_of_a_turned_image_name_the_pool_image():
    pool = newer((sha("a"), phash(0)), (sha("e"), f"{~BASE & (2**64 - 1):016x}"))
    batch_log = log(
        ("stored", sha("b"), phash(2), None),  # near the pool's a
        ("duplicate", sha("b"), phash(2), sha("b")),  # an exact copy of b: now a copy of a near-duplicate
        ("stored", sha("e"), phash(1), None),  # e's bytes are in the pool (its phash near a's too)
        ("near_duplicate", sha("f"), phash(3), sha("e")),
        ("failed", None, None, None),
    )
    out, turned = admit(batch_log, pool, max_distance=4)
    assert turned == 2
    assert out.select("status", "duplicate_of").rows() == [
        ("near_duplicate", sha("a")),
        ("near_duplicate", sha("a")),
        ("duplicate", sha("e")),
        ("near_duplicate", sha("e")),
        ("failed", None),
    ]


def test_only_segments_written_after_the_batch_recorded_what_it_saw_are_checked(tmp_path):
    store = Store(str(tmp_path))
    stored = pl.DataFrame({"sha256": [sha("a")], "phash": [phash(0)]})
    write_segment(store, "batch-00000", stored, "luma-dct")
    record_seen_segments(store, "batch-00002")
    write_segment(store, "batch-00001", stored.with_columns(pl.lit(sha("b")).alias("sha256")), "luma-dct")
    write_segment(store, "batch-00002", stored.with_columns(pl.lit(sha("c")).alias("sha256")), "luma-dct")  # its own
    record_seen_segments(store, "batch-00002")  # a resumed run keeps the first record
    assert segments_since_start(store, "batch-00002")["sha256"].to_list() == [sha("b")]


def test_outcomes_staged_before_the_record_existed_are_checked_against_every_segment(tmp_path):
    store = Store(str(tmp_path))
    write_segment(store, "batch-00000", pl.DataFrame({"sha256": [sha("a")], "phash": [phash(0)]}), "luma-dct")
    store.write_bytes("sourcing/staging/batch-00001/done/chunk-00000.parquet", b"")
    record_seen_segments(store, "batch-00001")
    assert segments_since_start(store, "batch-00001")["sha256"].to_list() == [sha("a")]


def test_a_failed_url_another_batch_in_flight_requeued_is_not_requeued_again(tmp_path):
    store = Store(str(tmp_path))
    rows = [
        {"url": u, "source": "laion", "reason": "timeout", "attempts": 1, "last_batch": "batch-00000", "state": s}
        for u, s in (("http://x/1", "pending"), ("http://x/2", "pending"), ("http://x/3", "final"))
    ]
    store.write_table(FAILED_URLS_KEY, pl.DataFrame(rows, schema=FAILED_SCHEMA))
    in_flight = pl.DataFrame({"url": ["http://x/1", "http://x/2"], "url_attempt": [2, 1]})
    store.write_table(staged_plan_key("batch-00001"), in_flight)  # re-queued x/1; x/2 came fresh from a source
    assert urls_to_requeue(store, "batch-00002", 8, 0.25)["url"].to_list() == ["http://x/2"]
    assert urls_to_requeue(store, "batch-00001", 8, 0.25)["url"].to_list() == ["http://x/1", "http://x/2"]
    assert urls_to_requeue(store, "batch-00001", 7, 0.25)["url"].to_list() == ["http://x/1"]  # floor(7 / 4)
