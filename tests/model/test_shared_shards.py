"""Training on dataset versions that share content-addressed shards: version N+1 reads the very shards
written for version N, reuses their latent-cache units (keyed by content, not URL) and encodes only its new
shards; samples a shard holds outside the version never reach a batch, and resume stays exact without them.

Shards are written as today's tests write them and stored at the layout's shared place,
``<root>/datasets/cosmicman-hq/shards/<sha256 of the tar bytes>.tar``."""

import hashlib
import itertools
import shutil
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pytest
import torch
import webdataset as wds

from cosmicman.core.keys import dataset_shard_key
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.model.latent_cache import CachedShardDataset, LatentCache, build_cache, reused_share, unit_key
from cosmicman.model.shards import ShardDataset
from cosmicman.model.train.config import TrainConfig
from tests.model.test_buckets import make_rect_sample
from tests.model.test_train import make_sample
from tests.support.rank_stream import two_rank_stream

PER_SHARD = 4


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def store_shard(root: Path, samples: list[dict]) -> str:
    """One tar of ``samples``, stored under the sha256 of its bytes in the shared shard folder."""
    tmp = root / "incoming.tar"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(tmp)) as sink:
        for s in samples:
            sink.write(s)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    final = root / dataset_shard_key(sha)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    return str(final)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Version N: four shards; version N+1: the same four shards and one new one (its added samples)."""
    root = tmp_path_factory.mktemp("store")
    old = [store_shard(root, [make_sample(100 * s + i) for i in range(PER_SHARD)]) for s in range(4)]
    new = store_shard(root, [make_sample(900 + i) for i in range(PER_SHARD)])
    return SimpleNamespace(root=root, n=old, n1=[*old, new], new=new)


def keys_of(urls: list[str], tok) -> list[str]:
    return [s["key"] for s in ShardDataset(urls, tok, 32, (4, 4))]


class CountingEncoder:
    """A cheap stand-in for the VAE / text encoders that remembers every sample key it encoded."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pixels: torch.Tensor, ids: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        self.keys.extend(batch["keys"])
        latent = pixels[:, :, ::8, ::8]
        return {"latent_mean": latent, "latent_std": latent.abs(), "hidden": ids[:, :, None].float()}


def _quiet(msg: str) -> None:
    pass


def test_a_unit_is_keyed_by_its_shards_content_name_else_by_its_url():
    sha = "ab" * 32
    assert unit_key(f"/store/datasets/cosmicman-hq/shards/{sha}.tar") == sha
    assert unit_key(f"s3://other-bucket/mirror/{sha}.tar") == sha  # same bytes, wherever they are
    # a name that is not a lowercase sha256 is no content address: name + URL digest
    for stem in ("ab" * 31 + "a", "AB" * 32, "ab" * 32 + "0", "shard-000000"):
        a, b = unit_key(f"/v0001/{stem}.tar"), unit_key(f"/v0002/{stem}.tar")
        assert a != b and a.startswith(f"{stem}-") and len(a) == len(stem) + 13


def test_version_n_plus_1_encodes_only_its_new_shard(tmp_path, tok, versions):
    encode = CountingEncoder()
    first = build_cache(
        LatentCache(str(tmp_path / "cache"), "fp"), ShardDataset(versions.n, tok, 32, (4, 4)), encode, 2, say=_quiet
    )
    assert (first["encoded_units"], first["samples"], first["reused_samples"]) == (4, 16, 0)
    assert sorted(encode.keys) == sorted(keys_of(versions.n, tok))

    encode.keys.clear()
    # a later run: a fresh cache object (one listing), version N+1's shard list
    cache = LatentCache(str(tmp_path / "cache"), "fp")
    stats = build_cache(cache, ShardDataset(versions.n1, tok, 32, (4, 4)), encode, 2, say=_quiet)
    assert stats == {
        "units": 5,
        "encoded_units": 1,
        "reused_units": 4,
        "samples": PER_SHARD,
        "reused_samples": 4 * PER_SHARD,
        "errors": 0,
    }
    assert sorted(encode.keys) == sorted(keys_of([versions.new], tok))  # nothing of version N again
    assert reused_share(stats) == 0.8
    # the N+1 cached stream reads N's units: every shard's samples, same as decoding them
    cached = CachedShardDataset(versions.n1, cache)
    assert [s["key"] for s in cached] == keys_of(versions.n1, tok)


def test_a_copy_of_a_shard_elsewhere_reuses_its_unit(tmp_path, tok, versions):
    cache_url = str(tmp_path / "cache")
    build_cache(
        LatentCache(cache_url, "fp"), ShardDataset(versions.n[:1], tok, 32, (4, 4)), CountingEncoder(), 2, say=_quiet
    )
    mirror = tmp_path / "mirror" / Path(versions.n[0]).name
    mirror.parent.mkdir()
    shutil.copy(versions.n[0], mirror)
    encode = CountingEncoder()
    stats = build_cache(
        LatentCache(cache_url, "fp"), ShardDataset([str(mirror)], tok, 32, (4, 4)), encode, 2, say=_quiet
    )
    assert (stats["reused_units"], stats["encoded_units"], encode.keys) == (1, 0, [])
    # a shard named by hand is keyed by its URL: the same bytes under another such name are encoded again
    named = tmp_path / "mirror" / "shard-000000.tar"
    shutil.copy(versions.n[0], named)
    again = build_cache(
        LatentCache(cache_url, "fp"), ShardDataset([str(named)], tok, 32, (4, 4)), encode, 2, say=_quiet
    )
    assert (again["reused_units"], again["encoded_units"]) == (0, 1)


def test_reused_share_is_reused_over_needed_samples():
    assert reused_share({"reused_samples": 95, "samples": 5}) == 0.95
    assert reused_share({"reused_samples": 0, "samples": 3}) == 0.0
    with pytest.raises(ValueError, match="needed no latents"):
        reused_share({"reused_samples": 0, "samples": 0})


def test_excluded_samples_never_reach_a_batch_and_take_no_position(tmp_path, tok, versions):
    every = keys_of(versions.n1, tok)
    gone = [every[1], every[6], every[-1]]  # in an old shard, another old one, and the new shard
    cache = LatentCache(str(tmp_path / "cache"), "fp")
    build_cache(cache, ShardDataset(versions.n1, tok, 32, (4, 4)), CountingEncoder(), 2, say=_quiet)
    order = dict(seed=3, shuffle_buffer=3, repeat=True, world_size=2, excluded_samples=gone)
    live = len(every) - len(gone)
    for rank in (0, 1):
        plain = ShardDataset(versions.n1, tok, 32, (4, 4), rank=rank, **order)
        cached = CachedShardDataset(versions.n1, cache, rank=rank, **order)
        got = list(itertools.islice(plain, live))  # at least a whole epoch's share of this rank
        assert not {s["key"] for s in got} & set(gone)
        assert [s["pos"] for s in got] == list(range(rank, 2 * live, 2))  # no gap where a sample was dropped
        assert [(s["key"], s["pos"]) for s in itertools.islice(cached, live)] == [(s["key"], s["pos"]) for s in got]
        assert plain.stats["excluded"] >= 1 and plain.stats["excluded"] == cached.stats["excluded"]
    whole = ShardDataset(versions.n1, tok, 32, (4, 4), excluded_samples=gone)
    assert [s["key"] for s in whole] == [k for k in every if k not in gone]
    assert whole.stats["excluded"] == len(gone)
    # a shard every sample of which left the version gives its rank nothing to read
    lone = ShardDataset(versions.n1[:1], tok, 32, (4, 4), repeat=True, excluded_samples=every[:PER_SHARD])
    with pytest.raises(RuntimeError, match="no samples for rank 0/1"):
        next(iter(lone))


def test_each_rank_resumes_exactly_with_excluded_samples(tmp_path, tok):
    root = tmp_path / "store"
    shards = [
        store_shard(root, [make_rect_sample(100 * s + i, 64, 48 if i % 3 == 0 else 64) for i in range(6)])
        for s in range(5)
    ]
    every = [s["key"] for s in ShardDataset(shards, tok, 32, (4, 4))]
    gone = every[2::5]
    run = two_rank_stream(tok, shards, str(tmp_path / "out"), excluded_samples=gone)

    for rank in (0, 1):
        full, _ = run(rank, 16)  # past the rank's first round of shards
        part, point = run(rank, 6)
        assert point["exclude"] and min(point["exclude"]) > point["start"]  # the other bucket was waiting
        rest, _ = run(rank, 10, resume=point)
        for (k1, p1, x1), (k2, p2, x2) in zip(full, part + rest, strict=True):
            assert k1 == k2 and p1 == p2 and torch.equal(x1, x2)
        assert not {k for keys, _, _ in full for k in keys} & set(gone)


def test_a_training_run_on_version_n_plus_1_reads_the_shards_of_version_n(tmp_path, tok, versions):
    from cosmicman.model.train.loop import train

    cache = f"memory://cosmicman-shared-shards-{tmp_path.name}/cache"
    base = {
        "output_url": "",
        "resolution": 64,
        "batch_size": 2,
        "hola_map_factor": 8,
        "seed": 0,
        "shuffle_buffer": 4,
        "log_every": 1,
        "ema_decay": 0.0,
        "alignment_batches": 0,
        "cache_url": cache,
    }
    first = train(
        TrainConfig.from_dict({**base, "shards": versions.n, "output_url": str(tmp_path / "n"), "steps": 1}),
        log_fn=_quiet,
    )
    assert first["metrics"]["latent_cache"]["encoded_units"] == 4
    gone = keys_of(versions.n[:1], tok)[:1]  # removed in N+1, still in N's first shard
    cfg = {**base, "shards": versions.n1, "excluded_samples": gone, "output_url": str(tmp_path / "n1"), "steps": 10}
    said: list[str] = []
    second = train(TrainConfig.from_dict(cfg), log_fn=said.append)
    assert "latent cache: 4 unit(s) reused (16 samples), 1 encoded (4 samples)" in said
    assert second["data"]["shards"][:4] == versions.n  # the very files version N's run read
    assert second["metrics"]["latent_cache"] == {
        "units": 5,
        "encoded_units": 1,  # the new shard: no new encode for N's shards
        "reused_units": 4,
        "samples": PER_SHARD,
        "reused_samples": 4 * PER_SHARD,
        "errors": 0,
    }
    # ten batches of two read a whole epoch (19 live samples) and more: the removed one was dropped
    assert second["metrics"]["dataset_stats"]["excluded"] >= 1
    assert second["config"]["excluded_samples"] == gone
    fsspec.filesystem("memory").rm(f"/cosmicman-shared-shards-{tmp_path.name}", recursive=True)
