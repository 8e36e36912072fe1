"""The caption rules on a toy protocol: which groups appear, mirroring, template checks, prompt ids,
group masks and the random answer sets. Each rule's edge is pinned on a protocol small enough to read."""

from types import SimpleNamespace

import numpy as np
import pytest

from cosmicman.core.caption_draw import Caption, PhraseParts
from cosmicman.core.protocol import Category, Group, Protocol, load_protocol
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.datasets.captions import (
    CaptionTemplates,
    GroupTemplate,
    _parse_templates,
    build_caption,
    caption_masks,
    caption_source,
    check_templates,
    group_mask,
    group_parts,
    load_caption_templates,
    mirror_attributes,
    prompt_ids,
    sample_attributes,
)

BOS, EOS = 49406, 49407  # CLIP's; EOS also pads


def _cat(name: str, answers: tuple[str, ...], **requires: str) -> Category:
    return Category(name, "global", "global", answers, f"{name}?", requires)


TOY = Protocol(
    version=1,
    parts=("background", "hand"),
    categories=(
        _cat("side", ("left", "center", "right")),
        _cat("hand", ("left", "right")),  # exactly the two mirrored answers
        _cat("lean", ("left", "up")),  # "left" without "right": not a viewer's side
        _cat("cap_exists", ("yes", "no")),
        _cat("cap_color", ("red", "blue"), cap_exists="yes"),
        _cat("glove_exists", ("yes", "no")),
        _cat("glove_color", ("green", "black"), glove_exists="yes"),
    ),
    groups=(
        Group("place", ("side", "lean"), (), foreground=True),
        Group("wave", ("hand",), (1,)),
        Group("gear", ("cap_color", "glove_color"), (1,)),
        Group("sky", (), (0,)),
    ),
)
TOY_TEMPLATES = _parse_templates(
    {
        "shuffle_from": 4,  # no group shuffle: the order is the protocol's
        "groups": {
            "place": {"adjectives": ["lean"], "noun": {"category": "side", "words": {"center": "centered"}}},
            "wave": {"noun": {"category": "hand", "words": {"left": "left hand up", "right": "right hand up"}}},
            "gear": {"adjectives": ["cap_color", "glove_color"], "noun": "gear"},
            "sky": {"noun": "sky"},
        },
    }
)


def _names(attrs: dict[str, str], templates: CaptionTemplates = TOY_TEMPLATES) -> list[str]:
    return [g.name for g in caption_source(attrs, TOY, templates).groups]


# ------------------------------------------------------------------------------------------ presence
def test_a_group_whose_categories_need_different_things_appears_only_when_answered():
    # cap_color needs a cap, glove_color a glove: no shared requirement, so a cap alone says nothing
    assert _names({"cap_exists": "yes", "glove_exists": "no"}) == []
    assert _names({"cap_exists": "yes", "cap_color": "red"}) == ["gear"]
    assert _names({"glove_exists": "yes", "glove_color": "black"}) == ["gear"]


def test_a_group_without_categories_never_appears():
    assert "sky" not in _names({"side": "left", "hand": "left", "cap_exists": "no"})


def test_a_when_group_follows_its_answers_only():
    templates = _parse_templates(
        {"shuffle_from": 4, "groups": {**_raw_groups(), "gear": {"noun": "gear", "when": {"cap_exists": "yes"}}}}
    )
    assert _names({"cap_exists": "yes"}, templates) == ["gear"]
    assert _names({"cap_exists": "no", "cap_color": "red"}, templates) == []


def _raw_groups() -> dict:
    return {"place": {"noun": {"category": "side"}}, "wave": {"noun": {"category": "hand"}}, "sky": {"noun": "sky"}}


# ------------------------------------------------------------------------------------------ mirroring
def test_only_a_category_with_both_viewer_sides_is_mirrored():
    attrs = {"side": "left", "hand": "right", "lean": "left", "cap_exists": "no"}
    assert mirror_attributes(TOY, attrs) == {"side": "right", "hand": "left", "lean": "left", "cap_exists": "no"}
    assert mirror_attributes(TOY, {"side": "center"}) == {"side": "center"}
    assert attrs["side"] == "left"  # the answers passed in stay as they were


def test_the_source_keeps_the_mirrored_words_only_where_they_differ():
    source = caption_source({"side": "center", "hand": "left", "lean": "up"}, TOY, TOY_TEMPLATES)
    assert source.shuffle_from == 4
    place, wave = source.groups
    assert (place.index, place.name, place.labels, place.foreground) == (0, "place", (), True)
    assert place.parts == PhraseParts(("up",), "centered", (), False) and place.mirrored is None
    assert (wave.index, wave.name, wave.labels, wave.foreground) == (1, "wave", (1,), False)
    assert wave.parts.noun == "left hand up" and wave.mirrored == PhraseParts((), "right hand up", (), False)


def test_a_group_that_exists_on_one_side_only_is_a_template_error():
    templates = _parse_templates(
        {"groups": {**_raw_groups(), "gear": {"noun": "left gear", "when": {"hand": "left"}}}, "shuffle_from": 4}
    )
    with pytest.raises(
        ValueError,
        match=r"mirroring the answers changes the caption groups \[1, 2\] -> \[1\]; a group's presence must not "
        r"depend on a left/right answer \(see caption_templates.yaml\)",
    ):
        caption_source({"hand": "left"}, TOY, templates)


def test_the_shipped_protocol_and_templates_are_the_defaults():
    protocol = load_protocol()
    attrs = sample_attributes(protocol, 5)
    assert caption_source(attrs) == caption_source(attrs, protocol, load_caption_templates())
    assert sample_attributes(rng=5) == attrs


# ------------------------------------------------------------------------------------------ templates
def test_template_categories_include_the_noun_and_its_overrides():
    t = GroupTemplate(
        "person",
        ("age",),
        {"category": "gender", "by": {"mood": {}, "age": {}}},
        (("pose", "{}"),),
        {},
        None,
        False,
    )
    assert t.categories() == {"age", "gender", "mood", "pose"}
    plain = GroupTemplate("sky", (), {"text": "sky"}, (), {}, None, False)
    assert plain.categories() == set()


def test_check_templates_names_every_mismatch():
    templates = _parse_templates(
        {
            "groups": {
                "place": {"adjectives": ["lean", "zzz"], "noun": {"category": "side", "by": {"yyy": {}}}},
                "wave": {"noun": {"category": "hand"}},
                "cape": {"noun": "cape", "when": {"www": "yes"}},
                "sky": {"noun": "sky"},
            }
        }
    )
    assert check_templates(TOY, templates) == [
        "protocol group 'gear' has no caption template",
        "caption template 'cape' names no protocol group",
        "template 'place' names unknown category 'yyy'",
        "template 'place' names unknown category 'zzz'",
        "template 'cape' names unknown category 'www'",
    ]
    no_lean = _parse_templates({"groups": {**_raw_groups(), "gear": {"adjectives": ["cap_color"], "noun": "gear"}}})
    assert check_templates(TOY, no_lean) == [
        "template 'place' never renders category 'lean' of its group",
        "template 'gear' never renders category 'glove_color' of its group",
    ]
    assert check_templates(TOY, TOY_TEMPLATES) == []


def test_a_group_phrase_shuffles_with_the_given_generator():
    parts = group_parts(
        TOY_TEMPLATES.groups["gear"],
        {"cap_exists": "yes", "cap_color": "red", "glove_exists": "yes", "glove_color": "black"},
    )
    texts = {parts.render(np.random.default_rng(seed)) for seed in range(20)}
    assert texts == {"red black gear", "black red gear"}
    assert parts.render(np.random.default_rng(3)) == parts.render(np.random.default_rng(3))


# ------------------------------------------------------------------------------------------ captions
@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def test_build_caption_reads_the_given_protocol_and_tokenizer(tok):
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return tok(*args, **kwargs)

    counting.pad_token_id = tok.pad_token_id
    attrs = {"side": "center", "hand": "left"}
    cap = build_caption(attrs, TOY, counting, 0, group_dropout=0.0, templates=TOY_TEMPLATES)
    assert cap.text == "centered, left hand up" and calls
    assert [g.span for g in cap.groups] == [(1, 2), (3, 6)]
    twice = build_caption(dict(attrs, side="left"), TOY, tok, 0, group_dropout=0.0, templates=TOY_TEMPLATES)
    assert [g.span for g in twice.groups] == [None, (3, 6)]  # "left" occurs twice: no span


@pytest.mark.parametrize("late_from,dropped", [(1, ("wave", "gear")), (2, ("gear",)), (3, ())])
def test_late_groups_drop_from_their_protocol_index(tok, late_from, dropped):
    attrs = {"side": "left", "hand": "left", "cap_exists": "yes", "cap_color": "red"}
    cap = build_caption(
        attrs,
        TOY,
        tok,
        0,
        group_dropout=0.0,
        templates=TOY_TEMPLATES,
        late_group_dropout=1.0,
        late_group_from=late_from,
    )
    assert cap.dropped == dropped
    assert [g.name for g in cap.groups] == [n for n in ("place", "wave", "gear") if n not in dropped]


def test_prompt_ids_pad_and_cut_to_the_length(tok):
    assert prompt_ids("red top", tok, 6) == [BOS, 736, 1253, EOS, EOS, EOS]
    assert prompt_ids("a red striped long top with blue sleeves", tok, 6) == [BOS, 320, 736, 22192, 1538, EOS]
    assert prompt_ids("red top", tok) == [BOS, 736, 1253] + [EOS] * 74


# ------------------------------------------------------------------------------------------ masks
def test_group_mask_of_plain_objects():
    label_map = np.array([[0, 1, 2], [2, 0, 1]])
    assert group_mask(label_map, SimpleNamespace(labels=(2,))).tolist() == [[False, False, True], [True, False, False]]
    empty = group_mask(label_map, SimpleNamespace())  # neither labels nor foreground: no mask
    assert empty.dtype == bool and empty.shape == (2, 3) and not empty.any()
    assert group_mask(label_map, SimpleNamespace(labels=None, foreground=True)).sum() == 4


def test_caption_masks_of_a_caption_without_groups():
    masks = caption_masks(np.zeros((3, 4), np.uint8), Caption("", (), ("person",), ()))
    assert masks.shape == (0, 3, 4) and masks.dtype == bool


# ------------------------------------------------------------------------------------------ answer sets
def test_sample_attributes_skips_with_the_given_probability():
    assert sample_attributes(TOY, 0, p_skip=1.0) == {}
    assert sample_attributes(TOY, 3) == sample_attributes(TOY, np.random.default_rng(3))
    protocol = load_protocol()
    rng = np.random.default_rng(0)
    full = [len(sample_attributes(protocol, rng)) for _ in range(200)]
    half = [len(sample_attributes(protocol, rng, p_skip=0.5)) for _ in range(200)]
    assert 0 < np.mean(half) < 0.75 * np.mean(full)
