"""What ``daring_unet`` trains on when dataset versions share shards: versions built by the real builder
(``cosmicman.datasets.build``), version N+1 removing one sample of N and adding two. The launch names N's
shards and the removed sample; the trainer's readers skip it and reuse N's latents for every shared shard."""

from __future__ import annotations

import dataclasses
import hashlib
from types import SimpleNamespace
from typing import Any

import dagster as dg
import polars as pl
import pytest

import cosmicman.assets.training as training_assets
from cosmicman.assets.training import daring_unet, model_name
from cosmicman.core.keys import LATEST_DATASET_KEY
from cosmicman.core.protocol import load_protocol
from cosmicman.core.store import Store
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.build import ShardPolicy, build_version
from cosmicman.datasets.layout import excluded_samples, read_manifest, shard_urls
from cosmicman.model.latent_cache import CachedShardDataset, LatentCache, build_cache, reused_share
from cosmicman.model.shards import ShardDataset
from cosmicman.model.train.config import TrainConfig
from cosmicman.model.train.recipes import recipe
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.resources.training import TrainingResource
from tests.assets.test_ablation_assets import RecordingTrainer
from tests.model.test_shared_shards import CountingEncoder
from tests.support.version_shards import make_dataset_sample

REMOVED = 3  # the sample of version N that N+1 no longer holds
PER_SHARD = 4


class ListPool:
    """The builder's source: one batch of ``make_dataset_sample``s, picked by index."""

    def __init__(self, made: dict[int, Any], ids: list[int]) -> None:
        self.made, self.ids = made, ids

    def batches(self) -> list[str]:
        return ["b0"]

    def rows(self, batch: str) -> pl.DataFrame:
        shas = [self.made[i].sha256 for i in self.ids]
        keys = [hashlib.sha256(s.encode()).hexdigest()[:32] for s in shas]
        return pl.DataFrame({"sha256": shas, "i": self.ids, "content_key": keys}).sort("sha256")

    def samples(self, rows: pl.DataFrame):
        for i in rows["i"]:
            yield self.made[i]


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    protocol, tok = load_protocol(), load_clip_tokenizer()
    made = {i: make_dataset_sample(protocol, tok, i) for i in range(14)}
    store = Store(str(tmp_path_factory.mktemp("versions") / "store"))
    policy = ShardPolicy(samples_per_shard=PER_SHARD, min_live_fraction=0.5)
    build_version(store.url, "v0001", ListPool(made, list(range(12))), policy=policy, protocol=protocol, tokenizer=tok)
    n1 = [i for i in range(14) if i != REMOVED]
    build_version(store.url, "v0002", ListPool(made, n1), base="v0001", policy=policy, protocol=protocol, tokenizer=tok)
    store.write_json(LATEST_DATASET_KEY, {"version": "v0002"})
    return SimpleNamespace(
        store=store,
        tok=tok,
        removed=made[REMOVED].sha256,
        n=shard_urls(store.url, "v0001"),
        n1=shard_urls(store.url, "v0002"),
        n1_samples=sorted(read_manifest(store.url, "v0002", columns=["sha256"])["sha256"].to_list()),
    )


def test_the_builder_shares_n_shards_with_n_plus_1(versions):
    assert versions.n1[: len(versions.n)] == versions.n and len(versions.n1) == len(versions.n) + 1
    assert excluded_samples(versions.store.url, "v0002") == [versions.removed]


def test_daring_unet_launches_n_plus_1_on_the_shards_of_n_without_the_removed_sample(monkeypatch, versions):
    launched: list[dict[str, Any]] = []

    class Launcher(RecordingTrainer):
        def launch(self, context, config, store):
            launched.append(config)
            return super().launch(context, config, store)

    monkeypatch.setattr(training_assets, "_lineage", lambda store, key: dg.MetadataValue.json({"model": key}))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [daring_unet],
            resources={
                "object_store": ObjectStoreResource(url=versions.store.url),
                "training": TrainingResource(),
                "training_launcher": Launcher(),
            },
            instance=instance,
            partition_key="hola",
        )
    assert result.success
    (config,) = launched
    assert config["shards"] == versions.n1  # N's shard files themselves, and N+1's new one
    assert config["excluded_samples"] == [versions.removed]
    # the name is the version's and the config's: the exclusions follow from the version, as the shards do
    same_without = TrainConfig.from_dict({**config, "excluded_samples": []})
    assert config["output_url"].endswith("/" + model_name("v0002", same_without))


def test_model_names_do_not_move_with_the_data_fields():
    # the name main computed before excluded_samples existed: published models keep their folders
    tiny = recipe("tiny")
    assert model_name("v0001", tiny) == "v0001-a3cb7a2e26"
    data = dataclasses.replace(tiny, shards=["/s.tar"], excluded_samples=["ab" * 32], cache_url="/c", output_url="/o")
    assert model_name("v0001", data) == "v0001-a3cb7a2e26"
    assert model_name("v0001", dataclasses.replace(tiny, seed=1)) != "v0001-a3cb7a2e26"


def test_n_plus_1_reuses_the_latents_of_n_and_never_reads_the_removed_sample(tmp_path, versions):
    tok, gone = versions.tok, [versions.removed]
    encode = CountingEncoder()
    first = build_cache(
        LatentCache(str(tmp_path), "fp"), ShardDataset(versions.n, tok, 32, (4, 4)), encode, 2, say=lambda m: None
    )
    assert (first["encoded_units"], first["samples"]) == (3, 12)
    encode.keys.clear()
    cache = LatentCache(str(tmp_path), "fp")
    reader = ShardDataset(versions.n1, tok, 32, (4, 4), excluded_samples=gone)
    stats = build_cache(cache, reader, encode, 2, say=lambda m: None)
    assert (stats["encoded_units"], stats["reused_units"], stats["samples"], stats["reused_samples"]) == (1, 3, 2, 12)
    assert reused_share(stats) == 12 / 14
    assert sorted(encode.keys) == sorted(
        set(versions.n1_samples) - {s["key"] for s in ShardDataset(versions.n, tok, 32, (4, 4))}
    )
    # both readers stream exactly the version's samples
    assert sorted(s["key"] for s in reader) == versions.n1_samples
    assert (
        sorted(s["key"] for s in CachedShardDataset(versions.n1, cache, excluded_samples=gone)) == versions.n1_samples
    )
