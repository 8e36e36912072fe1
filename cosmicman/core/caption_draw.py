"""The grouped caption record of Daring's data discretization and its random draw.

A ``Caption`` is the prompt text, its kept groups (name, text, ATR labels, token span) and what was
dropped or cut. A ``CaptionSource`` is what the draw starts from: each present group's words before
the adjective shuffle (``PhraseParts``), its labels and its index in the protocol's group list, also the
words for the horizontally mirrored image. ``datasets.captions`` builds sources from protocol answers
and stores them in a dataset version; the trainer (which imports only core and model) draws a fresh
caption from them at every sample with ``draw_caption``, the same function the dataset version used.

The draw, as in the released CosmicMan loader: adjectives within a group shuffled; groups before
``shuffle_from`` keep protocol order, the rest are shuffled; every group dropped with probability
``group_dropout``; optionally a group whose protocol index is at least ``late_group_from`` dropped
first with probability ``late_group_dropout`` (released: ``index >= 14 and random() < 0.5``);
groups joined by ``", "``; trailing groups cut while the prompt exceeds 77 tokens; each kept group's
span is where its own ids occur exactly once in the padded prompt ids (else None: no HOLA loss).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GROUP_SEPARATOR = ", "
MAX_LENGTH = 77
GROUP_DROPOUT = 0.1
LATE_GROUP_FROM = 14  # the released loader's extra drop: groups at this protocol index or later
RELEASED_LATE_GROUP_DROPOUT = 0.5


@dataclass(frozen=True)
class CaptionGroup:
    name: str
    text: str
    labels: tuple[int, ...]
    foreground: bool = False
    span: tuple[int, int] | None = None  # end-exclusive, in the padded prompt ids (BOS at 0)

    @property
    def has_mask(self) -> bool:
        return self.foreground or bool(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "labels": list(self.labels),
            "foreground": self.foreground,
            "span": list(self.span) if self.span is not None else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CaptionGroup:
        span = d.get("span")
        return cls(
            str(d["name"]),
            str(d["text"]),
            tuple(int(x) for x in d.get("labels", ())),
            bool(d.get("foreground", False)),
            (int(span[0]), int(span[1])) if span is not None else None,
        )


@dataclass(frozen=True)
class PhraseParts:
    """One group's words before the adjective shuffle; ``render`` makes its phrase."""

    adjectives: tuple[str, ...]  # worded answers, "" kept (it still takes part in the shuffle)
    noun: str
    with_parts: tuple[str, ...]  # formatted, empty ones already left out
    article: bool

    def render(self, rng: np.random.Generator) -> str:
        """[article] shuffled adjectives, noun, [with ...]. Draws one permutation when there are adjectives."""
        order: Sequence[int] = rng.permutation(len(self.adjectives)).tolist() if self.adjectives else []
        words = [self.adjectives[i] for i in order]
        if self.noun:
            words.append(self.noun)
        text = " ".join(words)
        if self.with_parts:
            joined = " and ".join(self.with_parts)
            text = f"{text} with {joined}" if text else joined
        if self.article and text:
            text = ("an " if text[0] in "aeiou" else "a ") + text
        return " ".join(text.split())

    def to_json(self) -> dict[str, Any]:
        return {
            "adjectives": list(self.adjectives),
            "noun": self.noun,
            "with": list(self.with_parts),
            "article": self.article,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PhraseParts:
        return cls(
            tuple(str(w) for w in d["adjectives"]),
            str(d["noun"]),
            tuple(str(w) for w in d["with"]),
            bool(d["article"]),
        )


@dataclass(frozen=True)
class GroupSource:
    """A present caption group as a dataset version stores it: what a per-sample draw needs."""

    index: int  # the group's index in the protocol's group list (the late-group drop counts in it)
    name: str
    labels: tuple[int, ...]
    foreground: bool
    parts: PhraseParts
    mirrored: PhraseParts | None = None  # the words for the horizontally flipped image (None: the same)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "labels": list(self.labels),
            "foreground": self.foreground,
            "parts": self.parts.to_json(),
            "mirrored": self.mirrored.to_json() if self.mirrored is not None else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupSource:
        return cls(
            int(d["index"]),
            str(d["name"]),
            tuple(int(x) for x in d["labels"]),
            bool(d["foreground"]),
            PhraseParts.from_json(d["parts"]),
            PhraseParts.from_json(d["mirrored"]) if d.get("mirrored") is not None else None,
        )


@dataclass(frozen=True)
class CaptionSource:
    """The structured caption groups of one person (protocol order) and where the group shuffle starts."""

    groups: tuple[GroupSource, ...]
    shuffle_from: int

    def to_json(self) -> dict[str, Any]:
        return {"groups": [g.to_json() for g in self.groups], "shuffle_from": self.shuffle_from}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CaptionSource:
        return cls(tuple(GroupSource.from_json(g) for g in d["groups"]), int(d["shuffle_from"]))


@dataclass(frozen=True)
class Caption:
    text: str
    groups: tuple[CaptionGroup, ...]  # kept groups, in caption order
    dropped: tuple[str, ...] = ()  # group names removed by group dropout (mask zeroed)
    truncated: tuple[str, ...] = ()  # group names cut to fit the token budget
    source: CaptionSource | None = None  # what the draw started from (kept by a dataset version)

    def to_json(self) -> dict[str, Any]:
        return {
            "caption": self.text,
            "groups": [g.to_json() for g in self.groups],
            "dropped": list(self.dropped),
            "truncated": list(self.truncated),
            "source": self.source.to_json() if self.source is not None else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Caption:
        source = d.get("source")
        return cls(
            str(d["caption"]),
            tuple(CaptionGroup.from_json(g) for g in d.get("groups", ())),
            tuple(d.get("dropped", ())),
            tuple(d.get("truncated", ())),
            CaptionSource.from_json(source) if source is not None else None,
        )


def as_rng(rng: np.random.Generator | random.Random | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


def find_unique_span(sub: Sequence[int], ids: Sequence[int]) -> tuple[int, int] | None:
    """``(s, e)`` with ``ids[s:e] == sub`` if ``sub`` occurs exactly once in ``ids``, else None."""
    n = len(sub)
    if n == 0:
        return None
    sub = list(sub)
    hits = [i for i in range(len(ids) - n + 1) if ids[i] == sub[0] and list(ids[i : i + n]) == sub]
    return (hits[0], hits[0] + n) if len(hits) == 1 else None


def draw_caption(
    source: CaptionSource,
    tokenizer=None,
    rng: np.random.Generator | random.Random | int | None = None,
    group_dropout: float = GROUP_DROPOUT,
    late_group_dropout: float = 0.0,
    late_group_from: int = LATE_GROUP_FROM,
    max_length: int = MAX_LENGTH,
    mirrored: bool = False,
) -> Caption:
    """One random caption from a source (``mirrored``: the words of the flipped image).

    Random draws, in this order: per group in protocol order, the late-group drop (only when
    ``late_group_dropout`` > 0 and its index >= ``late_group_from``) and, if it stays, one adjective
    shuffle; one shuffle of the groups from ``shuffle_from`` on; one dropout draw per kept group
    (caption order)."""
    if tokenizer is None:
        from cosmicman.core.tokenizer import load_clip_tokenizer

        tokenizer = load_clip_tokenizer()
    gen = as_rng(rng)

    rendered: list[tuple[int, CaptionGroup]] = []  # (protocol index, group without span)
    late_dropped: list[str] = []
    for g in source.groups:
        if late_group_dropout > 0 and g.index >= late_group_from and gen.random() < late_group_dropout:
            late_dropped.append(g.name)
            continue
        parts = g.mirrored if mirrored and g.mirrored is not None else g.parts
        rendered.append((g.index, CaptionGroup(g.name, parts.render(gen), g.labels, g.foreground)))

    fixed = [cg for i, cg in rendered if i < source.shuffle_from]
    rest = [cg for i, cg in rendered if i >= source.shuffle_from]
    rest = [rest[j] for j in gen.permutation(len(rest))] if rest else []
    ordered = fixed + rest

    draws = gen.random(len(ordered)) if ordered else np.zeros(0)
    kept = [cg for cg, u in zip(ordered, draws) if u >= group_dropout]
    dropped = (*late_dropped, *(cg.name for cg, u in zip(ordered, draws) if u < group_dropout))

    truncated: list[str] = []
    text = GROUP_SEPARATOR.join(cg.text for cg in kept)
    ids = list(tokenizer(text).input_ids)
    while kept and len(ids) > max_length:
        truncated.insert(0, kept.pop().name)
        text = GROUP_SEPARATOR.join(cg.text for cg in kept)
        ids = list(tokenizer(text).input_ids)
    ids += [tokenizer.pad_token_id] * (max_length - len(ids))  # == prompt_ids(text, tokenizer, max_length)

    own = [list(x[1:-1]) for x in tokenizer([cg.text for cg in kept]).input_ids] if kept else []
    groups = tuple(
        CaptionGroup(cg.name, cg.text, cg.labels, cg.foreground, find_unique_span(g_ids, ids))
        for cg, g_ids in zip(kept, own)
    )
    return Caption(text, groups, tuple(dropped), tuple(truncated))
