"""The synthetic human world: a deterministic renderer of people with exact ground truth.

Every sample is a pure function of ``(seed, index)`` (and the requested case): the image bytes, the
ATR parsing mask of the main person, the protocol attributes, the person / face boxes and keypoints.
The world also renders the cases the filter chain must reject, each built so that the chain's pixel
detectors reject it for exactly that reason (see ``cosmicman.filtering.chain`` for the chain order):

========== ===================================================================================
case       how it is rendered
========== ===================================================================================
kept       one photographic person (shading, sensor noise, slight optical blur), full size
corrupt    undecodable bytes: a truncated JPEG, random bytes or an empty file
too_small  a valid photographic person image, rendered on a canvas below the size rule
fake_person a flat cartoon person: flat colours, black outlines, no shading / noise / blur
low_quality a photographic person, then heavy blur and / or severe under- or over-exposure
no_person  a photographic scene (plain / indoor / outdoor) without anyone in it
many_people 2-3 photographic people side by side
small_face one photographic person drawn small (face side well below the face threshold)
========== ===================================================================================

Conventions: ATR label ids follow ``protocol.yaml`` (Background 0 ... Scarf 17). "Left" is the
person's left, which is the image's right for a person facing the camera (x larger than the body
centre). Keypoints use the same convention; ``person_position`` is the viewer's (image) left / right.
The mask is the exact per-pixel label of what was drawn: the image and the mask are painted from the
same rasterised regions (no anti-aliasing); the camera blur / noise applied afterwards changes pixels,
not labels. ATR has no class for exposed torso skin or jewellery: the neck, a neckline's skin, a bare
midriff, a necklace and facial hair are Face; gloves are arm labels, stockings leg labels.

Every protocol category the world answers is in the pixels: ``random_attributes`` answers exactly the
applicable categories, and ``draw_person`` / ``render`` draw each answer (``lighting`` scales the
whole image, ``person_position`` moves the person, ``legs_exposed`` / ``arms_exposed`` follow the
garments that are drawn). A person standing by the frame's edge may have a raised hand out of frame.

The parts: :mod:`~cosmicman.simulation.attributes` (the answers), :mod:`~cosmicman.simulation.scene`
(backgrounds and finishes), :mod:`~cosmicman.simulation.person_renderer` (a person),
:mod:`~cosmicman.simulation.cases` (what makes a negative case fail its rule); this module puts them together.

Filters look at pixels, never at this truth; it is only for tests, the simulated annotation oracle
and the evaluation set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cosmicman.core.imageio import encode_jpeg
from cosmicman.core.protocol import load_protocol
from cosmicman.simulation.attributes import random_attributes
from cosmicman.simulation.canvas import Canvas
from cosmicman.simulation.cases import CASES, NEGATIVE_CASES, corrupt_bytes, degrade, render_options
from cosmicman.simulation.palette import AGE_BODY, LIGHTING, POSITIONS
from cosmicman.simulation.person_renderer import draw_person
from cosmicman.simulation.scene import cartoon_finish, draw_background, photo_finish, to_pil


@dataclass
class SyntheticSample:
    sample_id: str
    case: str
    image_bytes: bytes
    width: int
    height: int
    mask: np.ndarray | None
    attributes: dict[str, str] | None
    bbox: tuple[int, int, int, int] | None
    face_bbox: tuple[int, int, int, int] | None
    keypoints: dict[str, tuple[int, int]] | None
    n_people: int
    person_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # every person, main first


class SyntheticWorld:
    """Deterministic people from ``(seed, index)``; see the module docstring for the cases."""

    def __init__(self, seed: int = 0, width: int = 320, height: int = 640, negative_fraction: float = 0.3) -> None:
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        self.negative_fraction = negative_fraction
        self.protocol = load_protocol()
        nrng = np.random.default_rng([self.seed, 0x5EED])
        self._noise = nrng.standard_normal((self.height + 64, self.width + 64, 3), dtype=np.float32)

    # -- attributes -------------------------------------------------------------------------
    def random_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        """A consistent answer set for one person (see :func:`~cosmicman.simulation.attributes.random_attributes`)."""
        return random_attributes(self.protocol, rng)

    # -- rendering --------------------------------------------------------------------------
    def render(
        self,
        attributes: Mapping[str, str],
        rng: np.random.Generator,
        *,
        width: int | None = None,
        height: int | None = None,
        style: str = "photo",
        scale: float = 1.0,
        n_people: int = 1,
        person: bool = True,
    ) -> tuple[Image.Image, np.ndarray | None, dict[str, Any]]:
        """Render ``attributes`` (the main person) on its background.

        ``scale`` multiplies the person's height (small people for ``small_face``); ``n_people`` > 1
        adds people with random attributes beside the main one (drawn into a throw-away mask);
        ``person=False`` renders the background only. Returns (image, main-person mask or None, truth)
        where truth holds ``bbox``, ``face_bbox``, ``keypoints`` (None without a person), ``n_people`` and
        ``boxes`` (every person's box, main person first).
        """
        if style not in ("photo", "cartoon"):
            raise ValueError(f"unknown style {style!r}")
        w, h = width or self.width, height or self.height
        cartoon = style == "cartoon"
        canvas = Canvas(w, h)
        kind = attributes["background"]
        draw_background(
            canvas, kind, rng, cartoon=cartoon, color=attributes.get("background_color") if kind == "plain" else None
        )
        # the scene's brightness (a person-less scene is not a sample of the protocol: its lighting is unset)
        light = float(rng.uniform(*LIGHTING[attributes.get("lighting", "bright") if person else "bright"]))
        truth: dict[str, Any] = {"bbox": None, "face_bbox": None, "keypoints": None, "n_people": 0, "boxes": []}
        if not person:
            img = self._finish(canvas, rng, None, h * 0.8, cartoon, light)
            return to_pil(img), None, truth
        heads, frac, _ = AGE_BODY[attributes["age"]]
        people: list[Mapping[str, str]] = [attributes]
        if n_people > 1:
            slot_w = w / n_people
            main_i = int(rng.integers(n_people))
            people = [attributes if i == main_i else self.random_attributes(rng) for i in range(n_people)]
            centres = [slot_w * (i + 0.5) + rng.uniform(-0.06, 0.06) * slot_w for i in range(n_people)]
            size = (0.5, 0.6) if n_people == 2 else (0.4, 0.46)
            person_h = [h * rng.uniform(*size) * AGE_BODY[p["age"]][1] / 0.83 for p in people]
        else:
            main_i = 0
            centres = [w * POSITIONS[attributes.get("person_position", "center")] + rng.uniform(-0.03, 0.03) * w]
            person_h = [h * frac * scale * rng.uniform(0.96, 1.02)]
        full = np.zeros((h, w), np.uint8)  # union of every person's labels, for shading / outlines
        for i in range(n_people):
            attrs = people[i]
            ph = person_h[i]
            hh = ph / AGE_BODY[attrs["age"]][0]
            raised = attrs["pose"] == "arms raised"
            top_min = (0.9 * hh if raised else 0.1 * hh) + 0.03 * h
            bottom = h * rng.uniform(0.955, 0.975) if n_people == 1 and scale >= 0.9 else h * rng.uniform(0.8, 0.95)
            top = max(top_min, bottom - ph)
            if i == main_i:
                pt = draw_person(canvas, attrs, rng, centres[i], top, ph, cartoon)
                truth.update(bbox=pt.bbox, face_bbox=pt.face_bbox, keypoints=pt.keypoints)
                truth["boxes"].insert(0, pt.bbox)
                full = np.where(canvas.mask > 0, canvas.mask, full)
            else:
                own = np.zeros((h, w), np.uint8)
                other = draw_person(canvas, attrs, rng, centres[i], top, ph, cartoon, mask=own)
                truth["boxes"].append(other.bbox)
                full = np.where(own > 0, own + 20, full)  # distinct ids so borders between people shade
                canvas.mask[own > 0] = 0  # another person may cover the main one's pixels
        truth["n_people"] = n_people
        mask = canvas.mask.copy()
        img = self._finish(canvas, rng, full, person_h[main_i], cartoon, light)
        return to_pil(img), mask, truth

    def _finish(self, canvas, rng, fg, person_h, cartoon, light=1.0):
        if cartoon:
            return cartoon_finish(canvas, fg if fg is not None else canvas.mask) * np.float32(light)
        return photo_finish(canvas, rng, self._noise, fg, person_h, light)

    # -- samples ----------------------------------------------------------------------------
    def case_of(self, index: int, negative_fraction: float | None = None) -> str:
        """The world's case mix: ``kept`` with probability 1 - negative_fraction, else a uniform negative."""
        nf = self.negative_fraction if negative_fraction is None else negative_fraction
        u = float(np.random.default_rng([self.seed, int(index), 1]).random())
        if u >= nf:
            return "kept"
        return NEGATIVE_CASES[min(int(u / nf * len(NEGATIVE_CASES)), len(NEGATIVE_CASES) - 1)]

    def _rng(self, index: int, case: str) -> np.random.Generator:
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
        return np.random.default_rng([self.seed, int(index), 0, CASES.index(case)])

    def attributes(self, index: int, case: str = "kept") -> dict[str, str]:
        """The attributes ``sample(index, case)`` draws, without rendering (a large pool's truth)."""
        return self.random_attributes(self._rng(index, case))

    def sample(self, index: int, case: str | None = None) -> SyntheticSample:
        case = self.case_of(index) if case is None else case
        rng = self._rng(index, case)
        sid = f"synth-{self.seed}-{index}"
        attrs = self.random_attributes(rng)
        if case == "corrupt":
            data = corrupt_bytes(rng, lambda: encode_jpeg(self.render(attrs, rng)[0], quality=92))
            return SyntheticSample(sid, "corrupt", data, 0, 0, None, None, None, None, None, 0)
        img, mask, truth = self.render(attrs, rng, **render_options(case, attrs, rng, self.width, self.height))
        if case == "many_people":  # the main person stands in its slot, not where person_position said
            x = truth["keypoints"]["neck"][0] / img.width
            attrs["person_position"] = "left" if x < 0.4 else "right" if x > 0.6 else "center"
        if case == "low_quality":
            img = degrade(img, rng)
        data = encode_jpeg(img, quality=92)
        return SyntheticSample(
            sid,
            case,
            data,
            img.width,
            img.height,
            mask,
            None if case == "no_person" else attrs,
            truth["bbox"],
            truth["face_bbox"],
            truth["keypoints"],
            truth["n_people"],
            list(truth["boxes"]),
        )

    def batch(self, start: int, count: int, negative_fraction: float = 0.3) -> list[SyntheticSample]:
        return [self.sample(i, self.case_of(i, negative_fraction)) for i in range(start, start + count)]
