"""Quality scorers: :class:`OfflineQualityScorer` (sharpness, exposure, noise; documented ranges and what
the default threshold rejects); production :class:`PyiqaQualityScorer` (LIQE) or :class:`HpsV2Scorer`.
Every scorer returns its raw components and ``quality`` in [0, 1]; the chain stores them all."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cosmicman.filtering.backends import BackendUnavailable
from cosmicman.filtering.pixels import gray, noise_sigma


class OfflineQualityScorer:
    """Offline no-reference quality from three measurements; each becomes a score in [0, 1] and
    ``quality`` is the lowest of the three (the weakest aspect decides). All are stored (``q_<name>``).

    - ``sharpness``: variance of the Laplacian of the grey image area-resized so its short side is
      ``norm_short`` px (downscaling first averages sensor noise away and makes the figure independent of
      image size). Range [0, inf): grey levels squared; scikit-image's astronaut and camera photos give
      ~3200 and ~2150, the world's sharp renders 150-3200, its blurred ones 2-30. ``sharpness_score`` is
      log-linear: 0 at ``sharp_lo`` (25), 1 at ``sharp_hi`` (50).
    - ``luminance``: mean grey level / 255 in [0, 1]; ``clipped``: share of pixels <= 4 or >= 251, in
      [0, 1]. ``exposure_score`` is 1 for a mean inside [``lum_lo``, ``lum_hi``] (0.22-0.85) and falls
      linearly to 0 at half of ``lum_lo`` or halfway from ``lum_hi`` to white; it is capped by a clipping
      score that falls from 1 at ``max_clipped`` (25 %) to 0 at twice that.
    - ``noise``: Immerkaer's estimate of Gaussian noise sigma of the full-size grey image, grey levels; range
      [0, ~100); the two photos give 2.4 and 3.6, renders 0.5-1.5. ``noise_score`` falls linearly from 1
      at ``noise_ok`` (8) to 0 at ``noise_bad`` (20).

    With the default ``min_quality`` 0.5 an image is rejected as ``low_quality`` when any of: sharpness
    below 35 (25 x sqrt 2, a clearly blurred or upscaled image); mean luminance below 0.165 or above 0.8875;
    more than 37.5 % of pixels clipped; noise sigma above 14 grey levels.
    """

    name = "offline_quality"

    def __init__(
        self,
        norm_short: int = 128,
        sharp_lo: float = 25.0,
        sharp_hi: float = 50.0,
        lum_lo: float = 0.22,
        lum_hi: float = 0.85,
        max_clipped: float = 0.25,
        noise_ok: float = 8.0,
        noise_bad: float = 20.0,
    ) -> None:
        self.norm_short, self.sharp_lo, self.sharp_hi = norm_short, sharp_lo, sharp_hi
        self.lum_lo, self.lum_hi, self.max_clipped = lum_lo, lum_hi, max_clipped
        self.noise_ok, self.noise_bad = noise_ok, noise_bad

    def setup(self) -> None:
        pass

    def score(self, img: Image.Image) -> dict[str, float]:
        g = gray(img)
        s = self.norm_short / min(g.shape)
        small = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        lapvar = float(cv2.Laplacian(small.astype(np.float32), cv2.CV_32F).var())
        q_sharp = float(
            np.clip(math.log(max(lapvar, 1e-6) / self.sharp_lo) / math.log(self.sharp_hi / self.sharp_lo), 0, 1)
        )
        lum = float(g.mean()) / 255
        clipped = float(((g <= 4) | (g >= 251)).mean())
        q_lum = 1.0
        if lum < self.lum_lo:
            q_lum = max(0.0, lum / self.lum_lo * 2 - 1)  # 0 at half the lower bound
        elif lum > self.lum_hi:
            q_lum = max(0.0, 1 - (lum - self.lum_hi) / ((1 - self.lum_hi) / 2))
        q_clip = 1.0
        if clipped > self.max_clipped:
            q_clip = float(np.clip(1 - (clipped - self.max_clipped) / self.max_clipped, 0, 1))
        noise = noise_sigma(g)
        q_noise = float(np.clip(1 - (noise - self.noise_ok) / (self.noise_bad - self.noise_ok), 0, 1))
        q_expo = min(q_lum, q_clip)
        return {
            "sharpness": lapvar,
            "sharpness_score": q_sharp,
            "luminance": lum,
            "clipped": clipped,
            "exposure_score": q_expo,
            "noise": noise,
            "noise_score": q_noise,
            "quality": min(q_sharp, q_expo, q_noise),
        }


class PyiqaQualityScorer:
    """Production no-reference quality: LIQE through pyiqa (``pyiqa.create_metric("liqe")``).

    LIQE (Zhang et al., CVPR 2023) scores CLIP ViT-B/32 crops against "a photo with {bad, poor, fair, good,
    perfect} quality" and returns the expected level, 1 to 5. Components: ``<metric>`` (the raw score,
    e.g. ``liqe``) and ``quality`` = (score - 1) / 4 clipped to [0, 1]; the default ``min_quality`` 0.5
    rejects images LIQE rates below "fair" (3.0). Images with a short side under 224 px are upscaled
    (LIQE's crops are 224 px and pyiqa refuses smaller inputs).

    Install ``pyiqa`` in the production image only: it depends on torchvision, which the local
    environment never installs. Weights: the LIQE checkpoint (``liqe_koniq.pt``, downloaded by pyiqa on
    first use, or a local copy passed as ``pretrained_model_path``) and OpenAI CLIP ViT-B/32 (clip's
    cache, ``~/.cache/clip/ViT-B-32.pt``).
    """

    name = "liqe"

    def __init__(
        self,
        metric: str = "liqe",
        device: str = "cpu",
        pretrained_model_path: str | None = None,
        score_range: tuple[float, float] = (1.0, 5.0),
    ) -> None:
        self.metric, self.device, self.pretrained_model_path = metric, device, pretrained_model_path
        self.score_range = score_range
        self._metric: Any = None  # the pyiqa metric, built in setup()

    def setup(self) -> None:
        if self._metric is not None:
            return
        try:
            import pyiqa
        except ImportError as exc:
            raise BackendUnavailable(
                "PyiqaQualityScorer needs the pyiqa package (`pip install pyiqa`; it depends on torchvision, "
                "so install it in the production image only)"
            ) from exc
        options: dict[str, Any] = {"as_loss": False, "device": self.device}
        if self.pretrained_model_path:
            options["pretrained_model_path"] = self.pretrained_model_path
        try:
            self._metric = pyiqa.create_metric(self.metric, **options)
        except Exception as exc:  # noqa: BLE001 - re-raised with what is needed
            raise BackendUnavailable(
                f"pyiqa could not build {self.metric!r}: it needs the LIQE checkpoint (liqe_koniq.pt from pyiqa's "
                f"release downloads, or a local file as pretrained_model_path={self.pretrained_model_path!r}) and "
                f"OpenAI CLIP ViT-B/32 weights in clip's cache (~/.cache/clip): {type(exc).__name__}: {exc}"
            ) from exc

    def score(self, img: Image.Image) -> dict[str, float]:
        import torch

        self.setup()
        a = np.asarray(img.convert("RGB"))
        short = min(a.shape[:2])
        if short < 224:
            f = 224 / short
            a = cv2.resize(
                a, (max(224, round(a.shape[1] * f)), max(224, round(a.shape[0] * f))), interpolation=cv2.INTER_CUBIC
            )
        x = torch.from_numpy(np.asarray(a, np.float32) / 255).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            raw = float(self._metric(x).reshape(-1)[0])
        lo, hi = self.score_range
        return {self.metric: raw, "quality": float(np.clip((raw - lo) / (hi - lo), 0, 1))}


class HpsV2Scorer:
    """Production quality as human preference: HPS v2 (the ``hpsv2`` package, an OpenCLIP ViT-H/14
    fine-tuned on human preference pairs), scoring the image against a fixed prompt.

    Prompt: ``prompt`` ("a photo of a person" by default), not the record's alt text. This step asks how
    good a photo of a person the image is; web alt text is noisy (file names, SEO strings, other
    languages) and would fold caption alignment into a quality score, and captions are rebuilt by
    annotation downstream anyway. It also keeps the scorer's interface image-only, like every other.
    ``hpsv2.score`` returns the cosine similarity of image and prompt embeddings: HPS v2 benchmark images
    score about 0.20-0.30. Components: ``hpsv2`` (raw) and ``quality``, mapped linearly from
    ``score_range`` (0.20 -> 0, 0.30 -> 1, clipped): a calibration, not a property of the model, so set it
    from the scores of a labelled sample of the pool; with it the default ``min_quality`` 0.5 rejects raw
    scores below 0.25.

    Install ``hpsv2`` in the production image only (it depends on torchvision). Weights: the HPS v2
    checkpoint (hub repo ``xswu/HPSv2``, ``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt``) and OpenCLIP
    ViT-H-14 ``laion2B-s32B-b79K``, downloaded on first use or read from the Hugging Face cache (set
    ``HF_HUB_OFFLINE=1`` on workers without network).
    """

    name = "hpsv2"

    def __init__(
        self,
        prompt: str = "a photo of a person",
        hps_version: str = "v2.1",
        score_range: tuple[float, float] = (0.20, 0.30),
    ) -> None:
        self.prompt, self.hps_version, self.score_range = prompt, hps_version, score_range
        self._hpsv2: Any = None  # the hpsv2 module, imported in setup()

    def setup(self) -> None:
        if self._hpsv2 is not None:
            return
        try:
            import hpsv2
        except ImportError as exc:
            raise BackendUnavailable(
                "HpsV2Scorer needs the hpsv2 package (`pip install hpsv2`; it depends on torchvision, so install "
                "it in the production image only)"
            ) from exc
        # hpsv2 loads its model on the first score() call: score a blank image now, so missing weights fail
        # here, once per worker, rather than on the first record
        try:
            hpsv2.score(Image.new("RGB", (224, 224), (128, 128, 128)), self.prompt, hps_version=self.hps_version)
        except Exception as exc:  # noqa: BLE001 - re-raised with what is needed
            raise BackendUnavailable(
                f"hpsv2 could not score (hps_version={self.hps_version!r}): it needs the HPS v2 checkpoint from the "
                f"hub repo xswu/HPSv2 and OpenCLIP ViT-H-14 laion2B-s32B-b79K weights, downloaded or in the "
                f"Hugging Face cache: {type(exc).__name__}: {exc}"
            ) from exc
        self._hpsv2 = hpsv2

    def score(self, img: Image.Image) -> dict[str, float]:
        self.setup()
        raw = float(np.ravel(self._hpsv2.score(img.convert("RGB"), self.prompt, hps_version=self.hps_version))[0])
        lo, hi = self.score_range
        return {"hpsv2": raw, "quality": float(np.clip((raw - lo) / (hi - lo), 0, 1))}
