"""Draws one person from protocol attributes onto a canvas, with the person's boxes and keypoints."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cosmicman.simulation.canvas import (
    Canvas,
    _arc,
    _circle,
    _clip_y,
    _ellipse,
    _lerp,
    _line,
    _poly,
    _pt,
    _rect,
    _seg,
    _union,
)
from cosmicman.simulation.face_renderer import draw_face
from cosmicman.simulation.palette import (
    AGE_BODY,
    BAG,
    BELT,
    BODY_SHAPE,
    COLORS,
    DRESS,
    FACE,
    HAIR,
    HAIR_COLORS,
    HAT,
    LARM,
    LLEG,
    LSHOE,
    NECKLACE,
    PANTS,
    RARM,
    RLEG,
    RSHOE,
    SCARF,
    SKIN_TONES,
    SKIRT,
    SOLES,
    STOCKINGS,
    SUNGLASSES,
    SUNGLASSES_TINTS,
    UPPER,
)

KEYPOINT_NAMES = (
    "head",
    "neck",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)


@dataclass
class PersonTruth:
    """What ``draw_person`` drew: boxes and keypoints in image pixels."""

    bbox: tuple[int, int, int, int]
    face_bbox: tuple[int, int, int, int]
    keypoints: dict[str, tuple[int, int]]


def draw_person(
    canvas: Canvas,
    attrs: Mapping[str, str],
    rng: np.random.Generator,
    cx: float,
    top: float,
    height_px: float,
    cartoon: bool = False,
    mask: np.ndarray | None = None,
) -> PersonTruth:
    """Draw one standing, front-facing person whose body spans ``height_px`` from ``top`` (head top).

    Painter's order, back to front; every region writes its ATR label into ``mask`` (the canvas mask by
    default, so secondary people can be drawn into a throw-away mask). Exposed skin of the neck and torso
    (neckline, bare midriff) is labelled Face, accessories take the label of what they sit on: gloves the
    arm labels, stockings the leg labels, a necklace and facial hair Face. Attributes a person lacks
    (partial answer sets) fall back to the plainest rendering.
    """
    m = canvas.mask if mask is None else mask
    g = attrs.get
    heads, _, sw_heads = AGE_BODY[attrs["age"]]
    bf = BODY_SHAPE[attrs["body_shape"]]
    woman = attrs["gender"] == "woman"
    h = height_px / heads  # head height in pixels
    body = height_px - h
    skin = SKIN_TONES[attrs["skin_tone"]]
    neck_rgb = tuple(int(c * 0.88) for c in skin)
    jit = lambda s=0.03: rng.uniform(-s, s) * h  # noqa: E731

    hx, hy = cx + jit(0.02), top + 0.5 * h
    neck = (cx, top + 1.02 * h)
    sy = top + h * (1.2 if attrs["age"] != "child" else 1.15)
    sw = h * sw_heads * (0.9 if woman else 1.05) * (0.75 + 0.25 * bf)
    hip_y = top + h + 0.42 * body
    hw = h * (0.62 if woman else 0.55) * bf
    knee_y = top + h + 0.71 * body
    ankle_y = top + h + 0.955 * body
    ls, rs = (cx + sw, sy), (cx - sw, sy)
    lh, rh = (cx + hw * 0.55, hip_y), (cx - hw * 0.55, hip_y)
    spread = h * rng.uniform(0.0, 0.12)
    lk, rk = (cx + hw * 0.5 + spread * 0.5, knee_y), (cx - hw * 0.5 - spread * 0.5, knee_y)
    la, ra = (cx + hw * 0.45 + spread, ankle_y), (cx - hw * 0.45 - spread, ankle_y)
    pose = attrs["pose"]
    if pose == "arms down":
        le, re = (cx + sw + 0.2 * h, sy + 0.26 * body), (cx - sw - 0.2 * h, sy + 0.26 * body)
        lw, rw = (cx + sw + 0.3 * h, sy + 0.47 * body), (cx - sw - 0.3 * h, sy + 0.47 * body)
    elif pose == "arms raised":
        le, re = (cx + sw + 0.55 * h, sy - 0.7 * h), (cx - sw - 0.55 * h, sy - 0.7 * h)
        lw, rw = (cx + sw + 0.8 * h, sy - 1.75 * h), (cx - sw - 0.8 * h, sy - 1.75 * h)
    elif pose == "hands on hips":
        le, re = (cx + sw + 0.7 * h, sy + 0.2 * body), (cx - sw - 0.7 * h, sy + 0.2 * body)
        lw, rw = (cx + hw + 0.05 * h, hip_y - 0.25 * h), (cx - hw - 0.05 * h, hip_y - 0.25 * h)
    else:
        raise ValueError(f"unknown pose {pose!r}")
    arms = ((ls, le, lw, LARM), (rs, re, rw, RARM))
    arm_t, fore_t = 0.4 * h * (0.8 + 0.2 * bf), 0.32 * h * (0.8 + 0.2 * bf)
    leg_t = 0.55 * h * (0.75 + 0.25 * bf)
    waist_hw = hw * (0.82 if woman else 0.95)
    waist_y = hip_y - 0.45 * h

    def paint(draw, color, label, pattern="solid", scale=0.24):
        return canvas.fill(draw, color, label, pattern, scale=scale * h, mask=m)

    # -- long hair behind the shoulders
    hair = g("hair_exists") == "yes"
    hair_rgb = HAIR_COLORS[attrs["hair_color"]] if hair else None
    if hair and attrs["hair_length"] == "long":
        paint(
            _union(
                _ellipse(hx, hy, 0.5 * h, 0.56 * h),
                _poly(
                    [
                        (hx - 0.5 * h, hy),
                        (hx + 0.5 * h, hy),
                        (hx + 0.56 * h, sy + 0.9 * h),
                        (hx - 0.56 * h, sy + 0.9 * h),
                    ]
                ),
            ),
            hair_rgb,
            HAIR,
        )

    # -- legs (skin, or opaque stockings / tights); bare feet are part of the leg
    leg_rgb = STOCKINGS[attrs["stockings_color"]] if g("stockings_exists") == "yes" else skin
    for hp, kp, ap, lab in ((lh, lk, la, LLEG), (rh, rk, ra, RLEG)):
        out = 1 if lab == LLEG else -1
        paint(
            _union(
                _line(hp, kp, leg_t),
                _line(kp, ap, leg_t * 0.76),
                _circle(*kp, leg_t * 0.42),
                _ellipse(ap[0] + out * 0.08 * h, ap[1] + 0.12 * h, 0.17 * h, 0.09 * h),
            ),
            leg_rgb,
            lab,
        )

    # -- shoes (boots have a shaft up the shin, cut flat); every shoe has a light or dark sole
    if g("shoes_exists") == "yes":
        shoe_rgb = COLORS[attrs["shoes_color"]]
        sole_rgb = SOLES[g("shoes_sole", "light" if sum(shoe_rgb) < 500 else "dark")]
        for ap, kp, lab in ((la, lk, LSHOE), (ra, rk, RSHOE)):
            out = 1 if lab == LSHOE else -1
            foot = _ellipse(ap[0] + out * 0.1 * h, ap[1] + 0.12 * h, 0.21 * h, 0.11 * h)
            if attrs["shoes_type"] == "boots":
                foot = _union(foot, _seg(_lerp(ap, kp, 0.4), ap, leg_t * 0.95), _circle(*ap, leg_t * 0.475))
            paint(foot, shoe_rgb, lab)
            paint(_ellipse(ap[0] + out * 0.1 * h, ap[1] + 0.18 * h, 0.215 * h, 0.055 * h), sole_rgb, lab)

    # -- torso outline (tight fit) and what the top covers
    torso = [
        (cx - 0.2 * h, sy - 0.06 * h),
        (cx + 0.2 * h, sy - 0.06 * h),
        (ls[0], sy + 0.02 * h),
        (ls[0] - 0.05 * h, sy + 0.35 * h),
        (cx + waist_hw, waist_y),
        (cx + hw, hip_y + 0.08 * h),
        (cx - hw, hip_y + 0.08 * h),
        (cx - waist_hw, waist_y),
        (rs[0] + 0.05 * h, sy + 0.35 * h),
        (rs[0], sy + 0.02 * h),
    ]
    top = g("top_exists") == "yes"
    dress = g("dress_exists") == "yes"
    cropped = top and g("top_length") == "cropped"
    hem_y = waist_y - 0.28 * h
    if cropped:  # bare midriff between the cropped top and the waistband (drawn under pants / skirt)
        paint(_poly(_clip_y(torso, hem_y - 0.05 * h, waist_y)), skin, FACE)

    # -- pants (flat hems; skinny / regular / wide legs, wide ones flaring outwards)
    if g("pants_exists") == "yes":
        frac = {"shorts": 0.4, "cropped": 0.72, "long": 1.06}[attrs["pants_length"]]
        wt, ws, kr = {"skinny": (1.04, 0.84, 0.52), "regular": (1.22, 1.05, 0.58), "wide": (1.5, 1.5, 0.75)}[
            g("pants_fit", "regular")
        ]
        # widths in leg_t, kept >= 3 px wider than the skin they cover (no skin slivers on small people)
        wt, ws, kr = max(wt, 1 + 3 / leg_t), max(ws, 0.76 + 3 / leg_t), max(kr, 0.5 + 1.5 / leg_t)
        draws = [
            _poly(
                [
                    (cx - waist_hw, waist_y),
                    (cx + waist_hw, waist_y),
                    (cx + hw, hip_y + 0.3 * h),
                    (cx - hw, hip_y + 0.3 * h),
                ]
            )
        ]
        for hp, kp, ap, out in ((lh, lk, la, 1), (rh, rk, ra, -1)):
            dt = out * max(0.0, wt - 1.22) / 2 * leg_t  # wide legs keep the inner edge, widen outwards
            ds = out * max(0.0, ws - 1.05) / 2 * leg_t
            hp2, kp_t, kp_s = (hp[0] + dt, hp[1]), (kp[0] + dt, kp[1]), (kp[0] + ds, kp[1])
            t_knee = (kp[1] - hp[1]) / (ap[1] - hp[1])
            draws.append(_circle(*hp, min(wt, 1.22) * leg_t / 2 + 1))
            if frac <= t_knee:
                draws.append(_seg(hp2, _lerp(hp2, kp_t, frac / t_knee), wt * leg_t))
            else:
                ap_s = (ap[0] + ds, ap[1])
                draws += [
                    _seg(hp2, kp_t, wt * leg_t),
                    _circle(*kp_s, kr * leg_t),
                    _seg(kp_s, _lerp(kp_s, ap_s, (frac - t_knee) / (1 - t_knee)), ws * leg_t),
                ]
        paint(_union(*draws), COLORS[attrs["pants_color"]], PANTS, attrs["pants_pattern"])

    # -- skirt / dress below the waist: covers the hips and thighs, straight (fitted) or flared
    def lower(bottom, flared):
        hip_half = max(hw + 0.05 * h, hw * 0.55 + 0.5 * leg_t + 0.06 * h)
        bot = hip_half + (0.2 if flared else 0.03) * (bottom - hip_y)
        return [
            (cx + waist_hw, waist_y),
            (cx + hip_half, hip_y + 0.05 * h),
            (cx + bot, bottom),
            (cx - bot, bottom),
            (cx - hip_half, hip_y + 0.05 * h),
            (cx - waist_hw, waist_y),
        ]

    if g("skirt_exists") == "yes":
        bottom = {"mini": hip_y + 0.7 * h, "knee": knee_y + 0.1 * h, "long": ankle_y - 0.03 * h}[attrs["skirt_length"]]
        paint(
            _poly(lower(bottom, g("skirt_shape", "flared") == "flared")),
            COLORS[attrs["skirt_color"]],
            SKIRT,
            attrs["skirt_pattern"],
        )

    # -- neck (skin, labelled Face as head skin)
    paint(
        _poly(
            [
                (cx - 0.14 * h, hy + 0.3 * h),
                (cx + 0.14 * h, hy + 0.3 * h),
                (cx + 0.17 * h, sy + 0.05 * h),
                (cx - 0.17 * h, sy + 0.05 * h),
            ]
        ),
        neck_rgb,
        FACE,
    )

    # -- arms (skin), upper arm + forearm + hand; gloves over the hands and wrists
    gloves_rgb = COLORS[attrs["gloves_color"]] if g("gloves_exists") == "yes" else None

    def hand(ep, wp, lab):
        hand_c = _lerp(ep, wp, 1.12)
        if gloves_rgb is None:
            paint(_circle(*hand_c, 0.17 * h), skin, lab)
        else:
            paint(_union(_circle(*hand_c, 0.17 * h), _seg(_lerp(ep, wp, 0.86), hand_c, fore_t * 1.08)), gloves_rgb, lab)

    for sp, ep, wp, lab in arms:
        paint(
            _union(
                _line(sp, ep, arm_t),
                _circle(ep[0], ep[1], arm_t * 0.5),
                _line(ep, wp, fore_t),
                _circle(*_lerp(ep, wp, 1.12), 0.17 * h),
            ),
            skin,
            lab,
        )

    def sleeves(kind, k=1.0):
        draws = []
        for sp, ep, wp, _ in arms:
            if kind == "short":
                draws.append(_line(sp, _lerp(sp, ep, 0.5), arm_t * 1.25 * k))
            elif kind == "long":
                draws += [
                    _line(sp, ep, arm_t * 1.2 * k),
                    _circle(*ep, arm_t * 0.6 * k),
                    _line(ep, wp, fore_t * 1.25 * k),
                ]
        return draws

    # -- dress (bodice + skirt part, with sleeves)
    garment = None  # (colour, label, pattern, sleeve kind, sleeve width factor) of the torso garment
    if dress:
        bottom = {"short": hip_y + 0.75 * h, "knee": knee_y + 0.1 * h, "long": ankle_y - 0.03 * h}[
            attrs["dress_length"]
        ]
        garment = (COLORS[attrs["dress_color"]], DRESS, attrs["dress_pattern"], g("dress_sleeve", "sleeveless"), 1.0)
        body_pts = torso[:4] + lower(bottom, g("dress_fit", "flared") == "flared") + torso[-2:]
        paint(_union(_poly(body_pts), *sleeves(garment[3])), garment[0], DRESS, garment[2])
    # -- top (torso + sleeves): tight or loose, cropped or regular length
    if top:
        loose = g("top_fit") == "loose"
        garment = (
            COLORS[attrs["top_color"]],
            UPPER,
            attrs["top_pattern"],
            attrs["sleeve_length"],
            1.15 if loose else 1.0,
        )
        shape = torso
        if loose:
            shape = torso[:3] + [
                (ls[0], sy + 0.35 * h),
                (cx + hw + 0.12 * h, waist_y),
                (cx + hw + 0.16 * h, hip_y + 0.12 * h),
                (cx - hw - 0.16 * h, hip_y + 0.12 * h),
                (cx - hw - 0.12 * h, waist_y),
                (rs[0], sy + 0.35 * h),
                torso[-1],
            ]
        if cropped:
            shape = _clip_y(shape, -1e9, hem_y)
        top_region = paint(_union(_poly(shape), *sleeves(garment[3], garment[4])), garment[0], UPPER, garment[2])
        if g("scarf_exists") != "yes":  # the neckline, cut out of the top: a round scoop or a V of chest skin (Face)
            if g("neckline", "round") == "v-neck":
                cut = _poly([(cx - 0.21 * h, sy - 0.07 * h), (cx + 0.21 * h, sy - 0.07 * h), (cx, sy + 0.45 * h)])
            else:
                cut = _ellipse(cx, sy - 0.07 * h, 0.27 * h, 0.18 * h, 0, 0, 180)
            canvas.paint(canvas.region(cut) & top_region, neck_rgb, FACE, mask=m)
    if garment is not None and pose == "hands on hips":  # forearms and hands rest in front of the garment
        rgb, lab_g, pattern, kind, k = garment
        for _, ep, wp, lab in arms:
            if kind == "long":
                paint(_union(_circle(*ep, arm_t * 0.6 * k), _line(ep, wp, fore_t * 1.25 * k)), rgb, lab_g, pattern)
            else:
                paint(_line(ep, wp, fore_t), skin, lab)
            hand(ep, wp, lab)
    elif gloves_rgb is not None or (garment is not None and garment[3] == "long"):  # hands out of the cuffs
        for _, ep, wp, lab in arms:
            hand(ep, wp, lab)

    # -- belt (thin or wide, gold buckle)
    if g("belt_exists") == "yes":
        by = hip_y - 0.02 * h if top else waist_y + 0.02 * h
        bw = hw if top else waist_hw
        bh = 0.1 * h if g("belt_width") == "wide" else 0.045 * h
        paint(_rect(cx - bw - 0.03 * h, by - bh, cx + bw + 0.03 * h, by + bh), COLORS[attrs["belt_color"]], BELT)
        paint(_rect(cx - 0.08 * h, by - 0.9 * bh, cx + 0.08 * h, by + 0.9 * bh), (200, 180, 90), BELT)

    # -- scarf (around the neck, one end hanging short or long)
    if g("scarf_exists") == "yes":
        end = sy + (0.5 if g("scarf_length") == "short" else 1.4) * h
        paint(
            _union(
                _ellipse(cx, sy - 0.02 * h, 0.32 * h, 0.14 * h),
                _poly([(cx + 0.05 * h, sy), (cx + 0.26 * h, sy), (cx + 0.24 * h, end), (cx + 0.04 * h, end)]),
            ),
            COLORS[attrs["scarf_color"]],
            SCARF,
            attrs["scarf_pattern"],
        )
    # -- necklace: a gold chain with a pendant (Face, like the neck it sits on)
    elif g("necklace_exists") == "yes":
        paint(
            _union(
                _arc(cx, sy - 0.12 * h, 0.19 * h, 0.28 * h, 15, 165, 0.045 * h), _circle(cx, sy + 0.17 * h, 0.06 * h)
            ),
            NECKLACE,
            FACE,
        )

    # -- head: ears, face, features
    face_region = paint(
        _union(
            _ellipse(hx, hy, 0.39 * h, 0.5 * h),
            _ellipse(hx - 0.39 * h, hy + 0.02 * h, 0.07 * h, 0.11 * h),
            _ellipse(hx + 0.39 * h, hy + 0.02 * h, 0.07 * h, 0.11 * h),
        ),
        skin,
        FACE,
    )
    if not cartoon:  # face shading: darker towards the sides and the chin, light nose bridge
        ys, xs = np.nonzero(face_region)
        r2 = ((xs - hx) / (0.42 * h)) ** 2 + ((ys - hy + 0.1 * h) / (0.6 * h)) ** 2
        gain = 1.2 if attrs["skin_tone"] == "dark" else 1.08
        shade = np.clip(gain - 0.36 * r2, 0.6, 1.25)
        canvas.img[ys, xs] = np.clip(canvas.img[ys, xs] * shade[:, None], 0, 255).astype(np.uint8)
    draw_face(canvas, attrs, hx, hy, h, skin, hair_rgb, cartoon, woman, m)

    # -- hair on the head (not covering the eyes): cap, side locks, bangs, bun
    if hair:
        length = attrs["hair_length"]
        cap = canvas.region(_ellipse(hx, hy - 0.02 * h, 0.45 * h, 0.55 * h, 0, 180, 360))
        # keep rows above hy - 0.3h, and the sides (|x - hx| > 0.34h) down to hy - 0.1h: the face shows
        x0, x1 = max(0, int(math.ceil(hx - 0.34 * h))), max(0, int(math.floor(hx + 0.34 * h)) + 1)
        cap[max(0, int(math.ceil(hy - 0.3 * h))) :, x0:x1] = False
        cap[max(0, int(math.ceil(hy - 0.1 * h))) :] = False
        canvas.paint(cap, hair_rgb, HAIR, mask=m)
        draws = []
        if length in ("medium", "long"):
            end = hy + (0.3 if length == "medium" else 0.55) * h
            draws += [
                _poly(
                    [
                        (hx - 0.46 * h, hy - 0.25 * h),
                        (hx - 0.36 * h, hy - 0.25 * h),
                        (hx - 0.37 * h, end),
                        (hx - 0.5 * h, end),
                    ]
                ),
                _poly(
                    [
                        (hx + 0.46 * h, hy - 0.25 * h),
                        (hx + 0.36 * h, hy - 0.25 * h),
                        (hx + 0.37 * h, end),
                        (hx + 0.5 * h, end),
                    ]
                ),
            ]
        if g("hair_bangs") == "yes":  # a side-swept fringe, deepest over the left brow (image right)
            draws.append(
                _poly(
                    [
                        (hx - 0.4 * h, hy - 0.36 * h),
                        (hx + 0.4 * h, hy - 0.36 * h),
                        (hx + 0.38 * h, hy - 0.16 * h),
                        (hx - 0.1 * h, hy - 0.27 * h),
                        (hx - 0.4 * h, hy - 0.27 * h),
                    ]
                )
            )
        if g("hair_style") == "bun":
            draws.append(_circle(hx, hy - 0.64 * h, 0.19 * h))
        if draws:
            paint(_union(*draws), hair_rgb, HAIR)

    # -- hat: the pattern on the crown only; brim, visor and cuff stay plain (a pattern right over the
    # eyes breaks frontal-face detectors on small faces)
    if g("hat_exists") == "yes":
        hat_rgb = COLORS[attrs["hat_color"]]
        hat_pattern = g("hat_pattern", "solid")
        kind = attrs["hat_type"]
        if kind == "cap":
            side = 1 if rng.random() < 0.5 else -1
            crown = _ellipse(hx, hy - 0.32 * h, 0.44 * h, 0.32 * h, 0, 180, 360)
            brim = _ellipse(hx + side * 0.3 * h, hy - 0.34 * h, 0.42 * h, 0.06 * h)
        elif kind == "beanie":  # a folded cuff in a darker shade of the hat's colour
            crown = _ellipse(hx, hy - 0.3 * h, 0.45 * h, 0.4 * h, 0, 180, 360)
            brim = _rect(hx - 0.46 * h, hy - 0.38 * h, hx + 0.46 * h, hy - 0.27 * h)
        elif kind == "wide brim":
            crown = _poly(
                [
                    (hx - 0.36 * h, hy - 0.36 * h),
                    (hx + 0.36 * h, hy - 0.36 * h),
                    (hx + 0.32 * h, hy - 0.8 * h),
                    (hx - 0.32 * h, hy - 0.8 * h),
                ]
            )
            brim = _ellipse(hx, hy - 0.37 * h, 0.8 * h, 0.08 * h)
        else:
            raise ValueError(f"unknown hat type {kind!r}")
        region = paint(crown, hat_rgb, HAT)
        if hat_pattern != "solid":
            region[max(0, int(hy - 0.5 * h)) :] = False
            canvas.paint(region, hat_rgb, HAT, hat_pattern, scale=0.16 * h, mask=m)
        paint(brim, tuple(int(c * 0.72) for c in hat_rgb) if kind == "beanie" else hat_rgb, HAT)

    # -- sunglasses: round or square lenses, tinted
    if g("sunglasses_exists") == "yes":
        ey = hy - 0.04 * h
        rgb = SUNGLASSES_TINTS[g("sunglasses_color", "black")]
        if g("sunglasses_shape") == "square":
            lenses = [
                _rect(hx + s * 0.165 * h - 0.115 * h, ey - 0.07 * h, hx + s * 0.165 * h + 0.115 * h, ey + 0.075 * h)
                for s in (-1, 1)
            ]
        else:
            lenses = [_circle(hx + s * 0.165 * h, ey, 0.1 * h) for s in (-1, 1)]
        bridge = _line((hx - 0.05 * h, ey - 0.03 * h), (hx + 0.05 * h, ey - 0.03 * h), 0.03 * h)
        paint(_union(*lenses, bridge), rgb, SUNGLASSES)

    # -- bag (small or large, patterned)
    if g("bag_exists") == "yes":
        bag_rgb = COLORS[attrs["bag_color"]]
        bag_pattern = g("bag_pattern", "solid")
        k = {"small": 0.72, "large": 1.3}.get(g("bag_size", ""), 1.0)
        if attrs["bag_type"] == "handbag":
            hand_b = _lerp(re, rw, 1.15)
            bw2, bh2, top_y = 0.3 * h * k, 0.45 * h * k, hand_b[1] + 0.12 * h
            paint(
                _union(
                    _ellipse(hand_b[0], top_y, 0.16 * h * k, 0.14 * h, 0, 180, 360),
                    _poly(
                        [
                            (hand_b[0] - bw2, top_y),
                            (hand_b[0] + bw2, top_y),
                            (hand_b[0] + bw2 * 1.1, top_y + bh2),
                            (hand_b[0] - bw2 * 1.1, top_y + bh2),
                        ]
                    ),
                ),
                bag_rgb,
                BAG,
                bag_pattern,
                0.16,
            )
        else:  # shoulder bag: strap across the chest, bag at the right hip
            bag_c = (rh[0] - hw * 0.7, hip_y)
            paint(
                _union(
                    _line((ls[0] - 0.15 * h, sy - 0.02 * h), bag_c, 0.08 * h),
                    _rect(
                        bag_c[0] - 0.35 * h * k,
                        bag_c[1] - 0.1 * h,
                        bag_c[0] + 0.3 * h * k,
                        bag_c[1] + (0.55 * k - 0.1) * h,
                    ),
                ),
                bag_rgb,
                BAG,
                bag_pattern,
                0.16,
            )

    keypoints = {
        "head": _pt(hx, hy),
        "neck": _pt(*neck),
        "left_shoulder": _pt(*ls),
        "right_shoulder": _pt(*rs),
        "left_elbow": _pt(*le),
        "right_elbow": _pt(*re),
        "left_wrist": _pt(*lw),
        "right_wrist": _pt(*rw),
        "left_hip": _pt(*lh),
        "right_hip": _pt(*rh),
        "left_knee": _pt(*lk),
        "right_knee": _pt(*rk),
        "left_ankle": _pt(*la),
        "right_ankle": _pt(*ra),
    }
    ys, xs = np.nonzero(m)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    fbox = (int(hx - 0.39 * h), int(hy - 0.5 * h), int(math.ceil(hx + 0.39 * h)), int(math.ceil(hy + 0.5 * h)))
    return PersonTruth(bbox, fbox, keypoints)
