"""Random protocol answers for one person, consistent with each other and with what the renderer can draw."""

from __future__ import annotations

import numpy as np

from cosmicman.core.protocol import Protocol
from cosmicman.simulation.palette import BACKDROPS


def random_attributes(protocol: Protocol, rng: np.random.Generator) -> dict[str, str]:
    """A consistent answer set, answered exactly where the protocol's ``requires`` hold.

    Exactly one of top / dress; with a top exactly one of skirt / pants. Derived answers follow what
    is drawn: ``legs_exposed`` from the lower garment's length (shorts, cropped pants, mini / knee
    skirts, short / knee dresses leave the shins bare), ``arms_exposed`` from the sleeves. A bun is
    worn up, so its visible length is short or medium; children have no facial hair.
    """

    def pick(options, p=None):
        return str(options[rng.choice(len(options), p=p)])

    colors = protocol.by_name["top_color"].answers
    patterns = protocol.by_name["top_pattern"].answers
    pattern_p = (0.55, 0.15, 0.15, 0.15)
    a: dict[str, str] = {}
    a["gender"] = pick(("man", "woman"))
    a["age"] = pick(("child", "adult", "elderly"), (0.2, 0.6, 0.2))
    a["body_shape"] = pick(("slim", "average", "heavy"))
    a["skin_tone"] = pick(("light", "medium", "dark"))
    a["pose"] = pick(("arms down", "arms raised", "hands on hips"), (0.5, 0.25, 0.25))
    a["background"] = pick(("plain", "indoor", "outdoor"))
    if a["background"] == "plain":
        a["background_color"] = pick(tuple(BACKDROPS))
    a["lighting"] = pick(("bright", "dim"), (0.75, 0.25))
    a["person_position"] = pick(("left", "center", "right"), (0.25, 0.5, 0.25))
    woman, child = a["gender"] == "woman", a["age"] == "child"
    a["hair_exists"] = pick(("yes", "no"), (0.9, 0.1))
    hat = rng.random() < 0.3
    if a["hair_exists"] == "yes":
        a["hair_color"] = pick(("black", "brown", "blonde", "red", "gray"), (0.3, 0.3, 0.2, 0.1, 0.1))
        bun = (not hat) and rng.random() < (0.3 if woman else 0.06)
        if bun:
            a["hair_length"] = pick(("short", "medium"), (0.6, 0.4))
        else:
            a["hair_length"] = pick(("short", "medium", "long"), (0.45, 0.25, 0.3) if woman else (0.7, 0.2, 0.1))
    a["hat_exists"] = "yes" if hat else "no"
    if hat:
        a["hat_color"] = pick(colors)
        a["hat_type"] = pick(("cap", "beanie", "wide brim"))
        a["hat_pattern"] = pick(patterns, pattern_p)
    elif a["hair_exists"] == "yes":  # the forehead and the crown show
        a["hair_bangs"] = pick(("yes", "no"), (0.35, 0.65) if woman else (0.15, 0.85))
        a["hair_style"] = "bun" if bun else "loose"
    a["sunglasses_exists"] = pick(("yes", "no"), (0.2, 0.8))
    if a["sunglasses_exists"] == "yes":
        a["sunglasses_color"] = pick(("black", "brown", "blue"), (0.5, 0.25, 0.25))
        a["sunglasses_shape"] = pick(("round", "square"))
    a["expression"] = pick(("smiling", "neutral"), (0.45, 0.55))
    p_lip = (0.08 if child else 0.55) if woman else 0.03
    a["lipstick"] = pick(("yes", "no"), (p_lip, 1 - p_lip))
    if not woman:
        a["facial_hair"] = "none" if child else pick(("none", "beard", "mustache"), (0.62, 0.22, 0.16))
    dress = rng.random() < (0.35 if woman else 0.04)
    a["top_exists"] = "no" if dress else "yes"
    if not dress:
        a["top_color"], a["top_pattern"] = pick(colors), pick(patterns, pattern_p)
        a["sleeve_length"] = pick(("sleeveless", "short", "long"))
        a["top_fit"] = pick(("tight", "loose"), (0.55, 0.45))
        a["top_length"] = pick(("cropped", "regular"), (0.25, 0.75) if woman else (0.05, 0.95))
    a["dress_exists"] = "yes" if dress else "no"
    if dress:
        a["dress_color"], a["dress_pattern"] = pick(colors), pick(patterns, pattern_p)
        a["dress_length"] = pick(("short", "knee", "long"))
        a["dress_sleeve"] = pick(("sleeveless", "short", "long"), (0.4, 0.35, 0.25))
        a["dress_fit"] = pick(("fitted", "flared"), (0.45, 0.55))
    skirt = (not dress) and rng.random() < (0.35 if woman else 0.04)
    a["skirt_exists"] = "yes" if skirt else "no"
    if skirt:
        a["skirt_color"], a["skirt_pattern"] = pick(colors), pick(patterns, pattern_p)
        a["skirt_length"] = pick(("mini", "knee", "long"))
        a["skirt_shape"] = pick(("straight", "flared"))
    a["pants_exists"] = "yes" if not (dress or skirt) else "no"
    if a["pants_exists"] == "yes":
        a["pants_color"], a["pants_pattern"] = pick(colors), pick(patterns, (0.7, 0.1, 0.1, 0.1))
        a["pants_length"] = pick(("shorts", "cropped", "long"))
        a["pants_fit"] = pick(("skinny", "regular", "wide"), (0.25, 0.5, 0.25))
    a["belt_exists"] = pick(("yes", "no"), (0.3, 0.7))
    if a["belt_exists"] == "yes":
        a["belt_color"] = pick(colors)
        a["belt_width"] = pick(("thin", "wide"), (0.6, 0.4))
    a["shoes_exists"] = pick(("yes", "no"), (0.9, 0.1))
    if a["shoes_exists"] == "yes":
        a["shoes_color"] = pick(colors)
        a["shoes_type"] = pick(("sneakers", "boots"))
        a["shoes_sole"] = pick(("light", "dark"), (0.55, 0.45))
    long_lower = a.get("pants_length") == "long" or a.get("skirt_length") == "long" or a.get("dress_length") == "long"
    a["legs_exposed"] = "no" if long_lower else "yes"
    if a["legs_exposed"] == "yes":
        p_st = (0.4 if (dress or skirt) else 0.1) if woman else 0.02
        a["stockings_exists"] = pick(("yes", "no"), (p_st, 1 - p_st))
        if a["stockings_exists"] == "yes":
            a["stockings_color"] = pick(("black", "white", "red"), (0.5, 0.25, 0.25))
    sleeves = a.get("sleeve_length", a.get("dress_sleeve"))
    a["arms_exposed"] = "no" if sleeves == "long" else "yes"
    a["gloves_exists"] = pick(("yes", "no"), (0.15, 0.85))
    if a["gloves_exists"] == "yes":
        a["gloves_color"] = pick(protocol.by_name["gloves_color"].answers)
    a["bag_exists"] = pick(("yes", "no"), (0.3, 0.7))
    if a["bag_exists"] == "yes":
        a["bag_color"] = pick(colors)
        a["bag_type"] = pick(("handbag", "shoulder bag"))
        a["bag_pattern"] = pick(patterns, pattern_p)
        a["bag_size"] = pick(("small", "large"))
    a["scarf_exists"] = pick(("yes", "no"), (0.2, 0.8))
    if a["scarf_exists"] == "yes":
        a["scarf_color"], a["scarf_pattern"] = pick(colors), pick(patterns, pattern_p)
        a["scarf_length"] = pick(("short", "long"))
    else:
        if a["top_exists"] == "yes":
            a["neckline"] = pick(("round", "v-neck"), (0.6, 0.4))
        a["necklace_exists"] = pick(("yes", "no"), (0.35, 0.65) if woman else (0.1, 0.9))
    return a
