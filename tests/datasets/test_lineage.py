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
    with pytest.raises(ValueError, match="span 2 dataset versions"):
        dataset_of_shards(shard_urls(root, "v0001") + shard_urls(root, "v0002"))
