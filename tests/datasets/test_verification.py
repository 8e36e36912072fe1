"""A published version against its manifest, with what was verified (cosmicman.datasets.verification)."""

import fsspec

from cosmicman.datasets.verification import verify_version
from cosmicman.datasets.version import write_dataset_version
from tests.datasets.test_dataset_version import make_samples


def test_counts_of_an_intact_version_and_problems_of_a_broken_one(tmp_path):
    root = str(tmp_path / "store")
    info = write_dataset_version(root, "v0001", make_samples(7), samples_per_shard=3)
    intact = verify_version(root, "v0001")
    assert intact.intact and (intact.shards, intact.samples, intact.reread) == (3, 7, 3)
    shared = tmp_path / "store" / "datasets" / "cosmicman-hq" / "shards"
    assert intact.n_bytes == sum((shared / name).stat().st_size for name in info.shards)

    (shared / info.shards[2]).unlink()
    broken = verify_version(root, "v0001")
    assert broken.problems == [f"{info.shards[2]}: missing"] and broken.shards == 3


def test_an_unpublished_version_lists_nothing(tmp_path):
    fsspec.filesystem("file").makedirs(str(tmp_path / "store"), exist_ok=True)
    absent = verify_version(str(tmp_path / "store"), "v0009")
    assert not absent.intact and (absent.shards, absent.samples, absent.n_bytes) == (0, 0, 0)
    assert absent.problems == ["v0009: not published (_SUCCESS missing)"]
