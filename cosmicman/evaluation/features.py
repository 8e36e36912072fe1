"""Image features for FID / KID: the production Inception-v3 and a local stand-in, with their preprocessing.

Conventions (what clean-fid / pytorch-fid / the TF FID do, and which of them we follow):

* **Quantization.** Every image becomes 8-bit RGB first, as generated samples are when saved as PNG:
  PIL images convert to RGB; float arrays are read as [0, 1] and quantized with ``round(x * 255)``
  (diffusers' ``numpy_to_pil``); uint8 arrays pass unchanged. FID of unquantized floats is not
  comparable with published numbers (clean-fid, "On Aliased Resizing and Surprising Subtleties in GAN
  Evaluation").
* **Resize to 299** (:func:`clean_resize`, the default ``convention="clean"``): clean-fid's "clean"
  mode: each channel as a float32 PIL image, bicubic (antialiased) resize to 299x299, values clipped to
  [0, 255] and *not* re-quantized, then ``(x - 128) / 128`` into the Inception layers.
  ``convention="legacy_tensorflow"`` instead hands the uint8 image to the TorchScript model, which
  resizes with the TF-1 bilinear kernel itself: clean-fid's "legacy_tensorflow" mode, the numbers of the
  original TF FID and StyleGAN. pytorch-fid's own port (bilinear ``F.interpolate`` on its
  ``pt_inception`` weights) is close to the legacy numbers and not offered separately.
* :class:`InceptionFeatures` loads the TorchScript Inception-v3 of the StyleGAN / clean-fid lineage
  (``inception-2015-12-05.pt``, 2048-d pool3) from a *local* path; nothing is downloaded.
* :class:`RandomConvFeatures` is the local stand-in: a fixed, seeded random conv net. It is **not**
  Inception: its :attr:`name` (which every result carries) says so, and its distances are comparable only
  with distances over the same seed, dim and size, never with published FID numbers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "CONVENTIONS",
    "INCEPTION_ENV_VAR",
    "INCEPTION_SIZE",
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomConvConfig",
    "RandomConvFeatures",
    "clean_resize",
    "images_to_array",
    "to_uint8_rgb",
]

INCEPTION_ENV_VAR = "COSMICMAN_INCEPTION_PATH"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
CONVENTIONS = ("clean", "legacy_tensorflow")


class FeatureExtractor(Protocol):
    """What the metrics need of an extractor: a name recorded with every result, a dim, and features."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def __call__(self, images: Sequence[Any]) -> np.ndarray: ...


def to_uint8_rgb(image: Any) -> np.ndarray:
    """One image (PIL, encoded bytes, HxW or HxWx3 array) -> ``HxWx3`` uint8, quantized as documented above."""
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image must be HxW or HxWx3, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"image arrays must be uint8 or float in [0, 1], got {arr.dtype}")


def images_to_array(images: Iterable[Any], size: tuple[int, int] | None = None) -> np.ndarray:
    """Images -> uint8 ``[N, 3, H, W]``; bilinear-resized to ``size`` (W, H) when given (the stand-in's input)."""
    out = []
    for img in images:
        arr = to_uint8_rgb(img)
        if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
            arr = np.asarray(Image.fromarray(arr).resize((size[0], size[1]), Image.Resampling.BILINEAR))
        out.append(arr.transpose(2, 0, 1))
    if not out:
        raise ValueError("no images given")
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size=(W, H)")
    return np.stack(out)


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize: uint8 ``HxWx3`` -> float32 ``size x size x 3`` in [0, 255], not re-quantized.

    Each channel is resized on its own as a 32-bit float PIL image (mode ``F``) with the bicubic filter,
    which PIL antialiases when downsampling, then clipped to [0, 255].
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"clean_resize takes a uint8 HxWx3 image, got {arr.dtype} {arr.shape}")
    channels = [
        np.asarray(
            Image.fromarray(arr[:, :, c].astype(np.float32), mode="F").resize(
                (size, size), resample=Image.Resampling.BICUBIC
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 255.0).astype(np.float32)


class InceptionFeatures:
    """Production FID features: TorchScript Inception-v3 (2048-d pool3) from a local file.

    The file is the StyleGAN / clean-fid ``inception-2015-12-05.pt``: ``model(uint8 NCHW,
    return_features=True)`` resizes inside (``legacy_tensorflow``), and its ``layers`` submodule takes
    already-resized, ``(x - 128) / 128``-normalized input (``clean``, the default). The path is the
    argument or ``COSMICMAN_INCEPTION_PATH``; a missing file raises FileNotFoundError in one line.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        convention: str = "clean",
        batch_size: int = 32,
        device: str = "cpu",
    ):
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        raw = weights_path or os.environ.get(INCEPTION_ENV_VAR)
        if not raw:
            raise FileNotFoundError(
                f"InceptionFeatures needs local weights: pass weights_path or set {INCEPTION_ENV_VAR} to the "
                f"TorchScript '{INCEPTION_FILENAME}' (nothing is downloaded; offline, use RandomConvFeatures)"
            )
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {str(path)!r}: place the TorchScript '{INCEPTION_FILENAME}' "
                f"there or set {INCEPTION_ENV_VAR} (nothing is downloaded; offline, use RandomConvFeatures)"
            )
        try:
            model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - re-raised as one line with the path
            raise RuntimeError(f"{path} is not a loadable TorchScript Inception model: {exc}") from exc
        if convention == "clean" and not hasattr(model, "layers"):
            raise ValueError(
                f"{path} has no 'layers' submodule, which convention='clean' feeds; use the clean-fid / "
                f"StyleGAN '{INCEPTION_FILENAME}' or convention='legacy_tensorflow'"
            )
        self.model = model
        self.path = path
        self.convention = convention
        self.device = device
        self.batch_size = int(batch_size)

    @property
    def name(self) -> str:
        return f"inception-v3-torchscript:{self.path.name}:{self.convention}"

    @property
    def dim(self) -> int:
        return INCEPTION_DIM

    def _batch_features(self, batch: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            if self.convention == "clean":
                resized = np.stack([clean_resize(img) for img in batch]).transpose(0, 3, 1, 2)
                x = (torch.from_numpy(resized).to(self.device) - 128.0) / 128.0
                out = self.model.layers(x)
            else:  # one input size per call: the model resizes each batch to 299 itself
                x = torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2)).to(self.device)
                out = self.model(x, return_features=True)
        return out.reshape(len(batch), -1).float().cpu().numpy().astype(np.float64)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        arrays = [to_uint8_rgb(img) for img in images]
        if not arrays:
            raise ValueError("no images given")
        if self.convention == "legacy_tensorflow" and len({a.shape for a in arrays}) != 1:
            raise ValueError("convention='legacy_tensorflow' needs images of one size; use convention='clean'")
        chunks = [self._batch_features(arrays[i : i + self.batch_size]) for i in range(0, len(arrays), self.batch_size)]
        return np.concatenate(chunks)


@dataclass(frozen=True)
class RandomConvConfig:
    """The stand-in extractor's whole definition: the same config gives the same features, bit for bit."""

    seed: int = 0
    dim: int = 64
    size: tuple[int, int] = (64, 128)  # (W, H) every image is resized to
    channels: tuple[int, ...] = (16, 32, 64, 96)


class RandomConvFeatures:
    """The local stand-in for Inception: a fixed, seeded random conv net. NOT Inception.

    Each image is resized to ``size`` (W, H), scaled to [-1, 1], passed through stride-2 conv +
    leaky-ReLU layers with weights drawn from ``seed`` (He-scaled, no training); the output concatenates
    global mean and std pooling of the last map, projected to ``dim`` by a fixed random matrix. Random
    conv features separate image statistics (colour, texture, layout) but know nothing of people, so
    its distances rank models only roughly and are comparable only under the same config.
    """

    def __init__(
        self,
        seed: int = 0,
        dim: int = 64,
        size: tuple[int, int] = (64, 128),
        batch_size: int = 64,
        channels: tuple[int, ...] = (16, 32, 64, 96),
    ):
        self.config = RandomConvConfig(int(seed), int(dim), (int(size[0]), int(size[1])), tuple(channels))
        self.batch_size = int(batch_size)
        gen = torch.Generator().manual_seed(self.config.seed)
        chans = [3, *self.config.channels]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            assert conv.bias is not None  # Conv2d's default bias=True
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.proj = torch.randn(2 * chans[-1], self.config.dim, generator=gen) / (2 * chans[-1]) ** 0.5

    @classmethod
    def from_config(cls, config: RandomConvConfig, batch_size: int = 64) -> RandomConvFeatures:
        return cls(config.seed, config.dim, config.size, batch_size, config.channels)

    @property
    def name(self) -> str:
        c = self.config
        return f"stand-in-random-conv-not-inception:s{c.seed}-d{c.dim}-{c.size[0]}x{c.size[1]}"

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def size(self) -> tuple[int, int]:
        return self.config.size

    @property
    def seed(self) -> int:
        return self.config.seed

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` at :attr:`size` -> float32 ``[N, dim]`` features."""
        with torch.no_grad():
            h = self.net(images.float() / 127.5 - 1.0)
            pooled = torch.cat([h.mean(dim=(2, 3)), h.flatten(2).std(dim=2)], dim=1)
            return pooled @ self.proj

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        arr = images_to_array(images, size=self.size)
        feats = [
            self.embed(torch.from_numpy(arr[i : i + self.batch_size])).numpy()
            for i in range(0, len(arr), self.batch_size)
        ]
        return np.concatenate(feats).astype(np.float64)
