import os

import numpy as np
import polars as pl
import pytest

from cosmicman.core.keys import POOL_INDEX_COMPACTED_KEY, POOL_PHASH_SCHEME_KEY
from cosmicman.core.store import Store
from cosmicman.sourcing.dedup import (
    COMPACT_EVERY,
    NearDupIndex,
    PoolIndex,
    UnknownPhashScheme,
    load_index_table,
    pool_phash_scheme,
    resolve_shas,
    write_segment,
)


def test_near_dup_index_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=20_000, dtype=np.uint64) * 2
    index = NearDupIndex(base, max_distance=4, rebuild_at=500)
    for h in rng.integers(0, 2**63, size=700, dtype=np.uint64):  # some go to the pending list, some rebuild
        index.add(int(h))
    everything = np.concatenate([base, index._hashes[len(base) :], index._pending[: index._n_pending]])
    assert len(index) == len(everything) == 20_700
    for k in range(7):
        for _ in range(40):
            h = int(everything[rng.integers(len(everything))])
            for bit in rng.choice(64, k, replace=False):
                h ^= 1 << int(bit)
            near = np.flatnonzero(np.bitwise_count(everything ^ np.uint64(h)) <= 4)
            assert index.find(h) == (int(near.min()) if len(near) else None)


def _stored(n, seed):
    rng = np.random.default_rng(seed)
    sha = [os.urandom(32).hex() for _ in range(n)]
    phash = [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=n, dtype=np.uint64)]
    return pl.DataFrame({"sha256": sha, "phash": phash})


def test_pool_index_finds_exact_and_near_duplicates_of_earlier_batches():
    store = Store(f"memory://dedup-{os.urandom(4).hex()}")
    first = _stored(50, 1)
    write_segment(store, "batch-00000", first, "luma")
    index = PoolIndex.load(store, max_distance=4)
    sha, phash = first.row(7)
    assert index.match(sha, phash).kind == "duplicate"
    flipped = f"{int(phash, 16) ^ 0b1011:016x}"  # three bits away: a re-encoded copy
    near = index.match(os.urandom(32).hex(), flipped)
    assert near.kind == "near_duplicate" and near.sha256 is None
    assert resolve_shas(store, {near.sha_prefix}) == {near.sha_prefix: sha}
    assert index.match(os.urandom(32).hex(), f"{int(phash, 16) ^ 0b11111:016x}") is None  # five bits: distinct
    new_sha = os.urandom(32).hex()
    index.add(new_sha, "00000000000000ff")
    assert index.match(os.urandom(32).hex(), "00000000000000fe").sha256 == new_sha
    assert PoolIndex.load(store, 4, exclude_batch="batch-00000").match(sha, phash) is None


def test_segments_are_compacted_and_never_lost():
    store = Store(f"memory://dedup-{os.urandom(4).hex()}")
    tables = [_stored(5, i) for i in range(COMPACT_EVERY + 3)]
    for i, t in enumerate(tables):
        write_segment(store, f"batch-{i:05d}", t, "luma")
    compacted = store.read_table(POOL_INDEX_COMPACTED_KEY)
    assert compacted["batch"].n_unique() == COMPACT_EVERY  # compacted when the 32nd segment arrived
    everything = load_index_table(store)
    assert sorted(everything["sha256"]) == sorted(pl.concat(tables)["sha256"])


def test_a_pool_keeps_the_phash_scheme_of_its_first_batch():
    new = Store(f"memory://dedup-{os.urandom(4).hex()}")
    assert pool_phash_scheme(new) == "luma-dct"  # a pool with no image takes the default
    write_segment(new, "batch-00000", _stored(3, 1), "luma")
    write_segment(new, "batch-00001", _stored(3, 2), "full")  # a later batch cannot change it
    assert pool_phash_scheme(new) == "luma"
    # a pool indexed before the record existed was hashed with imagehash's full phash, and keeps it
    legacy = Store(f"memory://dedup-{os.urandom(4).hex()}")
    write_segment(legacy, "batch-00000", _stored(3, 1), "full")
    legacy.delete(POOL_PHASH_SCHEME_KEY)
    assert pool_phash_scheme(legacy) == "full"
    # a stale record (the unreleased "reduced" scheme) stops the pool in one line that lists the schemes
    legacy.write_json(POOL_PHASH_SCHEME_KEY, {"scheme": "reduced"})
    with pytest.raises(UnknownPhashScheme) as stale:
        pool_phash_scheme(legacy)
    assert str(stale.value) == (
        f"{legacy.uri(POOL_PHASH_SCHEME_KEY)} names phash scheme 'reduced', which this version does not make;"
        " the schemes are full, luma, luma-dct"
    )
