"""The local semantic-accuracy judge: reads a synthetic image's pixels inside its parsing regions.

It is not the flywheel's annotator (no HITL round ever touches it, and it shares none of the probe's
backbone) and it never sees a prompt's attributes or the world's truth: it is given the image and a
human parsing of it (ATR label map) and answers each yes/no question from them:

* colours are *read*: the region's pixels (eroded off its borders, where the camera blur mixes
  neighbours) are brought back to bright light (the lighting is itself read from the image) and vote for
  the nearest colour name of the world's palette (what "red" looks like there), in CIE Lab;
* everything else (existence of what has no label of its own, shapes, patterns, pose, age ...) comes from
  one linear softmax head per protocol category over region statistics: each part's area, extent in the
  person's frame, mean / spread colour, colour-name shares, gradient energy (patterns), width profile; the
  whole person's width profile; a grid over the face; the background in thirds. The heads are trained by
  :func:`train_region_judge` on renders of the world with their attributes.

The parsing it reads comes from a parser given at construction, and the heads are trained over that
parser's label maps:

* renders: the renderer's label map of that very image (:class:`RenderParsing`, the local stand-in for an
  ATR parser, as the flywheel's own local parsing backend is): it says where each part is, never what
  the prompt asked for. Heads: ``region_judge_heads.npz``; Acc_all 0.96 on renders of the prompts' own
  attributes, 0.41 (chance) on shuffled pairs;
* images the renderer did not draw (generated ones): the learned
  :class:`~cosmicman.simulation.pixel_parser.PixelParser`, from pixels alone. Heads:
  ``region_judge_pixel_heads.npz``; weaker (Acc_all 0.68 on the same renders, 0.40 shuffled).

Rebuild the committed heads (``region_judge_heads.npz`` beside this module)::

    python -m cosmicman.simulation.region_judge --count 2500 --seed 93000
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.core.protocol import Protocol, load_protocol
from cosmicman.evaluation.questions import NO, ROOT_ID, YES, Question
from cosmicman.simulation.palette import (
    BACKDROPS,
    COLORS,
    FACE,
    HAIR_COLORS,
    LIGHTING,
    SKIN_TONES,
    STOCKINGS,
    SUNGLASSES_TINTS,
)
from cosmicman.simulation.world import SyntheticWorld

HEADS_PATH = Path(__file__).with_name("region_judge_heads.npz")
JUDGE_NAME = "synthetic-region-reader"
N_LABELS = 18
_BANDS = 6
_PROFILE_BANDS = 24
_FACE_GRID = (8, 5)
_PROTOS = np.array(list(COLORS.values()) + list(HAIR_COLORS.values()) + list(SKIN_TONES.values()), np.float32)
# Colour categories read from pixels: (ATR labels of the region, the world's colour names for it).
COLOUR_READS: dict[str, tuple[tuple[int, ...], Mapping[str, tuple[int, int, int]]]] = {
    "hair_color": ((2,), HAIR_COLORS),
    "hat_color": ((1,), COLORS),
    "top_color": ((4,), COLORS),
    "dress_color": ((7,), COLORS),
    "skirt_color": ((5,), COLORS),
    "pants_color": ((6,), COLORS),
    "belt_color": ((8,), COLORS),
    "bag_color": ((16,), COLORS),
    "scarf_color": ((17,), COLORS),
    "background_color": ((0,), BACKDROPS),
    "sunglasses_color": ((3,), SUNGLASSES_TINTS),
    "stockings_color": ((12, 13), STOCKINGS),
}
_LIGHT = {name: float(np.mean(bounds)) for name, bounds in LIGHTING.items()}
# Every shoe's lower half is its sole (light or dark): the shoe's colour is read in its upper part.
SHOES_UPPER = 0.45
# Garment labels whose pattern statistics the heads read (hat, top, skirt, pants, dress, bag, scarf).
_PATTERNED = (1, 4, 5, 6, 7, 16, 17)
_MOUTH_GRID = (10, 4)

Parse = Callable[[Image.Image], np.ndarray]


def _lab(rgb: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0)
    return cv2.cvtColor(a, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def _name_shares(px: np.ndarray) -> np.ndarray:
    d = ((px[:, None, :] - _PROTOS[None]) ** 2).sum(-1)
    w = np.exp(-(d - d.min(1, keepdims=True)) / (2 * 30.0**2))
    return (w / w.sum(1, keepdims=True)).mean(0)


def region_features(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The statistics the heads read, from an ``[H, W, 3]`` uint8 image and its ``[H, W]`` label map."""
    x = np.asarray(image, np.float32)
    lum = x.mean(2)
    gx = np.abs(np.diff(lum, axis=1, prepend=lum[:, :1]))
    gy = np.abs(np.diff(lum, axis=0, prepend=lum[:1]))
    fg = labels > 0
    height, width = labels.shape
    ys, xs = np.nonzero(fg)
    if len(ys):
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        tall = float(y1 - y0)
        low = ys > y0 + 0.6 * tall
        axis = float(np.median(xs[low])) if low.any() else float(xs.mean())
    else:
        y0, y1, tall, axis = 0, 0, 1.0, width / 2
    fg_area = max(int(fg.sum()), 1)
    out: list[float] = [
        float(len(ys) > 0),
        tall / height,
        axis / width,
        y1 / height,
        lum.mean() / 255,
        fg_area / fg.size,
    ]
    per_label = 1 + 4 + 6 + len(_PROTOS) + 2 + _BANDS
    for label in range(N_LABELS):
        region = labels == label
        n = int(region.sum())
        if n < 3:
            out += [0.0] * per_label
            continue
        ry, rx = np.nonzero(region)
        px = x[region]
        out.append(n / fg_area)
        out += [(ry.min() - y0) / tall, (ry.max() - y0) / tall, (rx.min() - axis) / tall, (rx.max() - axis) / tall]
        out += list(px.mean(0) / 255) + list(px.std(0) / 255)
        out += list(_name_shares(px[:: max(1, n // 400)]))
        out += [gx[region].mean() / 255, gy[region].mean() / 255]
        edges = np.linspace(ry.min(), ry.max() + 1, _BANDS + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            out.append(float(((ry >= a) & (ry < b)).sum()) / max(b - a, 1.0) / tall)
    edges = np.linspace(y0, y1, _PROFILE_BANDS + 1)
    for a, b in zip(edges[:-1], edges[1:]):
        band = fg[int(a) : max(int(b), int(a) + 1)]
        out.append(band.sum() / max(band.shape[0], 1) / tall)
    out += _face_grid(x, labels, y1)
    out += _pattern_stats(lum, labels)
    bg = ~fg
    for part in np.array_split(np.arange(height), 3):
        sel = bg[part]
        px = x[part][sel]
        if len(px) < 3:
            out += [0.0] * 8
            continue
        out += list(px.mean(0) / 255) + list(px.std(0) / 255)
        out += [gx[part][sel].mean() / 255, gy[part][sel].mean() / 255]
    return np.asarray(out, np.float32)


def _face_grid(x: np.ndarray, labels: np.ndarray, y1: int) -> list[float]:
    """Mean colours on a grid over the face: its top rows of Face label (lipstick, mouth, beard, eyes)."""
    fy, fx = np.nonzero(labels == FACE)
    rows, cols = _FACE_GRID
    if not len(fy):
        return [0.0] * (rows * cols * 3 + _MOUTH_GRID[0] * _MOUTH_GRID[1] * 2)
    top = int(fy.min())
    limit = top + 0.14 * (y1 - top)
    sel = fy < limit
    box = x[top : int(limit) + 1, int(fx[sel].min()) : int(fx[sel].max()) + 1]
    out: list[float] = []
    for r in np.array_split(np.arange(box.shape[0]), rows):
        for c in np.array_split(np.arange(box.shape[1]), cols):
            out += list(box[r][:, c].reshape(-1, 3).mean(0) / 255) if len(r) and len(c) else [0.0] * 3
    # the mouth, finer: lip redness and brightness (a smile is a raised crescent, a neutral mouth a flat line)
    mouth = box[int(0.45 * len(box)) : int(0.85 * len(box)) + 1]
    rows, cols = _MOUTH_GRID
    for r in np.array_split(np.arange(mouth.shape[0]), rows):
        for c in np.array_split(np.arange(mouth.shape[1]), cols):
            cell = mouth[r][:, c].reshape(-1, 3) if len(r) and len(c) else np.zeros((1, 3), np.float32)
            out += [float(cell[:, 0].mean() - cell[:, 1].mean()) / 255, float(cell.mean()) / 255]
    return out


def _pattern_stats(lum: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per patterned garment: the share of its inner pixels far from its median brightness (at two
    thresholds), and the shares of its rows and of its columns mostly made of such pixels (stripes
    fill rows, plaid rows and columns, dots neither)."""
    out: list[float] = []
    for label in _PATTERNED:
        inner = cv2.erode((labels == label).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if inner.sum() < 12:
            out += [0.0] * 4
            continue
        far = np.abs(lum - np.median(lum[inner])) > 40
        near = np.abs(lum - np.median(lum[inner])) > 25
        counts_r, counts_c = inner.sum(1), inner.sum(0)
        hits_r, hits_c = (far & inner).sum(1), (far & inner).sum(0)
        rows, cols = counts_r >= 4, counts_c >= 4
        row_full = float((hits_r[rows] > 0.6 * counts_r[rows]).mean()) if rows.any() else 0.0
        col_full = float((hits_c[cols] > 0.6 * counts_c[cols]).mean()) if cols.any() else 0.0
        out += [float(far[inner].mean()), float(near[inner].mean()), row_full, col_full]
    return out


def read_colour(
    image: np.ndarray,
    labels: np.ndarray,
    region_labels: Sequence[int],
    names: Mapping[str, tuple[int, int, int]],
    light: float,
) -> str | None:
    """The colour name most of the region's inner pixels are nearest to (in Lab, relit to ``light`` = 1);
    None when the region is empty."""
    region = np.isin(labels, region_labels).astype(np.uint8)
    inner = cv2.erode(region, np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() < 4:
        inner = region.astype(bool)
    if not inner.any():
        return None
    px = np.clip(np.asarray(image, np.float32)[inner] / light, 0, 255)
    protos = _lab(np.array(list(names.values()), np.float32))
    d = ((_lab(px)[:, None, :] - protos[None]) ** 2).sum(-1)
    votes = np.bincount(d.argmin(1), minlength=len(names))
    return list(names)[int(votes.argmax())]


class RegionReaderJudge:
    """The local judge (see the module docstring): ``parse`` gives each image's ATR label map."""

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
        parse: Parse,
        protocol: Protocol | None = None,
    ):
        self.protocol = protocol or load_protocol()
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.parse = parse
        missing = [c.name for c in self.protocol.categories if c.name not in self.weights]
        if missing:
            raise ValueError(f"the judge's heads lack categories {missing}: rebuild them (python -m {__name__})")
        h = hashlib.sha256(self.mean.tobytes() + self.std.tobytes())
        for name in sorted(self.weights):
            h.update(name.encode() + self.weights[name].tobytes())
        self._version = h.hexdigest()[:16]

    @property
    def name(self) -> str:
        return JUDGE_NAME

    @property
    def version(self) -> str:
        return self._version

    @classmethod
    def load(cls, parse: Parse, path: str | Path = HEADS_PATH, protocol: Protocol | None = None) -> RegionReaderJudge:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no judge heads at {str(path)!r}: build them with python -m {__name__} --out {path}"
            )
        with np.load(path) as data:
            weights = {k[2:]: data[k] for k in data.files if k.startswith("w:")}
            return cls(weights, data["mean"], data["std"], parse, protocol)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {"mean": self.mean, "std": self.std}
        arrays |= {f"w:{k}": v for k, v in self.weights.items()}
        np.savez_compressed(path, **arrays)

    def read(self, image: Image.Image) -> dict[str, str]:
        """The value this judge sees for every protocol category (whether or not it applies)."""
        rgb = np.asarray(image.convert("RGB"))
        labels = self.parse(image)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"parsing of shape {labels.shape} for an image of {rgb.shape[:2]}")
        z = (region_features(rgb, labels) - self.mean) / self.std
        z1 = np.append(z, 1.0)
        seen = {c.name: c.answers[int((z1 @ self.weights[c.name]).argmax())] for c in self.protocol.categories}
        light = _LIGHT[seen["lighting"]]
        for name, (region_labels, names) in COLOUR_READS.items():
            colour = read_colour(rgb, labels, region_labels, names, light)
            if colour is not None:
                seen[name] = colour
        shoes = labels.copy()
        for label in (9, 10):
            rows = np.nonzero((labels == label).any(1))[0]
            if len(rows):
                cut = rows.min() + SHOES_UPPER * (rows.max() - rows.min())
                shoes[int(cut) + 1 :][shoes[int(cut) + 1 :] == label] = 0
        shoe_colour = read_colour(rgb, shoes, (9, 10), COLORS, light)
        if shoe_colour is not None:
            seen["shoes_color"] = shoe_colour
        seen[ROOT_ID] = YES if (labels > 0).mean() > 0.01 else NO
        return seen

    def answer(self, images: Sequence[Image.Image], questions: Sequence[Sequence[Question]]) -> list[list[str]]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} question lists")
        by_name = self.protocol.by_name
        out = []
        for image, qs in zip(images, questions):
            seen = self.read(image)
            answers = []
            for q in qs:
                if q.category is None:
                    answers.append(seen[ROOT_ID])
                elif by_name[q.category].answers == (YES, NO):
                    answers.append(seen[q.category])
                else:  # "is the hat red?" is a no where this judge sees no hat
                    holds = seen[q.category] == q.value and by_name[q.category].applies(seen)
                    answers.append(YES if holds else NO)
            out.append(answers)
        return out


class RenderParsing:
    """The renderer's label map of each rendered image, found by the image's pixels (a parser stand-in)."""

    def __init__(self, renders: Sequence[tuple[Image.Image, np.ndarray]] = ()):
        self._maps: dict[str, np.ndarray] = {}
        for image, labels in renders:
            self.add(image, labels)

    @staticmethod
    def _key(image: Image.Image) -> str:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()

    def add(self, image: Image.Image, labels: np.ndarray) -> None:
        self._maps[self._key(image)] = labels

    def __call__(self, image: Image.Image) -> np.ndarray:
        labels = self._maps.get(self._key(image))
        if labels is None:
            raise KeyError("no label map for this image: RenderParsing parses only the renders it was given")
        return labels


def render_prompts(prompts: Sequence[Mapping[str, str]], seed: int) -> tuple[list[Image.Image], RenderParsing]:
    """One render per prompt (its attributes drawn exactly), and the parsing of those renders."""
    world = SyntheticWorld(seed=seed)
    images, parsing = [], RenderParsing()
    for i, attributes in enumerate(prompts):
        image, labels, _ = world.render(attributes, np.random.default_rng([seed, i]))
        if labels is None:
            raise ValueError(f"prompt {i} rendered without a person")
        images.append(image)
        parsing.add(image, labels)
    return images, parsing


def train_region_judge(
    images: Sequence[Image.Image],
    parsing: Parse,
    attributes: Sequence[Mapping[str, str]],
    l2: float = 1e-2,
    protocol: Protocol | None = None,
) -> RegionReaderJudge:
    """Fit one linear softmax head per category (class-balanced, L2) on images with their parsing and
    attributes; returns a :class:`RegionReaderJudge` that parses with ``parsing``."""
    import torch

    protocol = protocol or load_protocol()
    if len(images) != len(attributes):
        raise ValueError(f"{len(images)} images for {len(attributes)} attribute sets")
    x = np.stack([region_features(np.asarray(image), parsing(image)) for image in images])
    mean, std = x.mean(0), x.std(0) + 1e-3
    z = torch.tensor(np.hstack([(x - mean) / std, np.ones((len(x), 1), np.float32)]))
    weights = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for cat in protocol.categories:
            idx = [i for i, a in enumerate(attributes) if cat.name in a]
            k = len(cat.answers)
            w = torch.zeros(z.shape[1], k, requires_grad=True)
            if idx:
                y = torch.tensor([cat.answers.index(attributes[i][cat.name]) for i in idx])
                counts = torch.bincount(y, minlength=k).float()
                balance = counts.sum() / (k * counts.clamp(min=1))
                opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

                def closure(zi=z[idx], y=y, balance=balance, w=w, opt=opt) -> torch.Tensor:
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(zi @ w, y, weight=balance) + l2 * (w[:-1] ** 2).sum() / 2
                    loss.backward()
                    return loss

                opt.step(closure)
            weights[cat.name] = w.detach().numpy()
    return RegionReaderJudge(weights, mean, std, parsing, protocol)


def world_people(seed: int, count: int) -> list[dict[str, str]]:
    """``count`` people's attributes drawn by the world of ``seed``."""
    world = SyntheticWorld(seed=seed)
    rng = np.random.default_rng([seed, 0x7E57])
    return [world.random_attributes(rng) for _ in range(count)]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the local judge's heads on renders of the synthetic world.")
    p.add_argument("--count", type=int, default=2500)
    p.add_argument("--seed", type=int, default=93_000)
    p.add_argument("--out", default=str(HEADS_PATH))
    args = p.parse_args(argv)
    people = world_people(args.seed, args.count)
    images, parsing = render_prompts(people, args.seed)
    judge = train_region_judge(images, parsing, people)
    judge.save(args.out)
    print(f"{args.out}: {JUDGE_NAME} {judge.version} from {args.count} renders of world {args.seed}")


if __name__ == "__main__":
    main()
