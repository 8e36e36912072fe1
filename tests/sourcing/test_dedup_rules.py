"""The duplicate index's rules at their edges: the near-duplicate radius (0..15), every band of the
multi-index on its own, which match wins, the fields of a Match, and the index rows a batch writes and reads."""

import os

import numpy as np
import polars as pl
import pytest

from cosmicman.core.imageio import DEFAULT_PHASH_SCHEME
from cosmicman.core.keys import POOL_INDEX_COMPACTED_KEY
from cosmicman.core.store import Store
from cosmicman.sourcing.dedup import (
    COMPACT_EVERY,
    SEGMENT_SCHEMA,
    Match,
    NearDupIndex,
    PoolIndex,
    load_index_table,
    resolve_shas,
    sha_prefix,
    write_segment,
)

EMPTY = np.array([], dtype=np.uint64)


def _store() -> Store:
    return Store(f"memory://dedup-rules-{os.urandom(4).hex()}")


def _bands(max_distance: int) -> list[list[int]]:
    """The bit positions of each band: the 64 bits split into ``max_distance + 1`` near-equal runs, low bits first
    (any split into that many bands obeys the pigeonhole rule; this is the documented one)."""
    n = max_distance + 1
    widths = [64 // n + (i < 64 % n) for i in range(n)]
    starts = np.cumsum([0, *widths[:-1]])
    return [list(range(int(s), int(s) + w)) for s, w in zip(starts, widths)]


def _brute_force(hashes: list[int], h: int, max_distance: int) -> int | None:
    near = [i for i, x in enumerate(hashes) if bin(x ^ h).count("1") <= max_distance]
    return near[0] if near else None


@pytest.mark.parametrize("max_distance", [0, 15])
def test_the_radius_may_be_0_or_15_and_a_hash_exactly_that_far_is_near(max_distance):
    stored = 0x00FF_00FF_00FF_00FF
    index = NearDupIndex(np.array([stored], dtype=np.uint64), max_distance)
    assert index.max_distance == max_distance
    at_radius = stored ^ ((1 << max_distance) - 1)  # max_distance low bits flipped
    one_over = stored ^ ((1 << (max_distance + 1)) - 1)
    assert (index.find(stored), index.find(at_radius), index.find(one_over)) == (0, 0, None)


@pytest.mark.parametrize("max_distance", [-1, 16])
def test_a_radius_outside_0_to_15_is_refused(max_distance):
    with pytest.raises(ValueError, match=rf"^max_distance must be in \[0, 15\], got {max_distance}$"):
        NearDupIndex(EMPTY, max_distance)


def test_at_radius_0_one_band_spans_all_64_bits_up_to_the_top_of_the_range():
    top = 2**64 - 2  # (2**64 - 1 is left out: its band range [v, v + 1) wraps to 0, reported as a bug)
    index = NearDupIndex(np.array([top, 0, 2**63], dtype=np.uint64), 0)
    assert [index.find(h) for h in (top, 0, 2**63, top - 1, 2**63 + 1)] == [0, 1, 2, None, None]


def test_hashes_given_as_signed_integers_are_read_as_64_bit_unsigned():
    index = NearDupIndex(np.array([5, 1 << 40], dtype=np.int64), 1)
    assert (index.find(4), index.find((1 << 40) | 1), index.find(6)) == (0, 1, None)


@pytest.mark.parametrize("max_distance", [1, 2, 4, 7, 15])
@pytest.mark.parametrize("edge", ["lowest", "highest"])
def test_each_band_alone_finds_a_hash_at_the_radius(max_distance, edge):
    """A query that differs from the stored hash in one bit of every band but one is found through that band only;
    one bit in every band is max_distance + 1 bits: not near."""
    rng = np.random.default_rng(max_distance)
    hashes = [int(v) for v in rng.integers(0, 2**64, size=40, dtype=np.uint64)]
    index = NearDupIndex(np.array(hashes, dtype=np.uint64), max_distance)
    target = hashes[17]
    flips = [band[0] if edge == "lowest" else band[-1] for band in _bands(max_distance)]
    for kept in range(max_distance + 1):
        query = target
        for bit in flips[:kept] + flips[kept + 1 :]:
            query ^= 1 << bit
        assert _brute_force(hashes, query, max_distance) == 17
        assert index.find(query) == 17, f"band {kept} missed a hash {max_distance} bits away"
    every_band = target
    for bit in flips:
        every_band ^= 1 << bit
    assert _brute_force(hashes, every_band, max_distance) is None
    assert index.find(every_band) is None


def test_the_first_added_hash_within_the_radius_wins_whichever_band_finds_it():
    # radius 1: band 0 is the low 32 bits, band 1 the high 32; the query 0 finds 1 << 0 through band 1 and
    # 1 << 40 through band 0, which is searched first
    far = 0xFFFF_FFFF_FFFF_FFFF
    assert NearDupIndex(np.array([1 << 0, 1 << 40, far], dtype=np.uint64), 1).find(0) == 0
    assert NearDupIndex(np.array([1 << 40, 1 << 0, far], dtype=np.uint64), 1).find(0) == 0
    same = 0x1234_5678_9ABC_DEF0
    twice = NearDupIndex(np.array([far, same, far, same, same], dtype=np.uint64), 3)
    assert twice.find(same) == 1


def test_recent_additions_are_found_after_the_sorted_base_and_in_insertion_order():
    far = 0xFFFF_FFFF_FFFF_FFFF
    h = 0x0F0F_0F0F_0F0F_0F0F
    index = NearDupIndex(np.array([far, far ^ 1, far ^ 2], dtype=np.uint64), 2)
    assert index.find(h) is None
    for added in (h ^ 0xFF00, h ^ 1, h, far):
        index.add(added)
    assert len(index) == 7
    assert index.find(h) == 4  # h ^ 1 (added second, position 3 + 1), not h itself (position 5)
    assert index.find(h ^ 0xFF00) == 3
    assert index.find(far) == 0  # the base comes before every addition
    base_and_pending = NearDupIndex(np.array([far, h], dtype=np.uint64), 2)
    base_and_pending.add(h)
    assert base_and_pending.find(h) == 1


def test_an_empty_index_finds_nothing_until_a_hash_is_added():
    index = NearDupIndex(EMPTY, 4)
    assert (len(index), index.find(0), index.find(2**64 - 1)) == (0, None, None)
    index.add(0xABCD)
    assert (len(index), index.find(0xABCD ^ 0b1111), index.find(0xABCD ^ 0b11111)) == (1, 0, None)


def test_the_base_is_rebuilt_exactly_when_rebuild_at_hashes_are_pending():
    hashes = [0x1111_0000_0000_0000 * (i + 1) for i in range(4)]
    index = NearDupIndex(EMPTY, 2, rebuild_at=3)
    index.add(hashes[0])
    index.add(hashes[1])
    assert (index._n_pending, len(index._hashes), len(index)) == (2, 0, 2)  # one under the limit: still pending
    index.add(hashes[2])
    assert (index._n_pending, len(index._hashes), len(index)) == (0, 3, 3)  # at the limit: in the sorted base
    index.add(hashes[3])
    assert (index._n_pending, len(index)) == (1, 4)
    assert [index.find(h) for h in hashes] == [0, 1, 2, 3]


def test_the_pending_list_grows_past_its_first_allocation():
    rng = np.random.default_rng(5)
    hashes = [int(v) for v in rng.integers(0, 2**64, size=2_100, dtype=np.uint64)]
    index = NearDupIndex(EMPTY, 0, rebuild_at=10**6)
    for h in hashes:
        index.add(h)
    assert len(index) == 2_100
    assert [index.find(hashes[i]) for i in (0, 1023, 1024, 2047, 2048, 2099)] == [0, 1023, 1024, 2047, 2048, 2099]


def _sha(first_hex: str) -> str:
    return first_hex + os.urandom(32).hex()[len(first_hex) :]


def _pool(store: Store, batch: str, shas: list[str], phashes: list[str]) -> None:
    write_segment(store, batch, pl.DataFrame({"sha256": shas, "phash": phashes}), DEFAULT_PHASH_SCHEME)


def test_matches_name_the_kind_the_pool_image_and_its_sha_when_known():
    store = _store()
    shas = [_sha("0"), _sha("8"), _sha("ffffffffffffff00")]  # the last one sorts last among the prefixes
    _pool(store, "batch-00000", shas, ["00000000000000ff", "ff00000000000000", "0f0f0f0f0f0f0f0f"])
    index = PoolIndex.load(store, max_distance=2)
    assert len(index) == 3
    assert index.match(shas[2], None) == Match("duplicate", sha_prefix(shas[2]), shas[2])
    same_prefix = shas[0][:16] + os.urandom(24).hex()  # a 64-bit prefix collision counts as the same image
    assert index.match(same_prefix, None) == Match("duplicate", sha_prefix(shas[0]), same_prefix)
    assert index.match("ffffffffffffffff" + "0" * 48, None) is None  # after every prefix in the pool
    assert index.match(_sha("1"), "ff00000000000003") == Match("near_duplicate", sha_prefix(shas[1]), None)
    assert index.match(_sha("1"), "ff00000000000007") is None  # three bits away: distinct
    # images of the running batch: the first one added sits right after the pool's images in the near index
    running = [_sha("2"), _sha("3")]
    index.add(running[0], "1234123412341234")
    index.add(running[1], None)  # no phash: matched exactly, never as a near-duplicate
    assert len(index) == 5
    near = index.match(_sha("4"), "1234123412341230")
    assert near == Match("near_duplicate", sha_prefix(running[0]), running[0])
    assert index.match(running[1], None) == Match("duplicate", sha_prefix(running[1]), running[1])
    assert index.match(_sha("5"), None) is None  # no phash: no near look-up


def test_the_near_duplicate_radius_is_optional_and_may_be_zero():
    store = _store()
    shas = [_sha("1"), _sha("2")]
    _pool(store, "batch-00000", shas, ["00000000000000ff", "ff00000000000000"])
    exact_only = PoolIndex.load(store, max_distance=None)
    assert exact_only.match(_sha("3"), "00000000000000ff") is None
    exact_only.add(_sha("4"), "00000000000000ff")
    assert (len(exact_only), exact_only.match(_sha("3"), "00000000000000ff")) == (3, None)
    identical_only = PoolIndex.load(store, max_distance=0)
    assert identical_only.match(_sha("3"), "ff00000000000000") == Match("near_duplicate", sha_prefix(shas[1]), None)
    assert identical_only.match(_sha("3"), "ff00000000000001") is None


def test_an_empty_pool_matches_only_the_running_batch():
    index = PoolIndex.load(_store(), max_distance=4)
    sha = _sha("7")
    assert (len(index), index.match(sha, "00000000000000ff")) == (0, None)
    index.add(sha, "00000000000000ff")
    assert index.match(_sha("6"), "00000000000000f0") == Match("near_duplicate", sha_prefix(sha), sha)
    assert index.match(sha, None) == Match("duplicate", sha_prefix(sha), sha)


def test_a_segment_holds_each_stored_image_prefix_phash_sha_and_batch():
    store = _store()
    shas = [_sha("ffffffffffffffff"), _sha("0000000000000001")]
    _pool(store, "batch-00007", shas, ["fedcba9876543210", "0000000000000001"])
    assert load_index_table(store).to_dicts() == [
        {"sha_prefix": 2**64 - 1, "phash": 0xFEDCBA9876543210, "sha256": shas[0], "batch": "batch-00007"},
        {"sha_prefix": 1, "phash": 1, "sha256": shas[1], "batch": "batch-00007"},
    ]


def test_the_index_table_reads_the_asked_columns_plus_batch_and_skips_one_batch():
    store = _store()
    empty = load_index_table(store, columns=["sha256"])
    assert (empty.height, empty.schema) == (0, pl.Schema({"sha256": pl.Utf8, "batch": pl.Utf8}))
    assert load_index_table(store).schema == pl.Schema(SEGMENT_SCHEMA)
    for i in range(3):
        _pool(store, f"batch-{i:05d}", [_sha(str(i)), _sha(str(i))], ["00000000000000ff", "ff00000000000000"])
    assert load_index_table(store, columns=["phash", "batch"]).columns == ["phash", "batch"]
    assert load_index_table(store, columns=["sha256"]).columns == ["sha256", "batch"]
    assert load_index_table(store).columns == list(SEGMENT_SCHEMA)
    skipped = load_index_table(store, exclude_batch="batch-00001")
    assert sorted(skipped["batch"]) == ["batch-00000", "batch-00000", "batch-00002", "batch-00002"]


def test_compaction_happens_again_each_time_enough_new_segments_gather():
    store = _store()
    batches = [f"batch-{i:05d}" for i in range(2 * COMPACT_EVERY)]
    for i, batch in enumerate(batches):
        _pool(store, batch, [_sha(f"{i:02x}")], [f"{i:016x}"])
        if i == COMPACT_EVERY - 2:
            assert not store.exists(POOL_INDEX_COMPACTED_KEY)  # one segment short
    compacted = store.read_table(POOL_INDEX_COMPACTED_KEY)
    assert sorted(compacted["batch"]) == batches  # the second round folded in every segment, one row each
    assert compacted.columns == list(SEGMENT_SCHEMA)
    assert sorted(load_index_table(store)["batch"]) == batches


def test_full_shas_are_resolved_only_for_prefixes_asked_and_without_reading_when_none_are(monkeypatch):
    store = _store()
    shas = [_sha("a"), _sha("b")]
    _pool(store, "batch-00000", shas, ["00000000000000ff", "ff00000000000000"])
    unknown = sha_prefix(_sha("c"))
    assert resolve_shas(store, {sha_prefix(shas[1]), unknown}) == {sha_prefix(shas[1]): shas[1]}

    def no_reads(key, columns=None):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(store, "read_table", no_reads)
    assert resolve_shas(store, set()) == {}


def test_each_read_of_the_index_asks_only_for_the_columns_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 6 million images the sha256 strings are most of the index: the near-duplicate index never reads them,
    and resolve_shas and the compaction check read no phash they do not use."""
    store = _store()
    for i in range(COMPACT_EVERY + 1):  # a compacted file plus one segment outside it
        _pool(store, f"batch-{i:05d}", [_sha(f"{i:02x}")], [f"{i:016x}"])
    read_table = store.read_table
    reads: list[tuple[str, tuple[str, ...] | None]] = []

    def spy(key: str, columns: list[str] | None = None) -> pl.DataFrame:
        reads.append((key.rsplit("/", 1)[-1], None if columns is None else tuple(columns)))
        return read_table(key, columns=columns)

    monkeypatch.setattr(store, "read_table", spy)
    assert len(PoolIndex.load(store, max_distance=4)) == COMPACT_EVERY + 1
    assert set(reads) == {
        (name, ("sha_prefix", "phash", "batch")) for name in ("compacted.parquet", f"batch-{COMPACT_EVERY:05d}.parquet")
    }
    prefix = sha_prefix(load_index_table(store)["sha256"][3])
    reads.clear()
    assert len(resolve_shas(store, {prefix})) == 1
    assert {columns for _, columns in reads} == {("sha_prefix", "sha256", "batch")}
    compacted = load_index_table(store, columns=["sha256"])
    assert (compacted.columns, compacted.height) == (["sha256", "batch"], COMPACT_EVERY + 1)
    reads.clear()
    _pool(store, "batch-00099", [_sha("99")], ["0000000000000099"])
    assert ("compacted.parquet", ("batch",)) in reads
    assert ("compacted.parquet", None) not in reads


def test_an_all_ones_hash_is_found_at_radius_zero():
    # a band of all ones: the search for [v, v + 1) would wrap to an empty range
    assert NearDupIndex([2**64 - 1], 0).find(2**64 - 1) == 0
