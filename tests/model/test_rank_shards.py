"""Ranks read whole shards of their own: two ranks each read about half of the shard bytes, together the
dataset once, in shuffled epochs too, from the latent cache too; positions are unique across ranks and
resume through the real DataStream stays exact on each rank."""

import contextlib
import itertools
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import torch
import webdataset as wds

from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.model.latent_cache import CachedShardDataset, LatentCache, build_cache
from cosmicman.model.shards import ShardDataset
from tests.model.test_buckets import write_mixed_shards
from tests.model.test_train import write_shards
from tests.support.rank_stream import two_rank_stream

N_SHARDS, PER_SHARD = 9, 3  # an odd count: one rank gets the extra shard, the other the next epoch


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("rank_shards"), n_shards=N_SHARDS, per_shard=PER_SHARD)


class _CountingFile:
    """A file object that adds the bytes its reader takes to ``counts[url]``."""

    def __init__(self, f, url: str, counts: Counter) -> None:
        self._f, self._url, self._counts = f, url, counts

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._counts[self._url] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)


def bytes_read(monkeypatch, consume) -> Counter:
    """Shard bytes read (per URL) while ``consume()`` runs, counted at the open the tar reader does."""
    counts: Counter = Counter()
    real_open = fsspec.open

    @contextlib.contextmanager
    def counting_open(url, mode="rb", **kw):
        with real_open(url, mode, **kw) as f:
            yield _CountingFile(f, url, counts)

    monkeypatch.setattr(fsspec, "open", counting_open)
    try:
        consume()
    finally:
        monkeypatch.setattr(fsspec, "open", real_open)
    return counts


def test_two_ranks_read_half_each_and_the_dataset_once(monkeypatch, tok, urls):
    def reader(**kw):
        return ShardDataset(urls, tok, 32, mask_size=(4, 4), seed=5, shuffle_buffer=4, **kw)

    once = bytes_read(monkeypatch, lambda: list(reader()))
    assert sorted(once) == sorted(urls)
    total, shard_max = sum(once.values()), max(once.values())
    per_rank = [bytes_read(monkeypatch, lambda r=r: list(reader(rank=r, world_size=2))) for r in (0, 1)]
    # disjoint shard sets whose union is every shard, each read whole: the dataset once
    assert not set(per_rank[0]) & set(per_rank[1])
    assert per_rank[0] + per_rank[1] == once
    for counts in per_rank:
        assert abs(sum(counts.values()) - total / 2) <= shard_max
    assert sorted(len(c) for c in per_rank) == [N_SHARDS // 2, N_SHARDS // 2 + 1]


def test_repeating_ranks_split_every_epoch_and_rotate_the_extra_shard(monkeypatch, tok, urls):
    once = bytes_read(monkeypatch, lambda: list(ShardDataset(urls, tok, 32, (4, 4))))
    epochs = 2
    per_rank = []
    for r in (0, 1):
        ds = ShardDataset(urls, tok, 32, (4, 4), repeat=True, rank=r, world_size=2)
        # file order: two epochs give each rank N_SHARDS units, the last sample ends the last unit's tar
        take = epochs * N_SHARDS * PER_SHARD // 2
        per_rank.append(bytes_read(monkeypatch, lambda ds=ds, take=take: list(itertools.islice(ds, take))))
    # the odd shard count: rank 0 reads 5 then 4, rank 1 4 then 5 -- each the whole dataset over two epochs
    assert per_rank[0] == once and per_rank[1] == once
    shuffled = ShardDataset(urls, tok, 32, (4, 4), seed=7, shuffle_buffer=4, repeat=True, world_size=2)
    other = ShardDataset(urls, tok, 32, (4, 4), seed=7, shuffle_buffer=4, repeat=True, rank=1, world_size=2)
    counts = Counter()
    for e in range(4):
        mine, theirs = shuffled.rank_units(e), other.rank_units(e)
        assert sorted(mine + theirs) == sorted(urls) and not set(mine) & set(theirs)
        counts[len(mine)] += 1
    assert counts == {N_SHARDS // 2: 2, N_SHARDS // 2 + 1: 2}  # the extra shard alternates
    assert shuffled.rank_units(0) != ShardDataset(urls, tok, 32, (4, 4), world_size=2).rank_units(0)


def test_positions_are_unique_across_ranks_and_one_rank_counts_on(tok, urls):
    whole = [(s["pos"], s["key"]) for s in ShardDataset(urls, tok, 32, (4, 4), seed=3, shuffle_buffer=4)]
    assert [p for p, _ in whole] == list(range(N_SHARDS * PER_SHARD))
    ranks = [
        [
            (s["pos"], s["key"])
            for s in ShardDataset(urls, tok, 32, (4, 4), seed=3, shuffle_buffer=4, rank=r, world_size=2)
        ]
        for r in (0, 1)
    ]
    for r, got in enumerate(ranks):
        assert [p for p, _ in got] == list(range(r, 2 * len(got), 2))  # k * world_size + rank
    assert sorted(k for _, k in ranks[0] + ranks[1]) == sorted(k for _, k in whole)

    # one shard, two ranks: both read the same unit (rank 0 in even epochs, rank 1 in odd ones), so the
    # orders differ by the shuffle buffer's generator alone; rank 0's is a single reader's
    def keys(**kw):
        ds = ShardDataset(urls[:1], tok, 32, (4, 4), seed=3, shuffle_buffer=3, repeat=True, **kw)
        return [s["key"] for s in itertools.islice(ds, 4 * PER_SHARD)]

    assert keys(world_size=2) == keys()
    assert keys(rank=1, world_size=2) != keys()


def test_each_rank_resumes_exactly_through_the_data_stream(tmp_path, tok):
    shards = write_mixed_shards(tmp_path / "mixed", 5)
    run = two_rank_stream(tok, shards, str(tmp_path / "out"))

    seen: list[set[int]] = []
    for rank in (0, 1):
        full, _ = run(rank, 24)  # past the rank's first round of shards (5 units: 55 samples)
        part, point = run(rank, 8)
        assert point["exclude"] and min(point["exclude"]) > point["start"]  # other buckets were waiting
        rest, _ = run(rank, 16, resume=point)
        for (k1, p1, x1), (k2, p2, x2) in zip(full, part + rest, strict=True):
            assert k1 == k2 and p1 == p2 and torch.equal(x1, x2)  # same samples, same flips
        positions = {p for _, ps, _ in full for p in ps}
        assert all(p % 2 == rank for p in positions)
        seen.append(positions)
    assert not seen[0] & seen[1]


def _encode(pixels: torch.Tensor, ids: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
    latent = pixels[:, :, ::8, ::8]
    return {"latent_mean": latent, "latent_std": latent.abs(), "hidden": ids[:, :, None].float()}


class _CountingCache:
    """A LatentCache whose unit reads are counted per shard URL."""

    def __init__(self, cache: LatentCache, counts: Counter) -> None:
        self._cache, self._counts = cache, counts

    def read(self, shard_url: str) -> list[dict]:
        self._counts[shard_url] += 1
        return self._cache.read(shard_url)


def test_latent_cache_is_built_and_read_by_whole_units_per_rank(monkeypatch, tmp_path, tok, urls):
    cache = LatentCache(str(tmp_path / "cache"), "fp")
    decoding = ShardDataset(urls, tok, 32, (4, 4))
    once = bytes_read(monkeypatch, lambda: list(ShardDataset(urls, tok, 32, (4, 4))))
    quiet = lambda _: None  # noqa: E731
    built = [bytes_read(monkeypatch, lambda r=r: build_cache(cache, decoding, _encode, 2, r, 2, quiet)) for r in (0, 1)]
    assert not set(built[0]) & set(built[1]) and built[0] + built[1] == once  # each tar encoded once

    reads: list[Counter] = [Counter(), Counter()]
    for r in (0, 1):
        ds = CachedShardDataset(urls, cache, seed=2, shuffle_buffer=4, repeat=True, rank=r, world_size=2)
        monkeypatch.setattr(ds, "cache", _CountingCache(cache, reads[r]))
        cached = list(itertools.islice(ds, 10))
        plain = ShardDataset(urls, tok, 32, (4, 4), seed=2, shuffle_buffer=4, repeat=True, rank=r, world_size=2)
        assert [(s["key"], s["pos"]) for s in cached] == [(s["key"], s["pos"]) for s in itertools.islice(plain, 10)]
    # epoch 0 so far: each rank opened only its own units' cache files
    assert not set(reads[0]) & set(reads[1])


def _bad_shard(path: Path, n: int) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            sink.write({"__key__": f"bad{i:03d}", "json": b"{}"})  # no image, no mask: undecodable
    return str(path)


def test_a_rank_without_decodable_samples_says_so(tmp_path, tok, urls):
    bad = _bad_shard(tmp_path / "bad.tar", 3)
    # file order, two shards, two ranks: rank 1 only ever reads the bad shard, rank 0 the good one
    good = ShardDataset([urls[0], bad], tok, 32, (4, 4), repeat=True, world_size=2)
    assert len(list(itertools.islice(good, 10))) == 10
    with pytest.raises(RuntimeError, match="no decodable samples for rank 1/2"):
        next(iter(ShardDataset([urls[0], bad], tok, 32, (4, 4), repeat=True, rank=1, world_size=2)))
    empty = tmp_path / "empty.tar"
    wds.TarWriter(str(empty)).close()
    with pytest.raises(RuntimeError, match="no samples for rank 1/2"):
        next(iter(ShardDataset([urls[0], str(empty)], tok, 32, (4, 4), repeat=True, rank=1, world_size=2)))


def test_a_run_of_bad_shards_after_the_first_sample_does_not_stop_a_rank(tmp_path, tok, urls):
    bads = [_bad_shard(tmp_path / f"bad-{i}.tar", PER_SHARD) for i in range(3)]
    shards = [urls[0], *bads]
    ds = ShardDataset(shards, tok, 32, (4, 4), seed=27, shuffle_buffer=2, repeat=True, rank=1, world_size=2)
    units = [u for e in range(40) for u in ds.rank_units(e)]
    good = [i for i, u in enumerate(units) if u == urls[0]]
    gap, after = max((b - a - 1, k + 1) for k, (a, b) in enumerate(itertools.pairwise(good)))
    # between two good shards, more bad samples in a row than the guard's window (two rounds + buffer),
    # with a buffer's worth to spare
    assert gap * PER_SHARD > 2 * len(shards) * PER_SHARD + 2 * ds.shuffle_buffer
    # more samples than the good shards before the gap hold: the rank reads through it
    got = list(itertools.islice(ds, (after + 1) * PER_SHARD - ds.shuffle_buffer))
    assert {s["key"] for s in got} <= {s["key"] for s in ShardDataset(urls[:1], tok, 32, (4, 4))}
