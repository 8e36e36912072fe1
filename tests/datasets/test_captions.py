"""Daring data discretization: grouped captions, token spans, dropout, 77-token cut, group masks."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from cosmicman.core.caption_draw import Caption, CaptionGroup, find_unique_span
from cosmicman.core.protocol import load_protocol
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import (
    build_caption,
    caption_masks,
    check_templates,
    group_mask,
    load_caption_templates,
    n_tokens,
    phrase_ids,
    prompt_ids,
    sample_attributes,
)


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def protocol():
    return load_protocol()


def _squash(s: str) -> str:
    return "".join(s.lower().split())


def test_templates_cover_protocol(protocol):
    assert check_templates(protocol, load_caption_templates()) == []


def test_sample_attributes_are_protocol_valid(protocol):
    rng = np.random.default_rng(1)
    for _ in range(200):
        answers = sample_attributes(protocol, rng)
        protocol.validate_answers(answers)  # raises for an answer out of its vocabulary or out of place
        assert list(answers) == [c.name for c in protocol.applicable(answers)]  # every applicable one, in order


def test_spans_decode_to_group_text(protocol, tok):
    rng = np.random.default_rng(0)
    n_groups = n_none = 0
    for i in range(400):
        attrs = sample_attributes(protocol, rng, p_skip=0.15 if i % 2 else 0.0)
        cap = build_caption(attrs, protocol, tok, rng)
        ids = prompt_ids(cap.text, tok)
        assert len(ids) == 77 and ids[0] == 49406
        eos = ids.index(49407)
        assert eos == n_tokens(cap.text, tok) - 1 <= 76
        assert cap.text == ", ".join(g.text for g in cap.groups)
        prev_end = 0
        for g in cap.groups:
            n_groups += 1
            if g.span is None:
                n_none += 1
                continue
            s, e = g.span
            assert 1 <= s < e <= eos and s >= prev_end  # in caption order, inside BOS..EOS
            prev_end = e
            assert ids[s:e] == phrase_ids(g.text, tok)
            assert _squash(tok.decode(ids[s:e])) == _squash(g.text)
    # with this protocol every group's ids occur exactly once in its prompt
    assert n_groups > 2000 and n_none == 0


def test_known_wording(protocol, tok):
    attrs = {
        "gender": "woman",
        "age": "adult",
        "body_shape": "slim",
        "skin_tone": "light",
        "pose": "arms raised",
        "background": "outdoor",
        "top_exists": "yes",
        "top_color": "red",
        "top_pattern": "striped",
        "sleeve_length": "long",
        "pants_exists": "yes",
        "pants_color": "blue",
        "pants_length": "long",
        "shoes_exists": "yes",
        "shoes_color": "black",
        "shoes_type": "boots",
        "hair_exists": "no",
        "sunglasses_exists": "no",
        "bag_exists": "no",
    }
    seen_person, seen_top = set(), set()
    for seed in range(40):
        cap = build_caption(attrs, protocol, tok, seed, group_dropout=0.0)
        g = {x.name: x.text for x in cap.groups}
        assert list(g)[:2] == ["person", "background"]
        assert set(g) == {"person", "background", "top", "pants", "shoes"}  # absent objects give no phrase
        assert g["background"] == "outdoor background"
        assert g["pants"] == "blue long pants" and g["shoes"] == "black boots"
        assert g["person"].endswith("woman with light skin and arms raised")
        assert set(g["person"].split()[:3]) in ({"a", "slim", "adult"}, {"an", "adult", "slim"})
        assert sorted(g["top"].split()) == sorted(["red", "striped", "long-sleeved", "top"])
        assert g["top"].endswith(" top")
        seen_person.add(g["person"])
        seen_top.add(g["top"])
    assert len(seen_person) == 2 and len(seen_top) == 6  # every adjective order occurs


def test_child_noun_and_missing_gender(protocol, tok):
    cap = build_caption({"gender": "man", "age": "child"}, protocol, tok, 0, group_dropout=0.0)
    assert cap.text == "a young boy"
    cap = build_caption({"age": "elderly", "pose": "arms down"}, protocol, tok, 0, group_dropout=0.0)
    assert cap.text == "an elderly person with arms down"


def test_groups_from_third_are_shuffled(protocol, tok):
    rng = np.random.default_rng(3)
    attrs = sample_attributes(protocol, rng)
    orders = Counter()
    for seed in range(60):
        cap = build_caption(attrs, protocol, tok, seed, group_dropout=0.0)
        names = [g.name for g in cap.groups]
        assert names[:2] == ["person", "background"]
        orders[tuple(names[2:])] += 1
    assert len(orders) > 10


def test_determinism(protocol, tok):
    attrs = sample_attributes(protocol, 7)
    a = build_caption(attrs, protocol, tok, 123)
    b = build_caption(attrs, protocol, tok, np.random.default_rng(123))
    assert a == b
    texts = {build_caption(attrs, protocol, tok, s).text for s in range(20)}
    assert len(texts) > 10
    # a shared generator gives a reproducible stream
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [build_caption(attrs, protocol, tok, r1) for _ in range(5)] == [
        build_caption(attrs, protocol, tok, r2) for _ in range(5)
    ]


def test_group_dropout_rate(protocol, tok):
    rng = np.random.default_rng(11)
    kept = dropped = 0
    per_group = Counter()
    for _ in range(1500):
        cap = build_caption(sample_attributes(protocol, rng), protocol, tok, rng)
        assert not set(cap.dropped) & {g.name for g in cap.groups}
        kept += len(cap.groups) + len(cap.truncated)
        dropped += len(cap.dropped)
        per_group.update(cap.dropped)
    rate = dropped / (kept + dropped)
    assert abs(rate - 0.1) < 0.01, rate  # ~10k group draws: sd ~0.003
    assert per_group["person"] > 0 and per_group["background"] > 0  # as released, every group may drop
    attrs = sample_attributes(protocol, 2)
    assert build_caption(attrs, protocol, tok, 0, group_dropout=0.0).dropped == ()
    none = build_caption(attrs, protocol, tok, 0, group_dropout=1.0)
    assert none.text == "" and none.groups == () and len(none.dropped) >= 2


def test_trailing_groups_cut_to_fit(protocol, tok):
    """Uniform random answer sets (every garment at once, 70 categories) may overflow 77 tokens: then the
    trailing groups are cut, exactly those that do not fit."""
    rng = np.random.default_rng(4)
    n_cut = n_cut77 = 0
    for seed in range(100):
        attrs = sample_attributes(protocol, rng)
        whole = build_caption(attrs, protocol, tok, seed, max_length=400)  # the same draws, nothing cut
        assert whole.truncated == ()
        full = build_caption(attrs, protocol, tok, seed)
        assert n_tokens(full.text, tok) <= 77 and full.dropped == whole.dropped
        assert [g.name for g in full.groups] + list(full.truncated) == [g.name for g in whole.groups]
        if full.truncated:
            assert n_tokens(full.text + ", " + whole.groups[len(full.groups)].text, tok) > 77
        n_cut77 += bool(full.truncated)
        cut = build_caption(attrs, protocol, tok, seed, max_length=24)
        assert n_tokens(cut.text, tok) <= 24
        # the same draws: the cut caption keeps a prefix of the full one and records the rest
        assert [g.name for g in cut.groups] + list(cut.truncated) == [g.name for g in whole.groups]
        assert cut.dropped == full.dropped
        if cut.groups and cut.truncated:  # the next group would not have fitted
            assert n_tokens(cut.text + ", " + whole.groups[len(cut.groups)].text, tok) > 24
        ids = prompt_ids(cut.text, tok, 24)
        for g in cut.groups:
            assert g.span is not None and ids[g.span[0] : g.span[1]] == phrase_ids(g.text, tok)
        n_cut += bool(cut.truncated)
    assert n_cut > 50 and n_cut77 < 30


def test_world_captions_fit_the_budget(protocol, tok):
    """The people the synthetic world draws (one outfit, realistic accessories) fit 77 tokens."""
    from cosmicman.simulation.world import SyntheticWorld

    world = SyntheticWorld(seed=0)
    lengths = []
    for i in range(300):
        cap = build_caption(
            world.random_attributes(np.random.default_rng([0, i])), protocol, tok, i, group_dropout=0.0, max_length=400
        )
        lengths.append(n_tokens(cap.text, tok))
    assert max(lengths) <= 85 and np.mean(np.array(lengths) > 77) <= 0.01, (max(lengths), np.mean(lengths))


def test_every_category_reaches_the_caption(protocol, tok):
    """Every category is worded by a caption group, or is an existence question that the group's presence
    answers; within its group, different answers give different captions."""
    grouped = {c for g in protocol.groups for c in g.categories}
    implied = {c.name for c in protocol.categories if c.name.endswith("_exists")} - grouped
    assert {c.name for c in protocol.categories} - grouped == implied
    assert all(protocol.by_name[c].tag == "obj" for c in implied)
    from cosmicman.simulation.world import SyntheticWorld

    world = SyntheticWorld(seed=1)
    pool = [world.random_attributes(np.random.default_rng([1, i])) for i in range(300)]
    for name in sorted(grouped):
        cat = protocol.by_name[name]
        attrs = next(a for a in pool if name in a)
        texts = {
            build_caption(dict(attrs, **{name: x}), protocol, tok, 5, group_dropout=0.0, max_length=400).text
            for x in cat.answers
        }
        assert len(texts) >= 2, name  # ("regular" fit, "loose" hair or "no" bangs may say nothing)
        if not (
            name in ("pants_fit", "top_length", "hair_style", "hair_bangs", "lipstick", "facial_hair")
            or name.endswith("_exists")
        ):
            assert len(texts) == len(cat.answers), (name, texts)


def test_new_group_wording(protocol, tok):
    attrs = {
        "gender": "man",
        "age": "adult",
        "background": "plain",
        "background_color": "blue",
        "lighting": "dim",
        "person_position": "left",
        "hair_exists": "yes",
        "hair_color": "brown",
        "hat_exists": "no",
        "hair_bangs": "yes",
        "hair_style": "bun",
        "expression": "smiling",
        "lipstick": "no",
        "facial_hair": "beard",
        "scarf_exists": "no",
        "necklace_exists": "yes",
        "legs_exposed": "yes",
        "stockings_exists": "yes",
        "stockings_color": "red",
        "arms_exposed": "yes",
        "gloves_exists": "yes",
        "gloves_color": "green",
        "shoes_exists": "yes",
        "shoes_color": "white",
        "shoes_type": "sneakers",
        "shoes_sole": "dark",
        "sunglasses_exists": "no",
    }
    for seed in range(10):
        g = {x.name: x.text for x in build_caption(attrs, protocol, tok, seed, group_dropout=0.0).groups}
        assert g["position"] == "on the left" and g["lighting"] == "dim lighting"
        assert g["background"] in ("blue plain background", "plain blue background")
        assert g["hair"] == "brown hair bun with bangs" and g["face"] == "smiling face"
        assert g["facial_hair"] == "beard" and g["necklace"] == "necklace" and g["legs"] == "red stockings"
        assert g["arms"] == "bare arms" and g["gloves"] == "green gloves"
        assert g["shoes"] == "white sneakers with dark soles"
        assert "sunglasses" not in g
    quiet = dict(
        attrs,
        lipstick="yes",
        facial_hair="none",
        stockings_exists="no",
        necklace_exists="no",
        arms_exposed="no",
        gloves_exists="no",
        hair_bangs="no",
        hair_style="loose",
    )
    del quiet["stockings_color"], quiet["gloves_color"]
    g = {x.name: x.text for x in build_caption(quiet, protocol, tok, 0, group_dropout=0.0).groups}
    assert g["face"] == "smiling face with lipstick" and g["legs"] == "bare legs" and g["hair"] == "brown hair"
    assert not {"facial_hair", "necklace", "arms", "gloves"} & set(g)
    # a garment's group appears when it exists even if a multi-requirement detail is not asked
    g = {
        x.name
        for x in build_caption(
            {"top_exists": "yes", "scarf_exists": "yes", "hair_exists": "yes", "hat_exists": "yes"},
            protocol,
            tok,
            0,
            group_dropout=0.0,
        ).groups
    }
    assert {"top", "hair"} <= g


def test_duplicate_phrase_gets_no_span(protocol, tok):
    assert find_unique_span([5], [1, 5, 2]) == (1, 2)
    assert find_unique_span([5, 2], [1, 5, 2, 5, 2]) is None
    assert find_unique_span([], [1, 2]) is None and find_unique_span([9], [1, 2]) is None
    templates = load_caption_templates()
    groups = dict(templates.groups)
    groups["sunglasses"] = dataclasses.replace(groups["sunglasses"], noun={"text": "hair"})
    twin = dataclasses.replace(templates, groups=groups)
    cap = build_caption(
        {"hair_exists": "yes", "sunglasses_exists": "yes", "background": "plain"},
        protocol,
        tok,
        0,
        group_dropout=0.0,
        templates=twin,
    )
    spans = {g.name: g.span for g in cap.groups}
    assert spans["hair"] is None and spans["sunglasses"] is None and spans["background"] == (1, 3)


def test_group_masks(protocol):
    label_map = np.array([[0, 0, 2, 2], [4, 4, 9, 10], [6, 17, 0, 11]], dtype=np.uint8)
    by_name = {g.name: g for g in protocol.groups}
    assert (group_mask(label_map, by_name["person"]) == (label_map != 0)).all()
    assert group_mask(label_map, by_name["person"]).sum() == 9
    assert group_mask(label_map, by_name["background"]).sum() == 3
    assert group_mask(label_map, by_name["hair"]).sum() == 2
    assert group_mask(label_map, by_name["shoes"]).tolist() == (np.isin(label_map, [9, 10])).tolist()
    assert group_mask(label_map, by_name["hat"]).sum() == 0
    other = CaptionGroup("style", "casual style", (), False)
    assert not other.has_mask and group_mask(label_map, other).sum() == 0  # c_other: no mask
    attrs = {"gender": "man", "background": "plain", "hair_exists": "yes", "hair_color": "black"}
    cap = build_caption(attrs, protocol, None, 0, group_dropout=0.0)
    masks = caption_masks(label_map, cap)
    assert masks.shape == (3, 3, 4) and masks.dtype == bool
    assert [int(m.sum()) for m in masks] == [9, 3, 2]


def test_json_roundtrip(protocol, tok):
    cap = build_caption(sample_attributes(protocol, 9), protocol, tok, 9)
    d = cap.to_json()
    assert set(d) == {"caption", "groups", "dropped", "truncated", "source"}
    assert set(d["groups"][0]) == {"name", "text", "labels", "foreground", "span"}
    assert set(d["source"]) == {"groups", "shuffle_from"}
    assert set(d["source"]["groups"][0]) == {"index", "name", "labels", "foreground", "parts", "mirrored"}
    assert Caption.from_json(d) == cap and cap.source is not None
    assert Caption.from_json(json.loads(json.dumps(d))) == cap  # what a shard's JSON holds reads back
