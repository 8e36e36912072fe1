"""Lineage from the manifest's provenance and a model's training record (no flywheel run needed)."""

import json

import pytest

from cosmicman.datasets.layout import shard_urls
from cosmicman.datasets.lineage import dataset_of_shards, lineage
from cosmicman.datasets.version import write_dataset_version
from tests.datasets.test_dataset_version import make_samples


def test_dataset_and_model_lineage(tmp_path):
    root = str(tmp_path / "store")
    samples = make_samples(6)
    for i, s in enumerate(samples):
        s.provenance.update(
            filter_config=json.dumps({"backend": "local", "min_face_px": 52 + i % 2}),
            annotator_version="probe-r1",
            label_rounds=list(range(1, 1 + i % 3)),
        )
    write_dataset_version(root, "v0001", samples[:4], samples_per_shard=2)
    lin = lineage(root, "v0001")
    # samples 0..3: batches i % 3, label rounds 1..i % 3, two filter configs
    assert lin["sourcing_batches"] == ["batch-0", "batch-1", "batch-2"] and lin["label_rounds"] == [1, 2]
    assert lin["filter_configs"] == [{"backend": "local", "min_face_px": 52}, {"backend": "local", "min_face_px": 53}]
    assert lin["samples"] == 4 and lin["annotator_versions"] == ["probe-r1"] and lin["parser_versions"] == ["atr-1"]
    write_dataset_version(root, "v0002", [samples[0], samples[3]], samples_per_shard=2)
    v2 = lineage(root, "v0002")  # only what the samples used
    assert v2["sourcing_batches"] == ["batch-0"] and v2["label_rounds"] == []

    model = tmp_path / "store" / "models" / "m1"
    model.mkdir(parents=True)
    (model / "training_run.json").write_text(
        json.dumps(
            {
                "config": {"beta": 1.0, "act_fn": "gelu"},
                "data": {"shards": shard_urls(root, "v0002")},
                "code_version": "abc123",
                "finished_at": "2026-11-27T00:00:00Z",
            }
        )
    )
    m = lineage(root, "models/m1")
    assert m["dataset_version"] == "v0002" and m["code_versions"] == {"trainer": "abc123"}
    assert m["training"]["act_fn"] == "gelu" and m["sourcing_batches"] == ["batch-0"]
    with pytest.raises(FileNotFoundError):
        lineage(root, "models/none")
    # shards are shared: a mix of two versions' shards is no version's, unless the record names one
    mixed = shard_urls(root, "v0001") + shard_urls(root, "v0002")
    with pytest.raises(ValueError, match="exactly those of 0 published versions"):
        dataset_of_shards(mixed)
    assert dataset_of_shards(mixed, version="v0001") == (root, "v0001")


def test_cosmicman_lineage_of_a_model_trained_on_a_shared_version_names_that_version(tmp_path, capsys):
    import dataclasses
    from types import SimpleNamespace

    from cosmicman.cli.__main__ import main
    from cosmicman.datasets.build import ShardPolicy, build_version
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.record import run_record
    from tests.datasets.test_shared_versions import ListPool

    root = str(tmp_path / "store")
    pool = sorted(make_samples(8, seed=2), key=lambda s: s.sha256)
    pool = [
        dataclasses.replace(s, provenance={**s.provenance, "source_batch": "b1" if i == 0 else "b0",
                                           "label_rounds": [2] if i == 0 else [1]})
        for i, s in enumerate(pool)
    ]  # fmt: skip
    policy = ShardPolicy(samples_per_shard=4)
    build_version(root, "v0001", ListPool({"b0": pool}), policy=policy)
    build_version(root, "v0002", ListPool({"b0": pool[1:]}), base="v0001", policy=policy)
    assert shard_urls(root, "v0001") == shard_urls(root, "v0002")  # N+1 only removed a sample: the same shards

    cfg = TrainConfig(shards=shard_urls(root, "v0002"), dataset_version="v0002", steps=1)
    step = {"loss": 1.0, "noise": 1.0, "hola": 0.0}
    record = run_record(
        SimpleNamespace(cfg=cfg, device="cpu"),
        SimpleNamespace(urls=cfg.shards, sizes=[(4, 4)], dataset=SimpleNamespace(stats={}), cache_stats=None),
        SimpleNamespace(history=[step], start_step=0, samples_seen=4),
        SimpleNamespace(world_size=1),
        train_seconds=1.0, data_seconds=0.0, published="", hola_layers=[], alignment=None,
    )  # fmt: skip
    assert record["data"] == {"shards": cfg.shards, "dataset_version": "v0002"}
    model = tmp_path / "store" / "models" / "daring_unet" / "hola"
    model.mkdir(parents=True)
    (model / "training_run.json").write_text(json.dumps(record))
    assert main(["lineage", "hola", "--store", root]) == 0
    lin = json.loads(capsys.readouterr().out)
    assert (lin["dataset_version"], lin["samples"]) == ("v0002", 7)
    assert (lin["sourcing_batches"], lin["label_rounds"]) == (["b0"], [1])
    # without the name, the shards alone cannot tell N from N+1
    (model / "training_run.json").write_text(json.dumps({**record, "data": {"shards": cfg.shards}}))
    with pytest.raises(ValueError, match="exactly those of 2 published versions"):
        lineage(root, "models/daring_unet/hola")
