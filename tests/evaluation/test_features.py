"""Feature extractors and their preprocessing: quantization, clean-fid's resize, Inception loading, the stand-in."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cosmicman.evaluation.features import (
    INCEPTION_ENV_VAR,
    InceptionFeatures,
    RandomConvConfig,
    RandomConvFeatures,
    clean_resize,
    images_to_array,
    to_uint8_rgb,
)
from cosmicman.evaluation.frechet import frechet_distance


def test_quantization_rules():
    # float images are [0, 1], rounded as diffusers' numpy_to_pil does (0.5/255 rounds up, not down)
    floats = np.array([[[0.0, 0.5, 1.0], [1.2, -0.1, 0.5 / 255 + 1e-9]]])
    assert to_uint8_rgb(floats).tolist() == [[[0, 128, 255], [255, 0, 1]]]
    gray = np.array([[7, 9]], dtype=np.uint8)
    assert to_uint8_rgb(gray).shape == (1, 2, 3)
    buf = io.BytesIO()
    Image.new("RGBA", (3, 2), (10, 20, 30, 40)).save(buf, format="PNG")
    assert to_uint8_rgb(buf.getvalue()).tolist() == [[[10, 20, 30]] * 3] * 2
    with pytest.raises(ValueError, match="uint8 or float"):
        to_uint8_rgb(np.zeros((2, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="different sizes"):
        images_to_array([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])


def test_clean_resize_is_bicubic_per_channel_float_and_not_requantized():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    out = clean_resize(img)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    # not re-quantized: clean-fid keeps the float values of the resize
    assert np.any(np.abs(out - np.rint(out)) > 1e-3)
    # each channel on its own: the red channel equals the resize of the red channel alone
    red_only = img.copy()
    red_only[:, :, 1:] = 0
    np.testing.assert_array_equal(clean_resize(red_only)[:, :, 0], out[:, :, 0])
    # bicubic, not bilinear: the clean values differ from a bilinear float resize of the same channel
    bilinear = np.asarray(
        Image.fromarray(img[:, :, 0].astype(np.float32), mode="F").resize((299, 299), Image.Resampling.BILINEAR)
    )
    assert np.abs(bilinear - out[:, :, 0]).max() > 1.0
    # a flat image stays flat (to float32 round-off)
    flat = np.full((17, 23, 3), 77, dtype=np.uint8)
    assert np.abs(clean_resize(flat) - 77.0).max() < 1e-3
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        clean_resize(img.astype(np.float32))


class _Layers(nn.Module):
    """Stands in for Inception's ``layers``: per-channel mean plus the input's spatial size, to see what came in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([x.shape[2], x.shape[3]], dtype=x.dtype).expand(x.shape[0], 2)
        return torch.cat([x.mean(dim=(2, 3)), size], dim=1)[:, :, None, None]


class _TorchScriptInceptionInterface(nn.Module):
    """The call interface of clean-fid's TorchScript ``inception-2015-12-05.pt`` (not its weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128.0) / 128.0)


def test_inception_fails_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=INCEPTION_ENV_VAR) as missing:
        InceptionFeatures()
    assert "\n" not in str(missing.value)
    with pytest.raises(FileNotFoundError, match="not found") as absent:
        InceptionFeatures(tmp_path / "inception-2015-12-05.pt")
    assert "\n" not in str(absent.value)
    monkeypatch.setenv(INCEPTION_ENV_VAR, str(tmp_path / "elsewhere.pt"))
    with pytest.raises(FileNotFoundError, match="elsewhere.pt"):
        InceptionFeatures()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="not a loadable TorchScript"):
        InceptionFeatures(junk)
    with pytest.raises(ValueError, match="convention"):
        InceptionFeatures(junk, convention="pytorch_fid")


def test_inception_conventions_on_a_torchscript_of_the_same_interface(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_TorchScriptInceptionInterface()).save(str(path))
    images = [Image.new("RGB", (48, 64), (0, 128, 255)), np.full((64, 48, 3), 64, dtype=np.uint8)]
    expected_means = [[-1.0, 0.0, 127 / 128], [-0.5, -0.5, -0.5]]

    clean = InceptionFeatures(path, batch_size=1)
    assert clean.name == "inception-v3-torchscript:inception-2015-12-05.pt:clean" and clean.dim == 2048
    feats = clean(images)
    assert feats.dtype == np.float64 and feats.shape == (2, 5)
    np.testing.assert_allclose(feats[:, :3], expected_means, atol=1e-5)  # (x - 128) / 128 after our resize
    assert feats[:, 3:].tolist() == [[299, 299], [299, 299]]  # clean_resize fed the layers at 299

    legacy = InceptionFeatures(path, convention="legacy_tensorflow")
    np.testing.assert_allclose(legacy(images), feats, atol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        legacy([images[0], np.zeros((10, 10, 3), np.uint8)])

    no_layers = tmp_path / "plain.pt"
    torch.jit.script(_Layers()).save(str(no_layers))
    with pytest.raises(ValueError, match="no 'layers' submodule"):
        InceptionFeatures(no_layers)


def test_random_conv_features_deterministic_separating_and_named_as_not_inception():
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(12)]
    flat = [Image.new("RGB", (64, 128), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(12)]
    f1 = RandomConvFeatures(seed=0, dim=32)
    a = f1(noise)
    assert a.shape == (12, 32) and f1.dim == 32
    np.testing.assert_array_equal(a, RandomConvFeatures(seed=0, dim=32)(noise))
    np.testing.assert_array_equal(a, RandomConvFeatures.from_config(RandomConvConfig(seed=0, dim=32))(noise))
    assert not np.allclose(a, RandomConvFeatures(seed=1, dim=32)(noise))
    noise2 = [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(12)]
    within = frechet_distance(a, f1(noise2))
    across = frechet_distance(a, f1(flat))
    assert across > 5 * within
    assert f1.name == "stand-in-random-conv-not-inception:s0-d32-64x128"
    assert "not-inception" in RandomConvFeatures(seed=4).name
