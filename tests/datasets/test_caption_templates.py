"""Reading ``caption_templates.yaml``: what each entry becomes, with every field's default.

``load_caption_templates`` is cached, so these tests parse the file themselves (``__wrapped__``): every
test then reads what the parser makes now, not what an earlier test left in the cache."""

from pathlib import Path

import pytest
import yaml

from cosmicman.datasets.captions import (
    DEFAULT_TEMPLATES_PATH,
    CaptionTemplates,
    GroupTemplate,
    _parse_templates,
    load_caption_templates,
)

SHIPPED_GROUPS = [
    "person", "background", "hair", "hat", "sunglasses", "top", "dress", "skirt", "pants", "belt", "shoes",
    "bag", "scarf", "position", "lighting", "face", "facial_hair", "necklace", "legs", "arms", "gloves",
]  # fmt: skip


def test_a_bare_group_takes_every_default():
    templates = _parse_templates({"groups": {"plain": {}}})
    assert templates == CaptionTemplates(
        shuffle_from=0,
        groups={"plain": GroupTemplate("plain", (), {"text": ""}, (), {}, None, False)},
    )


def test_every_field_of_a_group():
    raw = yaml.safe_load(
        """
        shuffle_from: 3
        groups:
          coat:
            article: yes
            adjectives: [coat_color, coat_length]
            noun: {category: coat_type, default: coat, words: {parka: warm parka}}
            with:
              - {category: buttons, text: "{} buttons"}
              - {category: hood, text: "a {}"}
            words:
              buttons: {yes: many, 2: two}
            when: {coat_exists: yes, layers: 2}
          hood:
            noun: hood
        """
    )
    templates = _parse_templates(raw)
    assert templates.shuffle_from == 3 and list(templates.groups) == ["coat", "hood"]
    coat = templates.groups["coat"]
    assert coat == GroupTemplate(
        name="coat",
        adjectives=("coat_color", "coat_length"),
        noun={"category": "coat_type", "default": "coat", "words": {"parka": "warm parka"}},
        with_parts=(("buttons", "{} buttons"), ("hood", "a {}")),
        words={"buttons": {"True": "many", "2": "two"}},  # YAML's unquoted yes and 2, read as text
        when={"coat_exists": "True", "layers": "2"},
        article=True,
    )
    assert isinstance(coat.adjectives, tuple) and isinstance(coat.with_parts, tuple)
    assert templates.groups["hood"].noun == {"text": "hood"}  # a plain noun is its text
    assert templates.groups["hood"].article is False and templates.groups["hood"].when is None


def test_shuffle_from_and_article_are_coerced():
    templates = _parse_templates({"shuffle_from": "4", "groups": {"n": {"noun": "x", "article": 1}}})
    assert templates.shuffle_from == 4 and templates.groups["n"].article is True


def test_the_shipped_templates():
    templates = load_caption_templates.__wrapped__(DEFAULT_TEMPLATES_PATH)
    assert templates == load_caption_templates()
    assert templates.shuffle_from == 2 and list(templates.groups) == SHIPPED_GROUPS
    g = templates.groups
    assert g["person"] == GroupTemplate(
        name="person",
        adjectives=("body_shape", "age"),
        noun={"category": "gender", "default": "person", "by": {"age": {"child": {"man": "boy", "woman": "girl"}}}},
        with_parts=(("skin_tone", "{} skin"), ("pose", "{}")),
        words={"age": {"child": "young"}},
        when=None,
        article=True,
    )
    assert g["hair"].words == {"hair_bangs": {"yes": "bangs", "no": ""}}
    assert g["sunglasses"].when == {"sunglasses_exists": "yes"} and g["sunglasses"].noun == {"text": "sunglasses"}
    assert g["legs"].noun["words"] == {"yes": "stockings", "no": "bare legs"}
    assert [name for name, t in g.items() if t.article] == ["person"]
    assert [name for name, t in g.items() if t.when is not None] == ["sunglasses", "necklace", "legs", "arms", "gloves"]


def test_a_templates_file_elsewhere(tmp_path: Path):
    path = tmp_path / "templates.yaml"
    path.write_text("shuffle_from: 1\ngroups:\n  cafe:\n    noun: café\n", encoding="utf-8")
    assert load_caption_templates.__wrapped__(path).groups["cafe"].noun == {"text": "café"}
    with pytest.raises(FileNotFoundError):
        load_caption_templates.__wrapped__(tmp_path / "missing.yaml")
