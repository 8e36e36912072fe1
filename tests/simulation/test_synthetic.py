"""The synthetic world: determinism, protocol-valid attributes, masks and pixels that match the attributes."""

from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest

from cosmicman.core.imageio import ImageDecodeError, decode_image
from cosmicman.core.protocol import load_protocol
from cosmicman.simulation.cases import CASES
from cosmicman.simulation.palette import COLORS, NECKLACE, STOCKINGS
from cosmicman.simulation.person_renderer import KEYPOINT_NAMES
from cosmicman.simulation.world import SyntheticWorld

GARMENT_LABEL = {
    "hat": 1,
    "sunglasses": 3,
    "top": 4,
    "skirt": 5,
    "pants": 6,
    "dress": 7,
    "belt": 8,
    "bag": 16,
    "scarf": 17,
}
ATR_PARTS = (
    "Background",
    "Hat",
    "Hair",
    "Sunglasses",
    "Upper-clothes",
    "Skirt",
    "Pants",
    "Dress",
    "Belt",
    "Left-shoe",
    "Right-shoe",
    "Face",
    "Left-leg",
    "Right-leg",
    "Left-arm",
    "Right-arm",
    "Bag",
    "Scarf",
)
# The 30 categories added to the first 40, each with the ATR labels its pixels carry.
NEW_LOCAL = {
    "background_color": {0},
    "hair_bangs": {2},
    "hair_style": {2},
    "hat_pattern": {1},
    "sunglasses_color": {3},
    "sunglasses_shape": {3},
    "expression": {11},
    "lipstick": {11},
    "facial_hair": {11},
    "necklace_exists": {11},
    "top_fit": {4},
    "top_length": {4},
    "neckline": {4},
    "dress_sleeve": {7},
    "dress_fit": {7},
    "skirt_shape": {5},
    "pants_fit": {6},
    "belt_width": {8},
    "shoes_sole": {9, 10},
    "stockings_exists": {12, 13},
    "stockings_color": {12, 13},
    "gloves_exists": {14, 15},
    "gloves_color": {14, 15},
    "bag_pattern": {16},
    "bag_size": {16},
    "scarf_length": {17},
}
NEW_GLOBAL = ("lighting", "person_position")
NEW_DERIVED = ("legs_exposed", "arms_exposed")  # follow the garments; checked on the masks


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=3)


@pytest.fixture(scope="module")
def kept(world) -> list:
    return [world.sample(i, "kept") for i in range(200)]


def _attrs_of(world: SyntheticWorld, index: int) -> dict[str, str]:
    """The attributes of ``sample(index, "kept")`` without rendering (the sample's first draws)."""
    return world.random_attributes(np.random.default_rng([world.seed, index, 0, CASES.index("kept")]))


def _render(world: SyntheticWorld, index: int, attrs, style: str = "photo"):
    """``attrs`` drawn with the rendering draws of ``sample(index, "kept")`` (counterfactual renders)."""
    rng = np.random.default_rng([world.seed, index, 0, CASES.index("kept")])
    world.random_attributes(rng)
    img, mask, truth = world.render(attrs, rng, style=style)
    return np.asarray(img).astype(np.int16), mask, truth


def _head_h(s_or_truth) -> float:
    fb = s_or_truth.face_bbox if hasattr(s_or_truth, "face_bbox") else s_or_truth["face_bbox"]
    return float(fb[3] - fb[1])


def test_deterministic_per_seed_and_index(world):
    for case in CASES:
        a, b = world.sample(5, case), SyntheticWorld(seed=3).sample(5, case)
        assert a.image_bytes == b.image_bytes and a.sample_id == "synth-3-5" and a.case == case
        assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
    assert world.sample(5, "kept").image_bytes != world.sample(6, "kept").image_bytes
    assert world.sample(5, "kept").image_bytes != SyntheticWorld(seed=4).sample(5, "kept").image_bytes
    assert [s.case for s in world.batch(0, 30)] == [world.sample(i).case for i in range(30)]
    # the counterfactual helpers replay a sample exactly
    s = world.sample(7, "kept")
    assert _attrs_of(world, 7) == s.attributes
    _, mask, truth = _render(world, 7, s.attributes)
    assert np.array_equal(mask, s.mask) and truth["bbox"] == s.bbox


def test_protocol_has_70_categories_over_18_parts():
    proto = load_protocol()
    assert proto.parts == ATR_PARTS
    assert len(proto.categories) == 70
    per_part = collections.Counter(c.part for c in proto.categories)
    assert set(per_part) == set(ATR_PARTS) | {"global"}
    assert all(per_part[p] >= 1 for p in ATR_PARTS), per_part
    assert set(NEW_LOCAL) | set(NEW_GLOBAL) | set(NEW_DERIVED) <= set(proto.by_name)
    seen: set[str] = set()
    for c in proto.categories:  # a category comes after what it requires (sample_attributes relies on it)
        assert set(c.requires) <= seen, c.name
        seen.add(c.name)
        if c.name.endswith("_exists"):
            assert c.tag == "obj" and c.answers == ("yes", "no")
    assert any(len(c.requires) > 1 for c in proto.categories)  # several requirements, all must hold
    assert proto.by_name["hair_style"].applies({"hair_exists": "yes", "hat_exists": "no"})
    assert not proto.by_name["hair_style"].applies({"hair_exists": "yes", "hat_exists": "yes"})


def test_attributes_valid_and_masks_match(kept):
    proto = load_protocol()
    seen_labels: set[int] = set()
    for i, s in enumerate(kept):
        a = s.attributes
        proto.validate_answers(a)
        assert s.mask.shape == (s.height, s.width) and s.mask.dtype == np.uint8 and s.mask.max() <= 17
        labels = set(np.unique(s.mask).tolist())
        seen_labels |= labels
        assert (a["top_exists"] == "yes") != (a["dress_exists"] == "yes")
        if a["dress_exists"] == "yes":
            assert a["skirt_exists"] == a["pants_exists"] == "no"
        for g, lab in GARMENT_LABEL.items():
            if a[f"{g}_exists"] == "yes":
                assert lab in labels, (i, g)
            else:
                assert lab not in labels, (i, g)
        assert (2 in labels) == (a["hair_exists"] == "yes")
        assert ({9, 10} <= labels) == (a["shoes_exists"] == "yes")
        assert 11 in labels and labels & {14, 15}  # face and hands show (legs may be covered) ...
        if a["person_position"] == "center":  # ... both hands unless the person stands by the frame's edge
            assert {14, 15} <= labels, i
        x0, y0, x1, y1 = s.bbox
        ys, xs = np.nonzero(s.mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert set(KEYPOINT_NAMES) <= set(s.keypoints)
        assert s.keypoints["left_shoulder"][0] > s.keypoints["right_shoulder"][0]  # person's left = image right
        if i < 60 and a["top_exists"] == "yes" and a["top_pattern"] == "solid":
            # garment pixels carry their colour: the median of the top's pixels is near the named colour
            img = np.asarray(decode_image(s.image_bytes))
            med = np.median(img[s.mask == 4], axis=0)
            want = np.array(COLORS[a["top_color"]]) * (0.6 if a["lighting"] == "dim" else 1.0)
            assert np.abs(med - want).max() < 60, (i, a["top_color"], a["lighting"], med)
    assert seen_labels == set(range(18))


def test_exposed_legs_and_arms_match_the_mask(kept):
    """legs_exposed: leg labels (skin or stockings) above the ankles iff yes; arms_exposed: arm labels away
    from the hands iff yes (hands and gloves always show)."""
    counts = collections.Counter()
    for i, s in enumerate(kept):
        a, m, kp = s.attributes, s.mask, s.keypoints
        hh = _head_h(s)
        yy, xx = np.mgrid[0 : s.height, 0 : s.width]
        above_ankles = yy < min(kp["left_ankle"][1], kp["right_ankle"][1]) - 0.12 * hh
        n_legs = int((np.isin(m, (12, 13)) & above_ankles).sum())
        assert (n_legs > 0.05 * hh * hh) == (a["legs_exposed"] == "yes"), (i, n_legs, a["legs_exposed"])
        if a["legs_exposed"] == "no":
            assert n_legs == 0, i
        far = np.full(m.shape, True)
        for side in ("left", "right"):
            wx, wy = kp[f"{side}_wrist"]
            far &= np.hypot(xx - wx, yy - wy) > 0.4 * hh
        n_arms = int((np.isin(m, (14, 15)) & far).sum())
        assert (n_arms > 0.05 * hh * hh) == (a["arms_exposed"] == "yes"), (i, n_arms, a["arms_exposed"])
        if a["arms_exposed"] == "no":
            assert n_arms == 0, i
        counts[(a["legs_exposed"], a["arms_exposed"])] += 1
    assert len(counts) == 4  # every combination occurs


def test_every_answer_drawn_and_frequent_enough(world):
    proto = load_protocol()
    seen = collections.defaultdict(collections.Counter)
    for i in range(400):
        for k, v in _attrs_of(world, i).items():
            seen[k][v] += 1
    missing = [(c.name, x) for c in proto.categories for x in c.answers if not seen[c.name][x]]
    assert not missing, missing
    # the design floor: among the images a category applies to, every answer is drawn often enough
    many = collections.defaultdict(collections.Counter)
    for i in range(3000):
        for k, v in world.random_attributes(np.random.default_rng([17, i])).items():
            many[k][v] += 1
    for c in proto.categories:
        n = sum(many[c.name].values())
        for x in c.answers:
            assert many[c.name][x] / n >= min(0.07, 0.6 / len(c.answers)), (c.name, x, many[c.name][x], n)


def test_new_parts_carry_their_labels_and_colours(world):
    """Flat (cartoon) renders show the painted colours: gloves on arm labels, stockings on leg labels, a
    gold necklace on Face pixels below the chin, bangs and buns on hair labels."""
    checked = collections.Counter()
    for i in range(120):
        a = _attrs_of(world, i)
        if not (
            a["gloves_exists"] == "yes"
            or a.get("stockings_exists") == "yes"
            or "hair_style" in a
            or "necklace_exists" in a
            and i % 3 == 0
        ):
            continue
        a = dict(a, lighting="bright")  # cartoon pixels = painted colour x brightness (0.98 .. 1.04)
        img, m, truth = _render(world, i, a, style="cartoon")
        kp, hh = truth["keypoints"], _head_h(truth)
        yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
        if a["gloves_exists"] == "yes":
            for side in ("left", "right"):
                (ex, ey), (wx, wy) = kp[f"{side}_elbow"], kp[f"{side}_wrist"]
                hc = (wx + 0.12 * (wx - ex), wy + 0.12 * (wy - ey))  # the hand's centre
                sel = np.isin(m, (14, 15)) & (np.hypot(xx - hc[0], yy - hc[1]) < 0.1 * hh)
                if sel.sum() >= 3:  # a hand may be off-canvas or behind the bag
                    med = np.median(img[sel], axis=0)
                    assert np.abs(med - COLORS[a["gloves_color"]]).max() <= 12, (i, side, a["gloves_color"], med)
                    checked["gloves"] += 1
        legs = np.isin(m, (12, 13)) & (yy < min(kp["left_ankle"][1], kp["right_ankle"][1]) - 0.12 * hh)
        if a.get("stockings_exists") == "yes":
            med = np.median(img[legs], axis=0)
            assert np.abs(med - STOCKINGS[a["stockings_color"]]).max() <= 12, (i, a["stockings_color"], med)
            checked["stockings"] += 1
        if "necklace_exists" in a:  # (the flat render outlines the thin chain; the pendant keeps its gold)
            gold = (m == 11) & (np.abs(img - NECKLACE).max(axis=2) <= 12) & (yy > kp["head"][1] + 0.55 * hh)
            assert (gold.sum() > 0) == (a["necklace_exists"] == "yes"), (i, int(gold.sum()))
            checked["necklace_" + a["necklace_exists"]] += 1
        if "hair_style" in a:  # hair shows, no hat: the bun above the crown, bangs over the forehead
            hx, hy = kp["head"]
            crown = (m == 2) & (yy < hy - 0.62 * hh)
            assert (crown.sum() > 0) == (a["hair_style"] == "bun"), (i, a["hair_style"])
            fringe = (m == 2) & (yy > hy - 0.25 * hh) & (yy < hy - 0.18 * hh) & (np.abs(xx - hx) < 0.3 * hh)
            assert (fringe.sum() > 0) == (a["hair_bangs"] == "yes"), (i, a["hair_bangs"])
            checked["hair_" + a["hair_style"]] += 1
    kinds = ("gloves", "stockings", "necklace_yes", "necklace_no", "hair_bun", "hair_loose")
    assert min(checked[k] for k in kinds) >= 2, checked


@pytest.mark.parametrize("size", [(160, 320), (320, 640)])
def test_every_new_category_is_visible(size):
    """Changing one answer (everything else and every random draw fixed) changes the photo visibly, even at
    160x320, and the flat render's changes sit on the category's own labels."""
    w = SyntheticWorld(seed=3, width=size[0], height=size[1])
    proto = load_protocol()
    per_category = 3 if size[0] == 160 else 1
    found = collections.defaultdict(list)
    for i in range(200):
        a = _attrs_of(w, i)
        for name in NEW_LOCAL:
            if name in a and len(found[name]) < per_category:
                found[name].append((i, a))
    assert set(found) == set(NEW_LOCAL)
    for name, cases in found.items():
        for i, a in cases:
            a = dict(a, lighting="bright")  # (dim scales every difference by ~0.6)
            photo, _, truth = _render(w, i, a)
            flat, mask, _ = _render(w, i, a, style="cartoon")
            hh = _head_h(truth)
            for other in proto.by_name[name].answers:
                if other == a[name]:
                    continue
                b = dict(a, **{name: other})
                if name == "stockings_exists" and other == "yes":
                    b["stockings_color"] = "black"
                if name == "gloves_exists" and other == "yes":
                    b["gloves_color"] = "red"
                photo2, _, _ = _render(w, i, b)
                changed = np.abs(photo2 - photo).max(axis=2) > 30
                assert changed.sum() >= 0.01 * hh * hh, (size, name, i, a[name], other, int(changed.sum()))
                flat2, mask2, _ = _render(w, i, b, style="cartoon")
                diff = np.abs(flat2 - flat).max(axis=2) > 30
                own = np.isin(mask, list(NEW_LOCAL[name])) | np.isin(mask2, list(NEW_LOCAL[name]))
                own = cv2.dilate(own.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # + the flat render's outlines
                assert (diff & own).sum() >= 0.8 * diff.sum(), (size, name, i, int((diff & own).sum()), int(diff.sum()))


def test_lighting_and_position(world, kept):
    for i in range(6):
        a = _attrs_of(world, i)
        bright, m1, _ = _render(world, i, dict(a, lighting="bright"))
        dim, m2, _ = _render(world, i, dict(a, lighting="dim"))
        assert np.array_equal(m1, m2)
        assert 0.5 < dim.mean() / bright.mean() < 0.7
        centres = {}
        for pos in ("left", "center", "right"):
            _, m, _ = _render(world, i, dict(a, person_position=pos))
            centres[pos] = np.nonzero(m)[1].mean()
        assert centres["right"] - centres["center"] > 0.09 * world.width
        assert centres["center"] - centres["left"] > 0.09 * world.width
    lum = collections.defaultdict(list)
    centre = collections.defaultdict(list)
    for s in kept:
        lum[s.attributes["lighting"]].append(np.asarray(decode_image(s.image_bytes)).mean())
        centre[s.attributes["person_position"]].append(np.nonzero(s.mask)[1].mean() / s.width)
    assert np.mean(lum["dim"]) < 0.75 * np.mean(lum["bright"])
    assert np.mean(centre["left"]) < 0.42 < np.mean(centre["center"]) < 0.58 < np.mean(centre["right"])
    # in a crowd the main person stands in its slot, and its attributes say where
    for i in range(8):
        s = world.sample(i, "many_people")
        x = (s.person_boxes[0][0] + s.person_boxes[0][2]) / 2 / s.width
        want = {"left": (0, 0.45), "center": (0.3, 0.7), "right": (0.55, 1)}[s.attributes["person_position"]]
        assert want[0] < x < want[1], (i, x, s.attributes["person_position"])


def test_negative_cases_have_their_shape(world):
    for i in range(6):
        c = world.sample(i, "corrupt")
        assert c.width == c.height == 0 and c.mask is None
        with pytest.raises(ImageDecodeError):
            decode_image(c.image_bytes)
        t = world.sample(i, "too_small")
        assert min(t.width, t.height) < 256 and decode_image(t.image_bytes).size == (t.width, t.height)
        n = world.sample(i, "no_person")
        assert n.n_people == 0 and n.mask is None and n.bbox is None
        m = world.sample(i, "many_people")
        assert m.n_people in (2, 3) and len(m.person_boxes) == m.n_people
        sf = world.sample(i, "small_face")
        assert sf.n_people == 1 and sf.face_bbox[3] - sf.face_bbox[1] < 48


def test_case_mix(world):
    cases = [world.case_of(i) for i in range(2000)]
    frac_neg = 1 - cases.count("kept") / len(cases)
    assert 0.25 < frac_neg < 0.35 and set(cases) == set(CASES)
