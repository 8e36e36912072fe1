"""Daring's data discretization, as released: attributes -> a grouped caption with token spans.

A person's protocol answers become one short phrase per caption group of ``protocol.yaml`` (wording in
``caption_templates.yaml``): the person phrase first (``"a slim adult woman with light skin and arms
raised"``), then one phrase per group whose object exists (``"red striped long-sleeved top"``,
``"blue long pants"``, ``"black boots"``, ``"outdoor background"``). As in the released CosmicMan loader:

- adjectives within a group are shuffled;
- groups keep protocol order up to ``shuffle_from`` (person, background); the rest are shuffled;
- every group is dropped with probability ``group_dropout`` (0.1): its text is removed and it gets no
  mask (recorded in ``Caption.dropped``);
- optionally (the released loader's ``index >= 14 and random() < 0.5``), a group whose protocol index is
  at least ``late_group_from`` is first dropped with probability ``late_group_dropout`` (also in
  ``Caption.dropped``);
- groups are joined by ``", "``; while the prompt is longer than 77 tokens (BOS and EOS included) the
  last kept group is cut (recorded in ``Caption.truncated``);
- each kept group's span ``(s, e)`` (end-exclusive, BOS at index 0) is where the group's own token ids
  (its text tokenized alone, BOS/EOS stripped) occur in the padded 77-id prompt; a span is kept only if
  the ids occur exactly once, otherwise ``None`` (the group gets no HOLA loss).

A group's mask is the union of its ATR labels in the parsing map; the person group (``foreground``)
uses every non-background label. A group without labels has an empty mask: its phrase is c_other.

The random draws need only the *caption source* (``CaptionSource``: each present group's words before
the shuffle, its labels and protocol index), which a dataset version stores beside the caption it
drew once (``Caption.source``), so training can draw a fresh caption at every sample (``draw_caption``,
in ``cosmicman.core.caption_draw`` with the caption record: the trainer imports only core and model).
The source also holds the words of the horizontally mirrored image (a viewer's "left" answer becomes
"right"), for samples the trainer flips.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cosmicman.core.caption_draw import (
    GROUP_DROPOUT,
    LATE_GROUP_FROM,
    MAX_LENGTH,
    Caption,
    CaptionSource,
    GroupSource,
    PhraseParts,
    as_rng,
    draw_caption,
)
from cosmicman.core.protocol import Protocol, load_protocol

DEFAULT_TEMPLATES_PATH = Path(__file__).with_name("caption_templates.yaml")
MIRRORED_ANSWERS = {"left": "right", "right": "left"}  # viewer's side: what a horizontal flip swaps


# ----------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class GroupTemplate:
    name: str
    adjectives: tuple[str, ...]
    noun: Mapping[str, Any]  # {"text": str} or {"category", "words", "by", "default"}
    with_parts: tuple[tuple[str, str], ...]  # (category, format text)
    words: Mapping[str, Mapping[str, str]]
    when: Mapping[str, str] | None
    article: bool

    def categories(self) -> set[str]:
        cats = set(self.adjectives) | {c for c, _ in self.with_parts}
        if "category" in self.noun:
            cats.add(self.noun["category"])
            cats.update(self.noun.get("by", {}))
        return cats


@dataclass(frozen=True)
class CaptionTemplates:
    shuffle_from: int
    groups: Mapping[str, GroupTemplate]


def _parse_templates(raw: dict) -> CaptionTemplates:
    groups = {}
    for name, g in raw["groups"].items():
        noun = g.get("noun", "")
        noun = {"text": str(noun)} if isinstance(noun, str) else dict(noun)
        words = {c: {str(k): str(v) for k, v in m.items()} for c, m in (g.get("words") or {}).items()}
        when = g.get("when")
        groups[name] = GroupTemplate(
            name=name,
            adjectives=tuple(g.get("adjectives", ())),
            noun=noun,
            with_parts=tuple((p["category"], p["text"]) for p in g.get("with", ())),
            words=words,
            when={k: str(v) for k, v in when.items()} if when is not None else None,
            article=bool(g.get("article", False)),
        )
    return CaptionTemplates(int(raw.get("shuffle_from", 0)), groups)


@cache
def load_caption_templates(path: str | Path = DEFAULT_TEMPLATES_PATH) -> CaptionTemplates:
    with open(path, encoding="utf-8") as f:
        return _parse_templates(yaml.safe_load(f))


def check_templates(protocol: Protocol, templates: CaptionTemplates) -> list[str]:
    """Problems between the templates and the protocol (empty when they agree)."""
    problems = []
    names = {c.name for c in protocol.categories}
    pgroups = {g.name: g for g in protocol.groups}
    for name in pgroups.keys() - templates.groups.keys():
        problems.append(f"protocol group {name!r} has no caption template")
    for name in templates.groups.keys() - pgroups.keys():
        problems.append(f"caption template {name!r} names no protocol group")
    for name, t in templates.groups.items():
        cats = t.categories() | set(t.when or {})
        for c in sorted(cats - names):
            problems.append(f"template {name!r} names unknown category {c!r}")
        if name in pgroups:
            for c in sorted(set(pgroups[name].categories) - cats):
                problems.append(f"template {name!r} never renders category {c!r} of its group")
    return problems


# ----------------------------------------------------------------------------------------- phrases
def _word(t: GroupTemplate, category: str, answer: str) -> str:
    return t.words.get(category, {}).get(answer, answer)


def _group_present(
    t: GroupTemplate, group_categories: Sequence[str], protocol: Protocol, attributes: Mapping[str, str]
) -> bool:
    if t.when is not None:
        return all(attributes.get(k) == v for k, v in t.when.items())
    by_name = protocol.by_name
    reqs = [dict(by_name[c].requires) for c in group_categories if c in by_name]
    # the requirements every category of the group shares (the garment's existence); a category with
    # several requirements ("hair style" needs hair and no hat) does not narrow the group's presence
    shared = dict(reqs[0]) if reqs and all(reqs) else {}
    for r in reqs[1:]:
        shared = {k: v for k, v in shared.items() if r.get(k) == v}
    if shared:  # a garment's phrase whenever it exists, even with no detail answered ("top")
        return all(attributes.get(k) == v for k, v in shared.items())
    return any(c in attributes for c in t.categories())


def _noun(t: GroupTemplate, attributes: Mapping[str, str]) -> str:
    if "text" in t.noun:
        return t.noun["text"]
    cat = t.noun["category"]
    answer = attributes.get(cat)
    if answer is None:
        return str(t.noun.get("default", ""))
    for other, table in (t.noun.get("by") or {}).items():
        override = (table or {}).get(attributes.get(other), {})
        if answer in override:
            return str(override[answer])
    return str((t.noun.get("words") or {}).get(answer, answer))


def group_parts(t: GroupTemplate, attributes: Mapping[str, str]) -> PhraseParts:
    """One group's words before the shuffle. An answer worded ``""`` says nothing: an empty adjective or
    noun is left out, and so is a with-part ("face with lipstick", but no "with" for lipstick: no)."""
    return PhraseParts(
        adjectives=tuple(_word(t, c, attributes[c]) for c in t.adjectives if c in attributes),
        noun=_noun(t, attributes),
        with_parts=tuple(p.format(w) for c, p in t.with_parts if c in attributes and (w := _word(t, c, attributes[c]))),
        article=t.article,
    )


def mirror_attributes(protocol: Protocol, attributes: Mapping[str, str]) -> dict[str, str]:
    """The answers for the horizontally flipped image: a category that answers with both a viewer's
    "left" and "right" (``MIRRORED_ANSWERS``) swaps them; every other answer stays."""
    mirrored = dict(attributes)
    for cat in protocol.categories:
        answer = attributes.get(cat.name)
        if answer in MIRRORED_ANSWERS and set(MIRRORED_ANSWERS) <= set(cat.answers):
            mirrored[cat.name] = MIRRORED_ANSWERS[answer]
    return mirrored


def _present_parts(
    protocol: Protocol, templates: CaptionTemplates, attributes: Mapping[str, str]
) -> dict[int, PhraseParts]:
    """Protocol index -> words of each group present in ``attributes`` whose phrase is not empty."""
    out = {}
    for i, g in enumerate(protocol.groups):
        t = templates.groups.get(g.name)
        if t is None or not _group_present(t, g.categories, protocol, attributes):
            continue
        parts = group_parts(t, attributes)
        if parts.render(np.random.default_rng(0)):  # emptiness does not depend on the order
            out[i] = parts
    return out


def caption_source(
    attributes: Mapping[str, str], protocol: Protocol | None = None, templates: CaptionTemplates | None = None
) -> CaptionSource:
    """The structured caption groups of one person (no random draw): each present group's words, as
    they are and for the mirrored image."""
    protocol = protocol or load_protocol()
    templates = templates or load_caption_templates()
    plain = _present_parts(protocol, templates, attributes)
    flipped = _present_parts(protocol, templates, mirror_attributes(protocol, attributes))
    if plain.keys() != flipped.keys():  # a swapped side changed which groups exist: a template bug
        raise ValueError(
            f"mirroring the answers changes the caption groups {sorted(plain)} -> {sorted(flipped)}; "
            "a group's presence must not depend on a left/right answer (see caption_templates.yaml)"
        )
    groups = []
    for i, parts in plain.items():
        g = protocol.groups[i]
        groups.append(
            GroupSource(i, g.name, tuple(g.labels), g.foreground, parts, flipped[i] if flipped[i] != parts else None)
        )
    return CaptionSource(tuple(groups), templates.shuffle_from)


# ----------------------------------------------------------------------------------------- tokens
def prompt_ids(text: str, tokenizer, max_length: int = MAX_LENGTH) -> list[int]:
    """The padded prompt ids the text encoder sees (BOS, tokens, EOS, EOS padding), ``max_length`` long."""
    return list(tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids)


def phrase_ids(text: str, tokenizer) -> list[int]:
    """A phrase's own token ids, without BOS/EOS."""
    return list(tokenizer(text).input_ids[1:-1])


def n_tokens(text: str, tokenizer) -> int:
    """Token count incl. BOS/EOS, untruncated."""
    return len(tokenizer(text).input_ids)


# ----------------------------------------------------------------------------------------- captions
def build_caption(
    attributes: Mapping[str, str],
    protocol: Protocol | None = None,
    tokenizer=None,
    rng: np.random.Generator | random.Random | int | None = None,
    group_dropout: float = GROUP_DROPOUT,
    max_length: int = MAX_LENGTH,
    templates: CaptionTemplates | None = None,
    late_group_dropout: float = 0.0,
    late_group_from: int = LATE_GROUP_FROM,
) -> Caption:
    """The grouped caption of one person, deterministic given ``rng`` (a Generator or a seed), with its
    source kept (``Caption.source``) for draws at training time. The draws are ``draw_caption``'s."""
    source = caption_source(attributes, protocol, templates)
    cap = draw_caption(source, tokenizer, rng, group_dropout, late_group_dropout, late_group_from, max_length)
    return dataclasses.replace(cap, source=source)


def group_mask(label_map: np.ndarray, group: Any) -> np.ndarray:
    """Boolean mask of a group (CaptionGroup or protocol Group): union of its ATR labels, or the whole
    foreground (every non-zero label) for a ``foreground`` group."""
    label_map = np.asarray(label_map)
    if getattr(group, "foreground", False):
        return label_map != 0
    labels = list(getattr(group, "labels", ()) or ())
    if not labels:
        return np.zeros(label_map.shape, dtype=bool)
    return np.isin(label_map, labels)


def caption_masks(label_map: np.ndarray, caption: Caption) -> np.ndarray:
    """``[n_groups, H, W]`` boolean masks of the caption's kept groups, in caption order."""
    label_map = np.asarray(label_map)
    if not caption.groups:
        return np.zeros((0, *label_map.shape), dtype=bool)
    return np.stack([group_mask(label_map, g) for g in caption.groups])


def sample_attributes(
    protocol: Protocol | None = None, rng: np.random.Generator | random.Random | int | None = None, p_skip: float = 0.0
) -> dict[str, str]:
    """A random, protocol-valid answer set (answers only where ``requires`` holds). For tests and demos;
    ``p_skip`` leaves an applicable category unanswered with that probability (partial annotations)."""
    protocol = protocol or load_protocol()
    gen = as_rng(rng)
    attrs: dict[str, str] = {}
    for cat in protocol.categories:  # protocol order puts a category after what it requires
        if cat.applies(attrs) and not (p_skip and gen.random() < p_skip):
            attrs[cat.name] = cat.answers[int(gen.integers(len(cat.answers)))]
    return attrs
