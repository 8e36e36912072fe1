"""A learned human parser for images of the synthetic world that come with no label map (generated ones).

Per pixel, at half resolution: its colour, box means of its neighbourhood at three scales, the local
spread of brightness at two, its colour distance to the row's background (estimated from the outer
columns, as a photographer's backdrop shows there) and its place in the person's frame (head top, feet
and body axis found from that distance), fed to a small MLP that predicts the ATR label. It is trained
by our code on renders and their label maps (:func:`train_pixel_parser`) and parses from pixels alone,
so the region judge can read images the renderer did not draw, at a cost in accuracy the tests measure.

Rebuild the committed weights (``pixel_parser.pt`` beside this module) and the region judge's heads
trained on this parser's label maps (``region_judge_pixel_heads.npz``)::

    python -m cosmicman.simulation.pixel_parser --count 150 --seed 95000 --heads-count 1500 --heads-seed 97000
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cosmicman.simulation.region_judge import (
    N_LABELS,
    RegionReaderJudge,
    render_prompts,
    train_region_judge,
    world_people,
)

WEIGHTS_PATH = Path(__file__).with_name("pixel_parser.pt")
PIXEL_HEADS_PATH = Path(__file__).with_name("region_judge_pixel_heads.npz")
SCALE = 2  # features and predictions at 1 / SCALE of the image's size
_HIDDEN = 96
_FG_DISTANCE = 0.08


def pixel_features(image: Image.Image) -> np.ndarray:
    """``[h, w, F]`` float32 features at 1 / SCALE resolution (see the module docstring)."""
    full = np.asarray(image.convert("RGB"), np.float32) / 255.0
    size = (max(image.width // SCALE, 1), max(image.height // SCALE, 1))
    x = np.asarray(cv2.resize(full, size, interpolation=cv2.INTER_AREA), np.float32)
    h, w = x.shape[:2]
    feats = [x] + [cv2.blur(x, (k, k)) for k in (5, 13, 31)]
    lum = x.mean(2)
    for k in (5, 13):
        m, m2 = cv2.blur(lum, (k, k)), cv2.blur(lum * lum, (k, k))
        feats.append(np.sqrt(np.clip(m2 - m * m, 0, None))[..., None])
    edge = max(2, int(0.06 * w))
    left = cv2.blur(x[:, :edge].mean(1, keepdims=True), (1, 9))
    right = cv2.blur(x[:, -edge:].mean(1, keepdims=True), (1, 9))
    near = cv2.blur(x, (5, 5))
    distance = np.minimum(np.linalg.norm(near - left, axis=2), np.linalg.norm(near - right, axis=2))
    feats.append(distance[..., None])
    fg = distance > _FG_DISTANCE
    rows = np.nonzero(fg.sum(1) >= 2)[0]
    top, bottom = (int(rows.min()), int(rows.max())) if len(rows) else (0, h - 1)
    cols = np.nonzero(fg[(top + bottom) // 2 : bottom + 1])[1]
    axis = float(np.median(cols)) if len(cols) else w / 2
    tall = max(bottom - top, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    feats += [((yy - top) / tall)[..., None], ((xx - axis) / tall)[..., None], (yy / h)[..., None], (xx / w)[..., None]]
    return np.concatenate(feats, axis=2).astype(np.float32)


# colour 3, box means 9, brightness spread 2, background distance 1, frame and image coordinates 4
N_FEATURES = 19


def _net():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, _HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(_HIDDEN, _HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(_HIDDEN, N_LABELS),
    )


class PixelParser:
    """Image -> ``[H, W]`` ATR label map (predicted at 1 / SCALE, repeated up to the image's size)."""

    def __init__(self, state: dict):
        import torch

        self.net = _net()
        self.net.load_state_dict(state)
        self.net.eval()
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode() + state[k].detach().cpu().numpy().tobytes())
        self.version = h.hexdigest()[:16]
        self._torch = torch

    @classmethod
    def load(cls, path: str | Path = WEIGHTS_PATH) -> PixelParser:
        import torch

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no pixel parser at {str(path)!r}: build it with python -m {__name__} --out {path}"
            )
        return cls(torch.load(path, map_location="cpu", weights_only=True))

    def save(self, path: str | Path) -> None:
        self._torch.save(self.net.state_dict(), path)

    def __call__(self, image: Image.Image) -> np.ndarray:
        f = pixel_features(image)
        with self._torch.no_grad():
            logits = self.net(self._torch.from_numpy(f.reshape(-1, f.shape[2])))
        small = logits.argmax(1).numpy().astype(np.uint8).reshape(f.shape[:2])
        return cv2.resize(small, (image.width, image.height), interpolation=cv2.INTER_NEAREST)


def train_pixel_parser(
    images: Sequence[Image.Image], label_maps: Sequence[np.ndarray], epochs: int = 8, seed: int = 0
) -> PixelParser:
    """Fit the MLP on pixels sampled from each image (3000 of the person, 1000 of the background)."""
    import torch

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for image, labels in zip(images, label_maps):
        f = pixel_features(image)
        small = cv2.resize(labels, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_NEAREST).reshape(-1)
        flat = f.reshape(-1, f.shape[2])
        person, background = np.nonzero(small > 0)[0], np.nonzero(small == 0)[0]
        pick = np.concatenate(
            [
                rng.choice(person, min(3000, len(person)), replace=False),
                rng.choice(background, min(1000, len(background)), replace=False),
            ]
        )
        xs.append(flat[pick])
        ys.append(small[pick])
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _net()
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 4096):
                batch = perm[i : i + 4096]
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return PixelParser(net.state_dict())


def local_judge(parser_path: str | None = None, heads_path: str | None = None) -> RegionReaderJudge:
    """The local environment's semantic-accuracy judge for any image (generated or real): the region
    judge over this pixel parser, from the committed weights unless paths are named. The evaluation
    config's ``{"kind": "python", "factory": "cosmicman.simulation.pixel_parser:local_judge"}`` builds it."""
    parser = PixelParser.load(parser_path or WEIGHTS_PATH)
    return RegionReaderJudge.load(parser, heads_path or PIXEL_HEADS_PATH)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the local pixel parser on renders of the synthetic world.")
    p.add_argument("--count", type=int, default=150)
    p.add_argument("--seed", type=int, default=95_000)
    p.add_argument("--out", default=str(WEIGHTS_PATH))
    p.add_argument("--heads-count", type=int, default=1500)
    p.add_argument("--heads-seed", type=int, default=97_000)
    p.add_argument("--heads-out", default=str(PIXEL_HEADS_PATH))
    args = p.parse_args(argv)
    people = world_people(args.seed, args.count)
    images, parsing = render_prompts(people, args.seed)
    parser = train_pixel_parser(images, [parsing(im) for im in images])
    parser.save(args.out)
    print(f"{args.out}: pixel parser {parser.version} from {args.count} renders of world {args.seed}")
    # the region judge's heads learn what this parser's label maps look like, errors included
    people = world_people(args.heads_seed, args.heads_count)
    images, _ = render_prompts(people, args.heads_seed)
    judge = train_region_judge(images, parser, people)
    judge.save(args.heads_out)
    print(f"{args.heads_out}: region judge {judge.version} over the pixel parser, from {args.heads_count} renders")


if __name__ == "__main__":
    main()
