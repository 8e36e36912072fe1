"""Image embeddings the fake-person head reads: :class:`OfflineImageFeatures` locally (flatness / noise /
outline / colour statistics), :class:`ClipImageEmbedder` in production."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.filtering.backends import BackendUnavailable
from cosmicman.filtering.pixels import noise_sigma


class OfflineImageFeatures:
    """A hand-made image embedding standing in for CLIP locally (documented, 10 dims).

    Computed on the image capped to 640 px on its long side:
    0 flat fraction: unclipped pixels whose 3x3 grey neighbourhood is constant (cartoons ~0.8, photos ~0)
    1 noise sigma (Immerkaer's Laplacian-difference estimate), 2 log(1 + noise)
    3 unique-colour ratio (6-bit RGB codes / 4096), 4 dark-outline fraction (near-black pixels on edges)
    5 edge density (Canny), 6 mean saturation, 7 saturation std, 8 grey std / 64, 9 mean gradient / 32
    """

    name = "offline_features"
    dim = 10

    def setup(self) -> None:
        pass

    def embed(self, img: Image.Image) -> np.ndarray:
        a = np.asarray(img.convert("RGB"))
        s = min(1.0, 640 / max(a.shape[:2]))
        if s < 1.0:
            a = cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        g = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        k = np.ones((3, 3), np.uint8)
        rng = cv2.dilate(g, k).astype(np.int16) - cv2.erode(g, k).astype(np.int16)
        unclipped = (g > 3) & (g < 252)
        flat = float(((rng == 0) & unclipped).sum()) / max(1, int(unclipped.sum()))
        noise = noise_sigma(g)
        codes = ((a[..., 0] >> 2).astype(np.int32) << 12) | ((a[..., 1] >> 2).astype(np.int32) << 6) | (a[..., 2] >> 2)
        uniq = len(np.unique(codes)) / 4096.0
        edges = cv2.Canny(g, 60, 160) > 0
        dark = g < 40
        outline = float((cv2.dilate(edges.astype(np.uint8), k) > 0)[dark].mean()) if dark.any() else 0.0
        outline *= float(dark.mean()) * 10
        hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)
        sat = hsv[..., 1].astype(np.float32) / 255
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
        grad = float(np.sqrt(gx * gx + gy * gy).mean())
        return np.array(
            [
                flat,
                noise,
                math.log1p(noise),
                uniq,
                outline,
                float(edges.mean()),
                float(sat.mean()),
                float(sat.std()),
                float(g.std()) / 64,
                grad / 32,
            ],
            np.float32,
        )


class ClipImageEmbedder:
    """Production embedding: a CLIP vision tower's image features (the paper fine-tunes Eva-CLIP)."""

    name = "clip"

    def __init__(
        self, model_id: str = "openai/clip-vit-large-patch14", local_files_only: bool = False, device: str = "cpu"
    ) -> None:
        self.model_id, self.local_files_only, self.device = model_id, local_files_only, device
        # the transformers CLIP model and its image processor, loaded in setup()
        self._model: Any = None
        self._processor: Any = None

    def setup(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import CLIPImageProcessor, CLIPModel

            self._processor = CLIPImageProcessor.from_pretrained(self.model_id, local_files_only=self.local_files_only)
            model: Any = CLIPModel.from_pretrained(self.model_id, local_files_only=self.local_files_only)
            self._model = model.to(self.device).eval()
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailable(
                f"ClipImageEmbedder needs CLIP weights for {self.model_id!r} (hub id or local folder with "
                f"config.json, weights and preprocessor_config.json; local_files_only={self.local_files_only}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def embed(self, img: Image.Image) -> np.ndarray:
        import torch

        self.setup()
        inputs = self._processor(images=img.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            f = self._model.get_image_features(**inputs)
        f = getattr(f, "pooler_output", f)
        f = f / f.norm(dim=-1, keepdim=True)
        return f[0].float().cpu().numpy()
