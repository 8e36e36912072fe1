"""DSG-style yes/no questions from a test prompt's protocol attributes, with their dependency graph.

Davidsonian Scene Graph (Cho et al., 2024) turns a prompt into atomic yes/no questions whose parents
must hold for the child to be asked: "Is there a person?" -> "Is the person wearing a top?" -> "Is the
top red?". Here the prompt is a person described by the label protocol (``cosmicman/core/protocol.yaml``):

* one root question, "Is there a person in the image?" (expected yes, tag ``obj``: the person is the
  prompt's first object);
* one question per attribute of the prompt, asserting the prompt's value: a yes/no category (existence,
  lipstick, bangs) asks the protocol's own question and expects the prompt's answer ("Is the person
  wearing a hat?" expects no for ``hat_exists: no``); every other category asks whether the prompt's value
  holds ("Is the top red?") and expects yes;
* a category's parents are the questions of the categories it ``requires`` (``hair_style`` needs
  ``hair_exists: yes`` and ``hat_exists: no``), or the root when it requires none. A required category the
  prompt leaves out is asked too, with the value the requirement names (``implied``): DSG always asks
  for the entity before its attributes.

Each question carries its protocol category's tag (obj / tex / shape / global), which splits the score
into Acc_obj / Acc_tex / Acc_shape; Acc_all counts every question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cosmicman.core.protocol import Protocol, Tag, load_protocol

ROOT_ID = "person"
ROOT_TEXT = "Is there a person in the image?"
YES, NO = "yes", "no"

# "Is the <subject> <value>?" for the garment and accessory colour / pattern / shape categories.
_SUBJECT = {
    "hair_color": "the hair",
    "hair_length": "the hair",
    "hat_color": "the hat",
    "hat_pattern": "the hat",
    "top_color": "the top",
    "top_pattern": "the top",
    "top_fit": "the top",
    "dress_color": "the dress",
    "dress_pattern": "the dress",
    "skirt_color": "the skirt",
    "skirt_pattern": "the skirt",
    "skirt_shape": "the skirt",
    "pants_color": "the pants",
    "pants_pattern": "the pants",
    "belt_color": "the belt",
    "belt_width": "the belt",
    "shoes_color": "the shoes",
    "stockings_color": "the stockings",
    "gloves_color": "the gloves",
    "bag_color": "the bag",
    "bag_pattern": "the bag",
    "bag_size": "the bag",
    "scarf_color": "the scarf",
    "scarf_pattern": "the scarf",
    "sunglasses_color": "the sunglasses' lenses",
    "sunglasses_shape": "the sunglasses' lenses",
    "background_color": "the background",
}
# The plural subjects take "Are".
_PLURAL = {"pants_color", "pants_pattern", "shoes_color", "stockings_color", "gloves_color", "sunglasses_color"}
_PLURAL |= {"sunglasses_shape"}
# How a pattern value reads after "Is the top ...".
_PATTERN_WORDS = {"solid": "a solid colour", "striped": "striped", "dotted": "dotted", "plaid": "plaid"}
# Every other category: one template with ``{value}`` (the value's words, or its entry in _VALUE_WORDS).
_TEMPLATES = {
    "gender": "Is the person a {value}?",
    "age": "Is the person {value}?",
    "body_shape": "Does the person have {value} build?",
    "skin_tone": "Does the person have {value} skin?",
    "pose": "{value}",
    "background": "Is the background {value}?",
    "lighting": "Is the picture {value}?",
    "person_position": "{value}",
    "hat_type": "Is the hat {value}?",
    "hair_style": "Is the hair {value}?",
    "expression": "Is the person's expression {value}?",
    "facial_hair": "{value}",
    "sleeve_length": "Does the top have {value}?",
    "top_length": "Is the top {value}?",
    "dress_length": "Is the dress {value}?",
    "dress_sleeve": "Does the dress have {value}?",
    "dress_fit": "Is the dress {value}?",
    "skirt_length": "Is the skirt {value}?",
    "pants_length": "Are the pants {value}?",
    "pants_fit": "Are the pants {value}?",
    "shoes_type": "Are the shoes {value}?",
    "shoes_sole": "Are the soles of the shoes {value}?",
    "bag_type": "Is the bag {value}?",
    "scarf_length": "Is the scarf {value}?",
    "neckline": "Does the top have {value}?",
}
_VALUE_WORDS: dict[str, dict[str, str]] = {
    "age": {"child": "a child", "adult": "an adult", "elderly": "elderly"},
    "pose": {
        "arms down": "Are the person's arms down by their sides?",
        "arms raised": "Are the person's arms raised?",
        "hands on hips": "Are the person's hands on their hips?",
    },
    "background": {"plain": "a plain backdrop", "indoor": "indoors", "outdoor": "outdoors"},
    "lighting": {"bright": "brightly lit", "dim": "dimly lit"},
    "person_position": {
        "left": "Does the person stand on the left of the picture?",
        "center": "Does the person stand in the center of the picture?",
        "right": "Does the person stand on the right of the picture?",
    },
    "hat_type": {"cap": "a cap", "beanie": "a beanie", "wide brim": "a wide-brimmed hat"},
    "hair_style": {"loose": "worn loose", "bun": "worn in a bun"},
    "facial_hair": {
        "none": "Is the man clean-shaven?",
        "beard": "Does the man have a beard?",
        "mustache": "Does the man have a mustache?",
    },
    "sleeve_length": {"sleeveless": "no sleeves", "short": "short sleeves", "long": "long sleeves"},
    "dress_sleeve": {"sleeveless": "no sleeves", "short": "short sleeves", "long": "long sleeves"},
    "top_fit": {"tight": "tight", "loose": "loose"},
    "top_length": {"cropped": "cropped, showing the waist", "regular": "of regular length"},
    "dress_length": {"short": "short", "knee": "knee-length", "long": "long"},
    "skirt_length": {"mini": "a mini skirt", "knee": "knee-length", "long": "long"},
    "pants_length": {"shorts": "shorts", "cropped": "cropped", "long": "full length"},
    "pants_fit": {"skinny": "skinny", "regular": "of regular width", "wide": "wide-legged"},
    "shoes_type": {"sneakers": "sneakers", "boots": "boots"},
    "bag_type": {"handbag": "a handbag", "shoulder bag": "a shoulder bag"},
    "scarf_length": {"short": "short", "long": "long, hanging far down"},
    "neckline": {"round": "a round neckline", "v-neck": "a v-neck"},
    "hair_length": {"short": "short", "medium": "medium length", "long": "long"},
    "belt_width": {"thin": "thin", "wide": "wide"},
    "bag_size": {"small": "small", "large": "large"},
}


@dataclass(frozen=True)
class Question:
    """One yes/no question. ``category`` / ``value``: the protocol category and the value the prompt
    asserts (None for the root); ``expected``: the answer an image faithful to the prompt gives;
    ``parents``: ids of the questions that must be answered as expected for this one to count;
    ``implied``: asked because a child requires it, not named by the prompt itself."""

    id: str
    text: str
    tag: Tag
    expected: str
    parents: tuple[str, ...]
    category: str | None = None
    value: str | None = None
    implied: bool = False


def question_text(protocol: Protocol, category: str, value: str) -> tuple[str, str]:
    """(text, expected answer) of the yes/no question asserting ``category = value``."""
    cat = protocol.by_name[category]
    if cat.answers == (YES, NO):
        return cat.question, value
    if category in _TEMPLATES:
        words = _VALUE_WORDS.get(category, {}).get(value, value)
        return _TEMPLATES[category].format(value=words), YES
    if category in _SUBJECT:
        verb = "Are" if category in _PLURAL else "Is"
        words = _PATTERN_WORDS.get(value, value) if category.endswith("_pattern") else value
        return f"{verb} {_SUBJECT[category]} {words}?", YES
    raise ValueError(f"no yes/no wording for category {category!r}: add it to cosmicman/evaluation/questions.py")


def check_prompt(protocol: Protocol, attributes: Mapping[str, str]) -> None:
    """Raise ValueError (one line) unless every attribute is a protocol category with a value in its
    vocabulary and no two attributes contradict a requirement."""
    by_name = protocol.by_name
    for name, value in attributes.items():
        cat = by_name.get(name)
        if cat is None:
            raise ValueError(f"unknown attribute {name!r}: the protocol's categories are {sorted(by_name)}")
        if value not in cat.answers:
            raise ValueError(f"{name}={value!r} is not in its vocabulary {list(cat.answers)}")
        for parent, needed in cat.requires.items():
            if parent in attributes and attributes[parent] != needed:
                raise ValueError(
                    f"{name}={value!r} requires {parent}={needed!r}, the prompt says {attributes[parent]!r}"
                )


def prompt_questions(attributes: Mapping[str, str], protocol: Protocol | None = None) -> list[Question]:
    """The DSG questions of one test prompt, root first, then in protocol order (parents before children)."""
    protocol = protocol or load_protocol()
    check_prompt(protocol, attributes)
    values = dict(attributes)
    implied: set[str] = set()
    for cat in protocol.with_parents(attributes):
        if cat.name not in values:
            # a requirement the prompt left out: the value its children need (check_prompt ruled out conflicts)
            needed = {c.requires[cat.name] for c in protocol.categories if c.name in values and cat.name in c.requires}
            if len(needed) != 1:
                raise ValueError(f"the prompt's attributes require {cat.name} to be each of {sorted(needed)}")
            values[cat.name] = needed.pop()
            implied.add(cat.name)
    out = [Question(ROOT_ID, ROOT_TEXT, "obj", YES, ())]
    for cat in protocol.categories:
        if cat.name not in values:
            continue
        text, expected = question_text(protocol, cat.name, values[cat.name])
        parents = tuple(cat.requires) or (ROOT_ID,)
        out.append(
            Question(cat.name, text, cat.tag, expected, parents, cat.name, values[cat.name], cat.name in implied)
        )
    return out


def prompt_set_questions(
    prompts: Sequence[Mapping[str, str]], protocol: Protocol | None = None
) -> list[list[Question]]:
    """:func:`prompt_questions` of every prompt; an error names the prompt's index."""
    protocol = protocol or load_protocol()
    out = []
    for i, attributes in enumerate(prompts):
        try:
            out.append(prompt_questions(attributes, protocol))
        except ValueError as exc:
            raise ValueError(f"test prompt {i}: {exc}") from None
    return out
