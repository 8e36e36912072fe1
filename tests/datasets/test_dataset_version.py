"""Immutable CosmicMan-HQ versions: shards + manifest + stats + datacard through fsspec."""

import io
import re
import subprocess
import sys
import uuid

import fsspec
import numpy as np
import polars as pl
import pytest
import webdataset as wds
from PIL import Image

from cosmicman.core.imageio import sha256_hex
from cosmicman.core.protocol import load_protocol
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import build_caption, sample_attributes
from cosmicman.datasets.layout import (
    VersionExistsError,
    VersionNotFoundError,
    list_versions,
    next_version_name,
    read_manifest,
    read_shards_table,
    read_stats,
    shard_urls,
    version_exists,
)
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.shards import iter_samples
from cosmicman.datasets.verification import verify_shards
from cosmicman.datasets.version import write_dataset_version

PROV_KEYS = ("source", "source_batch", "filter_decision", "parser_version", "annotator_round")


def make_samples(n: int, seed: int = 0) -> list[DatasetSample]:
    rng = np.random.default_rng(seed)
    protocol, tok = load_protocol(), load_clip_tokenizer()
    out = []
    for i in range(n):
        w, h = int(rng.integers(12, 48)), int(rng.integers(12, 48))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        buf = io.BytesIO()
        ext = "png" if i % 3 == 0 else "jpg"
        img.save(buf, format="PNG" if ext == "png" else "JPEG")
        data = buf.getvalue()
        attrs = sample_attributes(protocol, rng, p_skip=0.1)
        out.append(
            DatasetSample(
                sha256=sha256_hex(data),
                image_bytes=data,
                ext=ext,
                mask=rng.integers(0, 18, (h, w)).astype(np.uint8),
                attributes=attrs,
                caption=build_caption(attrs, protocol, tok, rng),
                provenance={
                    "source": "synthetic" if i % 2 else "shhq",
                    "source_id": str(i),
                    "source_batch": f"batch-{i % 3}",
                    "filter_decision": "kept",
                    "parser_version": "atr-1",
                    "annotator_round": i % 2,
                    "licence": "CC-BY-4.0",
                },
            )
        )
    return out


@pytest.fixture(scope="module")
def samples():
    return make_samples(8)


@pytest.fixture(params=["memory", "local"])
def root(request, tmp_path):
    if request.param == "memory":
        url = f"memory://cm-{uuid.uuid4().hex}/store"
        yield url
        fs = fsspec.filesystem("memory")
        fs.rm(url.removeprefix("memory://").split("/")[0], recursive=True)
    else:
        yield str(tmp_path / "store")


def _fs_path(root: str, *parts: str):
    fs, path = fsspec.core.url_to_fs(root)
    return fs, "/".join([path.rstrip("/"), "datasets/cosmicman-hq", *parts])


def test_roundtrip(root, samples):
    info = write_dataset_version(root, "v0001", samples, samples_per_shard=3, created_at="2026-01-01T00:00:00+00:00")
    assert info.version == "v0001" and info.n_samples == 8
    assert len(info.shards) == 3 and all(re.fullmatch(r"[0-9a-f]{64}\.tar", s) for s in info.shards)
    assert info.url.endswith("datasets/cosmicman-hq/v0001")
    assert list_versions(root) == ["v0001"] and version_exists(root, "v0001")
    fs, vpath = _fs_path(root, "v0001")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(vpath)) == sorted(
        ["DATACARD.md", "_SUCCESS", "removed.parquet", "segments.parquet", "shards.parquet", "stats.json"]
    )
    _, shared = _fs_path(root, "shards")  # each shard once, named by its sha256, beside its index
    indexes = [s.replace(".tar", ".parquet") for s in info.shards]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(shared)) == sorted([*info.shards, *indexes])
    assert all(sha256_hex(fs.cat(f"{shared}/{s}")) == s.removesuffix(".tar") for s in info.shards)
    _, manifests = _fs_path(root, "manifests")  # one segment holds the rows of the shards this write stored
    (segment,) = [p.rsplit("/", 1)[1] for p in fs.find(manifests)]
    assert sha256_hex(fs.cat(f"{manifests}/{segment}")) == segment.removesuffix(".parquet")
    assert set(read_shards_table(root, "v0001")["segment"]) == {segment}
    _, tmp = _fs_path(root, ".tmp")
    assert not fs.exists(tmp) or fs.find(tmp) == []

    manifest = read_manifest(root, "v0001")
    assert manifest.height == 8 and manifest["sha256"].to_list() == [s.sha256 for s in samples]
    assert [manifest.filter(pl.col("shard") == s).height for s in info.shards] == [3, 3, 2]
    for col in ("sha256", "shard", "shard_sha256", "caption", "n_groups", "width", "height", *PROV_KEYS):
        assert col in manifest.columns
    shards = read_shards_table(root, "v0001")
    assert shards["n_samples"].to_list() == shards["n_live"].to_list() == [3, 3, 2]
    joined = manifest.join(shards, on="shard")
    assert (joined["shard_sha256"] == joined["sha256_right"]).all()

    by_sha = {s.sha256: s for s in samples}
    got = list(iter_samples(root, "v0001"))
    assert [g["sha256"] for g in got] == [s.sha256 for s in samples]
    for g in got:
        s = by_sha[g["sha256"]]
        cap = s.caption.to_json()
        assert g["image_bytes"] == s.image_bytes and g["ext"] == s.ext
        assert g["mask"].dtype == np.uint8 and np.array_equal(g["mask"], s.mask)
        assert g["caption"] == cap["caption"]
        meta = g["meta"]
        assert meta["sha256"] == s.sha256 and meta["attributes"] == s.attributes
        assert meta["groups"] == cap["groups"] and meta["dropped"] == cap["dropped"]
        assert all(meta[k] == s.provenance[k] for k in PROV_KEYS) and meta["provenance"] == s.provenance
        assert (meta["width"], meta["height"]) == (s.mask.shape[1], s.mask.shape[0])
    assert verify_shards(root, "v0001") == []
    card = fs.cat(vpath + "/DATACARD.md").decode()
    assert "# CosmicMan-HQ v0001" in card and "images: 8 in 3 WebDataset shards" in card and "CC-BY-4.0" in card


def test_webdataset_reads_shards(tmp_path, samples):
    root = str(tmp_path)
    write_dataset_version(root, "v0001", samples, samples_per_shard=3)
    urls = shard_urls(root, "v0001")
    assert len(urls) == 3 and all(u.startswith("/") for u in urls)
    raw = list(wds.WebDataset(urls, shardshuffle=False))
    assert [r["__key__"] for r in raw] == [s.sha256 for s in samples]
    assert all({"json", "mask.png", "txt"} <= r.keys() and ("jpg" in r or "png" in r) for r in raw)
    decoded = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    for d, s in zip(decoded, samples):
        assert np.array_equal(d["mask.png"], s.mask)
        assert d["json"]["caption"] == d["txt"] == s.caption.text
        for grp in d["json"]["groups"]:  # spans survive the trip as [s, e] or null
            assert grp["span"] is None or (isinstance(grp["span"], list) and len(grp["span"]) == 2)


def test_refuses_overwrite(root, samples):
    write_dataset_version(root, "v0001", samples[:4], samples_per_shard=2)
    before = read_shards_table(root, "v0001")
    with pytest.raises(VersionExistsError):
        write_dataset_version(root, "v0001", samples[4:], samples_per_shard=2)
    assert read_shards_table(root, "v0001").equals(before) and read_manifest(root, "v0001").height == 4
    assert verify_shards(root, "v0001") == []
    write_dataset_version(root, next_version_name(list_versions(root)), samples[4:])
    assert list_versions(root) == ["v0001", "v0002"]


def test_unpublished_version_is_absent_and_replaced(root, samples):
    fs, vpath = _fs_path(root, "v0001")
    fs.makedirs(vpath, exist_ok=True)
    with fs.open(vpath + "/shard-000000.tar", "wb") as f:  # leftovers of a crashed publish
        f.write(b"half written")
    assert list_versions(root) == [] and not version_exists(root, "v0001")
    with pytest.raises(VersionNotFoundError):
        read_manifest(root, "v0001")
    assert verify_shards(root, "v0001") == ["v0001: not published (_SUCCESS missing)"]
    write_dataset_version(root, "v0001", samples[:3])
    assert list_versions(root) == ["v0001"] and verify_shards(root, "v0001") == []


def test_failed_write_leaves_nothing(root, samples):
    def gen():
        yield from samples[:5]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_dataset_version(root, "v0001", gen(), samples_per_shard=2)
    fs, base = _fs_path(root)
    assert list_versions(root) == [] and not fs.exists(base + "/v0001")
    # the temporary prefix is gone too, and so are the two shards the failed write had stored
    assert not fs.exists(base) or fs.find(base) == []

    with pytest.raises(ValueError, match="no samples"):
        write_dataset_version(root, "v0001", [])
    assert write_dataset_version(root, "v0009", [], allow_empty=True).n_samples == 0
    assert list_versions(root) == ["v0009"] and verify_shards(root, "v0009") == []
    fs.rm(base + "/v0009", recursive=True)

    bad = [samples[0], samples[0]]
    with pytest.raises(ValueError, match="duplicate"):
        write_dataset_version(root, "v0001", bad)
    wrong_sha = [DatasetSample("0" * 64, samples[0].image_bytes, "jpg", samples[0].mask, {}, {"caption": ""})]
    with pytest.raises(ValueError, match="sha256"):
        write_dataset_version(root, "v0001", wrong_sha)
    s = samples[1]
    with pytest.raises(ValueError, match="mask shape"):
        write_dataset_version(
            root,
            "v0001",
            [DatasetSample(s.sha256, s.image_bytes, s.ext, s.mask.T[:, :-1], s.attributes, s.caption, s.provenance)],
        )
    assert list_versions(root) == []


def test_tampered_shard_is_reported(root, samples):
    info = write_dataset_version(root, "v0001", samples, samples_per_shard=3)
    fs, vpath = _fs_path(root, "v0001")
    _, shared = _fs_path(root, "shards")
    path = f"{shared}/{info.shards[1]}"
    data = bytearray(fs.cat(path))
    data[700] ^= 0xFF  # inside the first member's bytes
    with fs.open(path, "wb") as f:
        f.write(bytes(data))
    problems = verify_shards(root, "v0001")
    assert len(problems) == 1 and problems[0].startswith(f"{info.shards[1]}: sha256")

    fs.rm(f"{shared}/{info.shards[2]}")
    with fs.open(vpath + "/shard-000009.tar", "wb") as f:
        f.write(b"stray")
    problems = verify_shards(root, "v0001")
    assert f"{info.shards[2]}: missing" in problems
    assert "shard-000009.tar: not part of a version" in problems
    assert len(problems) == 3


def test_stats_match_manifest(root, samples):
    write_dataset_version(root, "v0001", samples, samples_per_shard=5)
    m, st = read_manifest(root, "v0001"), read_stats(root, "v0001")
    tok, protocol = load_clip_tokenizer(), load_protocol()
    widths = [s.mask.shape[1] for s in samples]
    heights = [s.mask.shape[0] for s in samples]
    assert st["n_images"] == m.height == 8 and st["version"] == "v0001" and st["n_shards"] == 2
    assert st["mean_width"] == pytest.approx(np.mean(widths), abs=1e-3)
    assert st["mean_height"] == pytest.approx(np.mean(heights), abs=1e-3)
    assert st["median_width"] == pytest.approx(np.median(widths))
    assert st["median_height"] == pytest.approx(np.median(heights))
    assert st["mean_resolution"] == f"{np.mean(heights):.0f}x{np.mean(widths):.0f}"
    n_attr = [len(s.attributes) for s in samples]
    assert st["n_attributes"] == sum(n_attr) == m["n_attributes"].sum()
    assert st["mean_attributes_per_image"] == pytest.approx(np.mean(n_attr), abs=1e-3)
    words = [len(s.caption.text.split()) for s in samples]
    tokens = [len(tok(s.caption.text).input_ids) - 2 for s in samples]
    assert st["mean_caption_words"] == pytest.approx(np.mean(words), abs=1e-3)
    assert st["mean_caption_tokens"] == pytest.approx(np.mean(tokens), abs=1e-3) and max(tokens) <= 75
    assert st["mean_groups_per_caption"] == pytest.approx(np.mean([len(s.caption.groups) for s in samples]), abs=1e-3)
    assert st["n_categories"] == len(protocol.categories)
    for c in protocol.categories:
        assert st["category_coverage"][c.name]["count"] == sum(c.name in s.attributes for s in samples)
    assert st["n_categories_covered"] == sum(v["count"] > 0 for v in st["category_coverage"].values())
    assert st["sources"] == {"shhq": 4, "synthetic": 4}
    assert st["source_batches"] == dict(m.group_by("source_batch").len().sort("source_batch").iter_rows())
    assert st["filter_decisions"] == {"kept": 8} and st["annotator_rounds"] == {"0": 4, "1": 4}
    assert st["group_frequency"]["person"] == pytest.approx(
        np.mean(["person" in [g.name for g in s.caption.groups] for s in samples]), abs=1e-3
    )
    assert st["n_bytes"] == read_shards_table(root, "v0001")["n_bytes"].sum()


def test_identical_inputs_give_identical_shards(root, samples):
    a = write_dataset_version(root, "v0001", samples, samples_per_shard=4)
    b = write_dataset_version(root, "v0002", samples, samples_per_shard=4)
    assert a.shards == b.shards
    assert read_shards_table(root, "v0001")["sha256"].to_list() == read_shards_table(root, "v0002")["sha256"].to_list()


def test_exif_rotated_image_size():
    img = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))  # stored 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: shown 10 wide, 30 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    sample = DatasetSample(sha256_hex(data), data, "jpeg", np.zeros((30, 10), np.uint8), {}, {"caption": "x"})
    root = f"memory://cm-{uuid.uuid4().hex}"
    write_dataset_version(root, "v0001", [sample])
    m = read_manifest(root, "v0001")
    assert m.select("ext", "width", "height").row(0) == ("jpg", 10, 30)


def test_next_version_name():
    assert next_version_name([]) == "v0001"
    assert next_version_name(["v0001", "v0009", "junk", ".tmp", "datasets/cosmicman-hq/v0003/"]) == "v0010"
    assert next_version_name(["v9999"]) == "v10000"
    with pytest.raises(ValueError):
        write_dataset_version("memory://x", "../v1", [])


def test_data_package_stays_dagster_free():
    code = (
        "import sys; import cosmicman.datasets.version, cosmicman.datasets.captions, cosmicman.core.tokenizer; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dagster', 'open_clip', 'torchvision') "
        "or m.startswith('cosmicman.model')]; print(sorted(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"  # the modules it imported that it must not


def test_diff_between_versions_from_different_pools(root, samples):
    import dataclasses

    from cosmicman.datasets.diff import diff_versions

    write_dataset_version(root, "v0001", samples[:6], samples_per_shard=4)
    relabelled = dataclasses.replace(samples[3], provenance={**samples[3].provenance, "annotator_round": 5})
    write_dataset_version(root, "v0002", [*samples[2:3], relabelled, *samples[4:8]], samples_per_shard=4)
    d = diff_versions(root, "v0001", "v0002")
    sha = [s.sha256 for s in samples]
    assert set(d.added) == {sha[6], sha[7]} and set(d.removed) == {sha[0], sha[1]}
    assert d.relabelled == (sha[3],) and d.unchanged == 3
    assert d.counts() == {"old": "v0001", "new": "v0002", "added": 2, "removed": 2, "relabelled": 1, "unchanged": 3}
    assert diff_versions(root, "v0002", "v0002").counts()["unchanged"] == 6
