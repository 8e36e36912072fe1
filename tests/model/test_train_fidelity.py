"""Training fidelity to the released loader: image and parsing map flipped together, a fresh caption drawn
at every sample (seeded by run seed and stream position), and the released extra drop of late groups."""

import json

import numpy as np
import pytest
import torch

from cosmicman.core.caption_draw import (
    LATE_GROUP_FROM,
    CaptionSource,
    GroupSource,
    PhraseParts,
    draw_caption,
)
from cosmicman.core.protocol import load_protocol
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import caption_source, mirror_attributes
from cosmicman.model.sample_draw import SampleDraw, mirror_label_map
from cosmicman.model.shards import ShardDataset, iter_tar_samples
from tests.support.version_shards import LEFT_ARM, SIZE, person_attributes, write_version_shards

RIGHT_ARM, LEFT_SHOE, RIGHT_SHOE = 15, 9, 10


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def protocol():
    return load_protocol()


def _decode(tok, raw, pos: int, **draw) -> dict:
    ds = ShardDataset([raw["__url__"]], tok, SIZE, mask_size=None, draw=SampleDraw(seed=7, **draw))
    return ds.decode({**raw, "__pos__": pos})


# ------------------------------------------------------------------------------------------------ flip
def test_flip_moves_image_and_masks_together(tmp_path, protocol, tok):
    urls = write_version_shards(tmp_path / "shards", protocol, tok, n=1, per_shard=1)
    raw = next(iter_tar_samples(urls[0]))
    plain, flipped = _decode(tok, raw, 3, flip_p=0.0), _decode(tok, raw, 3, flip_p=1.0)
    assert (plain["flipped"], flipped["flipped"]) == (False, True)
    # pixel for pixel: the flipped image is the mirror of the plain one (64 px: no resize, no crop)
    assert torch.equal(flipped["pixel_values"], torch.flip(plain["pixel_values"], dims=[-1]))
    assert not torch.equal(flipped["pixel_values"], plain["pixel_values"])
    # the same draw otherwise (the flip's uniform is always drawn): the same groups, each mask mirrored
    assert flipped["group_names"] == plain["group_names"] and len(plain["group_names"]) >= 5
    for g in range(len(plain["group_names"])):
        assert torch.equal(flipped["group_masks"][g], torch.flip(plain["group_masks"][g], dims=[-1]))
    assert any(0 < m.float().mean() < 1 for m in plain["group_masks"])  # masks that a wrong flip would break
    # the viewer's side in the caption follows the image; nothing else in the wording changes
    text_p, text_f = tok.decode(plain["input_ids"], True), tok.decode(flipped["input_ids"], True)
    assert "on the left" in text_p and "on the right" in text_f
    assert text_f.replace("on the right", "on the left") == text_p


def test_mirrored_label_map_swaps_left_and_right_parts():
    labels = np.zeros((2, 4), np.uint8)
    labels[0, 0], labels[1, 0], labels[0, 1], labels[1, 3] = LEFT_ARM, LEFT_SHOE, 2, RIGHT_ARM
    out = mirror_label_map(labels)
    assert out[0, 3] == RIGHT_ARM and out[1, 3] == RIGHT_SHOE and out[1, 0] == LEFT_ARM  # side swapped
    assert out[0, 2] == 2  # hair stays hair
    assert np.array_equal(mirror_label_map(out), labels)  # twice is the identity


def test_only_a_viewer_side_answer_is_mirrored(protocol):
    attrs = person_attributes(protocol, 0, "left")
    mirrored = mirror_attributes(protocol, attrs)
    assert mirrored["person_position"] == "right"
    assert {k: v for k, v in mirrored.items() if k != "person_position"} == {
        k: v for k, v in attrs.items() if k != "person_position"
    }
    assert mirror_attributes(protocol, dict(attrs, person_position="center")) == dict(attrs, person_position="center")
    source = caption_source(attrs, protocol)
    assert [g.name for g in source.groups if g.mirrored is not None] == ["position"]


def test_flip_rate_is_the_configured_probability():
    draw = SampleDraw(seed=0, flip_p=0.5)
    rate = np.mean([draw.flips(draw.rng(p)) for p in range(4000)])
    assert 0.47 < rate < 0.53
    never = SampleDraw(seed=0, flip_p=0.0)
    assert not any(never.flips(never.rng(p)) for p in range(500))


# ------------------------------------------------------------------------------------------------ captions
def test_caption_draw_repeats_for_the_same_seed_and_position(protocol, tok):
    source = caption_source(person_attributes(protocol, 3), protocol).to_json()
    draw = SampleDraw(seed=11)
    same = [draw.caption(source, tok, draw.rng(5), mirrored=False) for _ in range(2)]
    assert same[0] == same[1]
    texts = {draw.caption(source, tok, draw.rng(p), mirrored=False).text for p in range(12)}
    assert len(texts) >= 10  # another position, another draw
    other_seed = SampleDraw(seed=12)
    assert other_seed.caption(source, tok, other_seed.rng(5), mirrored=False).text != same[0].text


def test_each_epoch_draws_anew_and_a_second_reader_draws_the_same(tmp_path, protocol, tok):
    urls = write_version_shards(tmp_path / "shards", protocol, tok, n=3, per_shard=3)

    def stream():
        ds = ShardDataset(urls, tok, SIZE, mask_size=(8, 8), repeat=True, draw=SampleDraw(seed=1))
        out = []
        for s in ds:
            out.append(s)
            if len(out) == 9:  # three epochs of three samples
                return out, ds.stats
        raise AssertionError("stream ended")

    (a, stats), (b, _) = stream(), stream()
    assert stats["drawn_captions"] == 9 and stats["frozen_captions"] == 0 and 0 < stats["flipped"] < 9
    for x, y in zip(a, b):  # the same (seed, position): the same sample, bit for bit
        assert x["pos"] == y["pos"] and x["flipped"] == y["flipped"]
        for k in ("pixel_values", "input_ids", "group_masks", "spans"):
            assert torch.equal(x[k], y[k])
    for i in range(3):  # one sample in three epochs: three captions
        epochs = [a[i], a[i + 3], a[i + 6]]
        assert len({e["key"] for e in epochs}) == 1
        assert len({tuple(e["input_ids"].tolist()) for e in epochs}) == 3


def test_frozen_caption_versions_stay_readable(tmp_path, protocol, tok):
    """A version written before caption sources: stored caption, never flipped, and counted."""
    urls = write_version_shards(tmp_path / "shards", protocol, tok, n=1, per_shard=1)
    raw = next(iter_tar_samples(urls[0]))
    meta = json.loads(raw["json"])
    meta.pop("caption_source")
    old = {**raw, "json": json.dumps(meta).encode()}
    ds = ShardDataset(urls, tok, SIZE, mask_size=None, draw=SampleDraw(seed=0, flip_p=1.0))
    sample = ds.decode({**old, "__pos__": 0})
    assert sample["flipped"] is False and ds.stats["frozen_captions"] == 1
    stored = tok(meta["caption"], padding="max_length", max_length=77, truncation=True).input_ids
    assert sample["input_ids"].tolist() == stored


def test_dropped_groups_have_no_attention_target(tmp_path, protocol, tok):
    urls = write_version_shards(tmp_path / "shards", protocol, tok, n=1, per_shard=1)
    raw = next(iter_tar_samples(urls[0]))
    full = _decode(tok, raw, 0, flip_p=0.0, group_dropout=0.0)
    late = _decode(tok, raw, 0, flip_p=0.0, group_dropout=0.0, late_group_dropout=1.0)
    index = {g.name: i for i, g in enumerate(protocol.groups)}
    assert any(index[n] >= LATE_GROUP_FROM for n in full["group_names"])
    assert [n for n in full["group_names"] if index[n] < LATE_GROUP_FROM] == [
        n for n in late["group_names"] if index[n] < LATE_GROUP_FROM
    ]
    assert all(index[n] < LATE_GROUP_FROM for n in late["group_names"])  # dropped: no mask, no span
    assert late["group_masks"].shape[0] == len(late["group_names"]) == late["spans"].shape[0]
    none = _decode(tok, raw, 0, flip_p=0.0, group_dropout=1.0)
    assert none["group_names"] == [] and none["group_masks"].shape[0] == 0 and tok.decode(none["input_ids"], True) == ""


# ------------------------------------------------------------------------------------------------ late drop
def _edge_source() -> CaptionSource:
    """Groups at protocol index 12, 13 (kept by the late drop), 14 and 15 (dropped half of the time)."""
    parts = [PhraseParts(("red",), name, (), False) for name in ("scarf", "spot", "light", "face")]
    return CaptionSource(
        tuple(GroupSource(12 + k, p.noun, (k + 1,), False, p) for k, p in enumerate(parts)), shuffle_from=0
    )


def _drop_rates(tok, n: int, **kw) -> dict[str, float]:
    source, counts = _edge_source(), dict.fromkeys(("scarf", "spot", "light", "face"), 0)
    rng = np.random.default_rng(0)
    for _ in range(n):
        for name in draw_caption(source, tok, rng, group_dropout=0.0, **kw).dropped:
            counts[name] += 1
    return {k: v / n for k, v in counts.items()}


def test_late_group_drop_rate_pins_its_edges(tok):
    rates = _drop_rates(tok, 1500, late_group_dropout=0.5)
    assert rates["scarf"] == rates["spot"] == 0.0  # index 12, 13: never
    assert 0.46 < rates["light"] < 0.54 and 0.46 < rates["face"] < 0.54  # index 14, 15: half of the time
    assert _drop_rates(tok, 200) == dict.fromkeys(rates, 0.0)  # off by default
    assert LATE_GROUP_FROM == 14


def test_only_the_released_recipes_turn_the_late_drop_on():
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.recipes import RECIPES, recipe

    schema = TrainConfig()
    assert (schema.late_group_dropout, schema.late_group_from, schema.group_dropout, schema.flip_p) == (
        0.0,
        14,
        0.1,
        0.5,
    )
    for name in RECIPES:
        cfg = recipe(name)
        released = name.startswith("released")
        assert cfg.late_group_dropout == (0.5 if released else 0.0), name
        assert (cfg.late_group_from, cfg.group_dropout, cfg.flip_p) == (14, 0.1, 0.5), name
        assert not (released and cfg.cache_latents), name  # a cache would freeze the draws
    with pytest.raises(ValueError, match="late_group_dropout must be in"):
        TrainConfig(late_group_dropout=1.5)


def test_protocol_late_groups():
    """What index >= 14 means in this protocol (the released list's late groups were style / accessories)."""
    names = [g.name for g in load_protocol().groups]
    assert names[13:15] == ["position", "lighting"]
    assert names[LATE_GROUP_FROM:] == ["lighting", "face", "facial_hair", "necklace", "legs", "arms", "gloves"]
