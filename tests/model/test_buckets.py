"""Aspect-ratio buckets: the bucket lists, bucket choice, the bucketed shard reader and one-bucket batches."""

import hashlib
import io
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.model.buckets import (
    BucketedShardDataset,
    aspect_buckets,
    bucket_batches,
    nearest_bucket,
    released_sdxl_buckets,
)
from cosmicman.model.shards import ShardDataset
from tests.model.test_train import GROUPS, find_span, write_shards

TINY = aspect_buckets(64, step=8)  # [(80, 48), (72, 56), (64, 64), (56, 72), (48, 80)]


def make_rect_sample(i, width, height, lab=None):
    """make_sample's format for a width x height image; ``lab`` (H, W) uint8 defaults to a centred figure."""
    rng = np.random.default_rng(i)
    if lab is None:
        lab = np.zeros((height, width), np.uint8)
        x0, x1 = width // 3, width - width // 3
        lab[height // 10 : height // 4, x0:x1] = 2  # hair
        lab[height // 4 : height // 2, x0:x1] = 4  # top
        lab[height // 2 : height - height // 10, x0:x1] = 6  # jeans
    assert lab.shape == (height, width)
    img = rng.integers(0, 255, (height, width, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    mbuf = io.BytesIO()
    Image.fromarray(lab, mode="L").save(mbuf, format="PNG")
    tok = load_clip_tokenizer()
    caption = ", ".join(g[1] for g in GROUPS)
    ids = tok(caption, padding="max_length", max_length=77, truncation=True).input_ids
    groups = [
        {
            "name": n,
            "text": t,
            "labels": labs,
            "foreground": fg,
            "span": find_span(ids, tok(t, add_special_tokens=False).input_ids),
        }
        for n, t, labs, fg in GROUPS
    ]
    sha = hashlib.sha256(buf.getvalue() + f"{i}".encode()).hexdigest()
    meta = {"sha256": sha, "caption": caption, "groups": groups, "attributes": {}}
    return {"__key__": sha, "png": buf.getvalue(), "mask.png": mbuf.getvalue(), "json": json.dumps(meta).encode()}


# (width, height) of the mixed shard's images and the TINY bucket (h, w) each should land in
MIXED = [
    ((48, 80), (80, 48)),
    ((96, 160), (80, 48)),
    ((60, 100), (80, 48)),  # 3:5 portrait
    ((64, 64), (64, 64)),
    ((100, 100), (64, 64)),
    ((32, 32), (64, 64)),  # square
    ((160, 96), (48, 80)),
    ((200, 100), (48, 80)),
    ((80, 48), (48, 80)),  # landscape
    ((56, 72), (72, 56)),
    ((112, 144), (72, 56)),
]  # 7:9 portrait


def write_mixed_shards(folder, n_shards: int) -> list[str]:
    """``n_shards`` tar shards under ``folder``, each holding every MIXED size once (distinct keys per shard)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(n_shards):
        path = folder / f"shard-{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i, ((w, h), _) in enumerate(MIXED):
                sink.write(make_rect_sample(100 * s + i, w, h))
        urls.append(str(path))
    return urls


def test_bucket_lists():
    for res, step, ratio in [(64, 8, 2.0), (512, 64, 2.0), (1024, 64, 2.0), (512, 32, 1.5), (1000, 64, 2.0)]:
        bs = aspect_buckets(res, step=step, max_ratio=ratio)
        assert bs and len(set(bs)) == len(bs)
        for h, w in bs:
            assert h % step == 0 and w % step == 0
            assert h * w <= res * res and max(h, w) / min(h, w) <= ratio
            assert (w, h) in bs  # symmetric
            # the largest height for this width, or (the transposed pair) the largest width for this height
            assert (h + step) * w > res * res or (w + step) * h > res * res
        ratios = [w / h for h, w in bs]
        assert ratios == sorted(ratios)
        assert ((res, res) in bs) == (res % step == 0)
    assert TINY == [(80, 48), (72, 56), (64, 64), (56, 72), (48, 80)]
    assert aspect_buckets(512) == [(640, 384), (576, 448), (512, 512), (448, 576), (384, 640)]

    rel = released_sdxl_buckets()
    assert len(rel) == 16
    assert rel[0] == (1536, 768) and rel[-1] == (768, 1536)
    for b in [(1280, 1024), (1024, 1280), (1152, 1088), (1472, 832), (1216, 1024)]:
        assert b in rel
    assert (1024, 1024) not in rel  # the 1024x1280 area budget gives no square bucket
    for h, w in rel:
        assert min(h, w) >= 768 and max(h, w) <= 1536 and h * w <= 1024 * 1280 and max(h, w) <= 2 * min(h, w)

    for kwargs in [
        {"resolution": 0},
        {"resolution": 512, "step": 0},
        {"resolution": 512, "max_ratio": 0.5},
        {"resolution": 512, "max_area": 10},
        {"resolution": 512, "min_side": 1024, "max_side": 512},
        {"resolution": 512, "max_ratio": 1.0, "step": 64, "max_area": 64 * 64, "min_side": 128},
    ]:
        with pytest.raises(ValueError):
            aspect_buckets(**kwargs)


def test_nearest_bucket():
    rel = released_sdxl_buckets()
    assert nearest_bucket(512, 512, TINY) == (64, 64)
    assert nearest_bucket(600, 1000, TINY) == (80, 48)  # portrait 3:5 (w x h)
    assert nearest_bucket(1000, 600, TINY) == (48, 80)  # landscape
    assert nearest_bucket(1000, 4000, TINY) == (80, 48)  # beyond the widest ratio: the extreme bucket
    # 2:3 = 0.667 lies between 896/1408 = 0.636 and 960/1344 = 0.714; in log ratio 0.636 is nearer
    assert nearest_bucket(2000, 3000, rel) == (1408, 896)
    assert nearest_bucket(1024, 1280, rel) == (1280, 1024)
    # a tie in log ratio (square between 2:3 and 3:2) goes to the larger area, then list order
    assert nearest_bucket(100, 100, [(60, 40), (30, 45)]) == (60, 40)
    assert nearest_bucket(100, 100, [(30, 20), (60, 90)]) == (60, 90)
    assert nearest_bucket(100, 100, rel) == (1152, 1088)
    with pytest.raises(ValueError):
        nearest_bucket(10, 10, [])
    with pytest.raises(ValueError):
        nearest_bucket(0, 10, TINY)


def test_bucketed_dataset_shapes(mixed_urls):
    ds = BucketedShardDataset(mixed_urls[:1], load_clip_tokenizer(), TINY, map_factor=8)
    assert ds.resolution is None
    samples = list(ds)
    assert len(samples) == len(MIXED) and ds.stats["samples"] == len(MIXED)
    assert not ds.stats["skipped"] and not ds.stats["span_rejected"]
    for s, (_, (h, w)) in zip(samples, MIXED):
        assert s["bucket"] == (h, w)
        assert s["pixel_values"].shape == (3, h, w)
        assert s["pixel_values"].min() >= -1.0 and s["pixel_values"].max() <= 1.0
        assert s["group_masks"].shape == (len(GROUPS), h // 8, w // 8)
        assert s["spans"].tolist() == [[1, 3], [4, 7], [8, 12], [13, 15]]
    ds4 = BucketedShardDataset(mixed_urls[:1], load_clip_tokenizer(), TINY, map_factor=4, mask_resize="nearest")
    assert next(iter(ds4))["group_masks"].shape == (len(GROUPS), 20, 12)
    with pytest.raises(ValueError):
        BucketedShardDataset(mixed_urls, load_clip_tokenizer(), [(60, 40)], map_factor=8)  # 60 % 8
    with pytest.raises(ValueError):
        BucketedShardDataset(mixed_urls, load_clip_tokenizer(), [], map_factor=8)


def _decode(lab, bucket_list, map_factor):
    h, w = lab.shape
    ds = BucketedShardDataset([__file__], load_clip_tokenizer(), bucket_list, map_factor)  # decode reads no shard
    return ds.decode(make_rect_sample(0, w, h, lab))


def test_bucketed_masks_follow_the_crop():
    # exact fit, no crop: 160x96 image -> (48, 80) bucket at scale 1/2; a left-half label stays the left half
    lab = np.zeros((96, 160), np.uint8)
    lab[:, :80] = 2
    out = _decode(lab, TINY, 8)
    assert out["bucket"] == (48, 80)
    hair, top = out["group_masks"][1], out["group_masks"][2]
    expected = torch.zeros(6, 10)
    expected[:, :5] = 1
    assert torch.equal(hair, expected) and top.sum() == 0
    assert torch.equal(out["group_masks"][0], expected)  # foreground = every non-zero label

    # 2:1 landscape (200x100) -> (48, 80): scaled to 96x48 and 8 columns cut each side;
    # the top half stays the top half, the left quarter (50 px -> 24 px, 16 after the crop) covers 2 of 10 cells
    lab = np.zeros((100, 200), np.uint8)
    lab[:50, :] = 4
    lab[50:, :50] = 6
    out = _decode(lab, TINY, 8)
    assert out["bucket"] == (48, 80) and out["pixel_values"].shape == (3, 48, 80)
    top, jeans = out["group_masks"][2], out["group_masks"][3]
    expected = torch.zeros(6, 10)
    expected[:3] = 1
    assert torch.equal(top, expected)
    expected = torch.zeros(6, 10)
    expected[3:, :2] = 1
    assert torch.equal(jeans, expected)

    # portrait 3:5 at full map resolution (map_factor=1): the label map is the resized, cropped one
    lab = np.zeros((100, 60), np.uint8)
    lab[:, 30:] = 2
    out = _decode(lab, TINY, 1)
    assert out["bucket"] == (80, 48) and out["group_masks"].shape == (len(GROUPS), 80, 48)
    expected = torch.zeros(80, 48)
    expected[:, 24:] = 1
    assert torch.equal(out["group_masks"][1], expected)


def test_bucket_batches_single_bucket_and_deterministic(mixed_urls):
    tok = load_clip_tokenizer()
    ds = BucketedShardDataset(mixed_urls, tok, TINY, map_factor=8)
    got = list(bucket_batches(ds, 2))
    # per bucket: 2 shards x (3, 3, 3, 2) samples -> 3, 3, 3, 2 full batches of 2; nothing left over
    assert sorted(b["bucket"] for b in got) == sorted([(80, 48)] * 3 + [(64, 64)] * 3 + [(48, 80)] * 3 + [(72, 56)] * 2)
    for b in got:
        h, w = b["bucket"]
        assert b["pixel_values"].shape == (2, 3, h, w)
        assert b["group_masks"].shape == (2, len(GROUPS), h // 8, w // 8)
        assert b["input_ids"].shape == (2, 77) and b["spans"].shape == (2, len(GROUPS), 2)
    # each batch's samples come from one bucket: the images' own sizes say so
    sizes = {
        make_rect_sample(100 * s + i, w, h)["__key__"]: bk for s in range(2) for i, ((w, h), bk) in enumerate(MIXED)
    }
    for b in got:
        assert {sizes[k] for k in b["keys"]} == {b["bucket"]}
    # the first batch is yielded as soon as a bucket fills: the 2nd (80, 48) sample is the 2nd in the shard
    assert got[0]["bucket"] == (80, 48) and got[0]["keys"] == [
        s["key"] for s in itertools.islice(BucketedShardDataset(mixed_urls, tok, TINY, map_factor=8), 2)
    ]

    # endless, shuffled datasets stream, and the same seed gives the same batches
    def run(seed):
        d = BucketedShardDataset(mixed_urls, tok, TINY, map_factor=8, seed=seed, shuffle_buffer=8, repeat=True)
        return [(b["bucket"], b["keys"]) for b in itertools.islice(bucket_batches(d, 3), 14)]

    a, b = run(1), run(1)
    assert a == b and len(a) == 14
    assert all(len(keys) == 3 and {sizes[k] for k in keys} == {bk} for bk, keys in a)
    assert run(2) != a
    with pytest.raises(ValueError):
        next(bucket_batches(ds, 0))


def test_unbucketed_samples_batch_by_their_size(tmp_path):
    # bucket_batches also takes a plain ShardDataset (one size): it then behaves like `batches`
    urls = write_shards(tmp_path / "sq", n_shards=1, per_shard=4)
    got = list(bucket_batches(ShardDataset(urls, load_clip_tokenizer(), 32, (4, 4)), 2))
    assert len(got) == 2 and all(b["bucket"] == (32, 32) for b in got)
    assert math.prod(got[0]["pixel_values"].shape) == 2 * 3 * 32 * 32
