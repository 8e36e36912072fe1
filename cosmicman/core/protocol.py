"""The labelling protocol: ATR parts, categories with answer vocabularies, hierarchy and caption groups.

The protocol lives in ``protocol.yaml``; this module only loads and checks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import yaml

Tag = Literal["obj", "tex", "shape", "global"]
DEFAULT_PROTOCOL_PATH = Path(__file__).with_name("protocol.yaml")


@dataclass(frozen=True)
class Category:
    name: str
    part: str
    tag: Tag
    answers: tuple[str, ...]
    question: str
    requires: Mapping[str, str] = field(default_factory=dict)

    def applies(self, attributes: Mapping[str, str]) -> bool:
        """Whether this question is asked for a person with these (possibly partial) answers."""
        return all(attributes.get(k) == v for k, v in self.requires.items())


@dataclass(frozen=True)
class Group:
    name: str
    categories: tuple[str, ...]
    labels: tuple[int, ...]
    foreground: bool = False


@dataclass(frozen=True)
class Protocol:
    version: int
    parts: tuple[str, ...]
    categories: tuple[Category, ...]
    groups: tuple[Group, ...]

    @property
    def by_name(self) -> dict[str, Category]:
        return {c.name: c for c in self.categories}

    def with_parents(self, names: Iterable[str]) -> list[Category]:
        """The named categories and every category they require, in protocol order (parents first)."""
        by_name = self.by_name
        need: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in by_name:
                raise KeyError(f"unknown category {name!r}")
            if name not in need:
                need.add(name)
                stack.extend(by_name[name].requires)
        return [c for c in self.categories if c.name in need]

    def applicable(self, attributes: Mapping[str, str]) -> list[Category]:
        return [c for c in self.categories if c.applies(attributes)]

    def validate_answers(self, attributes: Mapping[str, str]) -> None:
        """Raise ValueError unless ``attributes`` answers exactly the applicable categories, in vocabulary."""
        by_name = self.by_name
        unknown = set(attributes) - set(by_name)
        if unknown:
            raise ValueError(f"unknown categories: {sorted(unknown)}")
        for cat in self.applicable(attributes):
            value = attributes.get(cat.name)
            if value is None:
                raise ValueError(f"missing answer for applicable category {cat.name!r}")
            if value not in cat.answers:
                raise ValueError(f"{cat.name}={value!r} is not in its vocabulary {cat.answers}")
        for name in attributes:
            if not by_name[name].applies(attributes):
                raise ValueError(f"{name!r} answered although its requirement {by_name[name].requires} fails")


def _parse(raw: dict) -> Protocol:
    vocabularies: dict[str, list] = raw.get("vocabularies", {})
    parts = tuple(raw["parts"])
    cats: list[Category] = []
    for c in raw["categories"]:
        answers = c["answers"]
        if isinstance(answers, str):
            if answers not in vocabularies:
                raise ValueError(f"category {c['name']!r} names unknown vocabulary {answers!r}")
            answers = vocabularies[answers]
        answers = tuple(str(a) for a in answers)
        if any(a in ("True", "False") for a in answers):
            raise ValueError(f"category {c['name']!r}: YAML turned yes/no into booleans; quote them")
        if c["part"] != "global" and c["part"] not in parts:
            raise ValueError(f"category {c['name']!r} names unknown part {c['part']!r}")
        if c["tag"] not in ("obj", "tex", "shape", "global"):
            raise ValueError(f"category {c['name']!r} has unknown tag {c['tag']!r}")
        cats.append(
            Category(
                c["name"],
                c["part"],
                c["tag"],
                answers,
                c["question"],
                {k: str(v) for k, v in (c.get("requires") or {}).items()},
            )
        )
    names = {c.name for c in cats}
    if len(names) != len(cats):
        raise ValueError("duplicate category names")
    for cat in cats:
        for dep, value in cat.requires.items():
            if dep not in names:
                raise ValueError(f"{cat.name!r} requires unknown category {dep!r}")
            if value not in next(c for c in cats if c.name == dep).answers:
                raise ValueError(f"{cat.name!r} requires {dep}={value!r}, not an answer of {dep!r}")
    groups = []
    for g in raw["groups"]:
        missing = set(g["categories"]) - names
        if missing:
            raise ValueError(f"group {g['name']!r} names unknown categories {sorted(missing)}")
        labels = tuple(int(x) for x in g.get("labels", ()))
        if any(not 0 <= x < len(parts) for x in labels):
            raise ValueError(f"group {g['name']!r} has a label outside 0..{len(parts) - 1}")
        groups.append(Group(g["name"], tuple(g["categories"]), labels, bool(g.get("foreground", False))))
    return Protocol(int(raw["version"]), parts, tuple(cats), tuple(groups))


@cache
def load_protocol(path: str | Path = DEFAULT_PROTOCOL_PATH) -> Protocol:
    with open(path, encoding="utf-8") as f:
        return _parse(yaml.safe_load(f))
