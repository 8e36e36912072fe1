"""A ten-category protocol for the annotation rule tests: every shape of ``requires`` the rules read.

Its names are not in the real protocol, so a rule that ignored the protocol it was given and loaded the
default one would fail on the first lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cosmicman.core.protocol import Category, Protocol


def _cat(name: str, answers: Sequence[str], requires: Mapping[str, str] | None = None) -> Category:
    return Category(name, "global", "global", tuple(answers), f"{name}?", dict(requires or {}))


TINY = Protocol(
    1,
    ("Hat",),
    (
        _cat("mood", ["calm", "angry"]),
        _cat("cap_on", ["yes", "no"]),
        _cat("cap_tint", ["red", "blue"], {"cap_on": "yes"}),  # a yes/no parent, required "yes"
        _cat("cap_kind", ["flat", "round"], {"cap_on": "yes"}),
        _cat("bare_reason", ["heat", "style"], {"cap_on": "no"}),  # a yes/no parent, required "no"
        _cat("scene", ["plain", "busy"]),
        _cat("scene_tint", ["white", "gray"], {"scene": "plain"}),  # a parent that is not yes/no
        _cat("glasses", ["yes", "no", "unsure"]),
        _cat("lens_tint", ["dark", "clear"], {"glasses": "yes"}),  # "yes" of a parent with three answers
        _cat("fringe", ["yes", "no"], {"mood": "calm", "cap_on": "no"}),  # two parents
    ),
    (),
)
