"""HPSv2 without open_clip: the ViT-H/14 layout and key conversion checked against open_clip's own model code.

open_clip's ``model.py`` is imported for the reference only, with its package ``__init__`` skipped and a
placeholder for the one torchvision name its ``utils`` imports (``FrozenBatchNorm2d``, used by ResNet
towers only); both are removed from ``sys.modules`` right after the import.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPModel

from cosmicman.evaluation.hpsv2 import (
    HPSV2_ENV_VAR,
    TINY_LAYOUT,
    VIT_H_14,
    HpsV2Scorer,
    OpenClipLayout,
    convert_open_clip_state_dict,
    hpsv2_score,
    load_open_clip_checkpoint,
    resize_max_size,
)

_STUBS = ("torchvision", "torchvision.ops", "torchvision.ops.misc")


def _open_clip_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def open_clip_model() -> types.ModuleType:
    """open_clip's ``model`` module, imported without the package ``__init__`` (which needs torchvision)."""
    added = [name for name in (*_STUBS, "open_clip") if name not in sys.modules]
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})  # type: ignore[attr-defined]
    package = types.ModuleType("open_clip")
    package.__path__ = [str(_open_clip_dir())]
    sys.modules.update(
        {"torchvision": types.ModuleType("torchvision"), "torchvision.ops": types.ModuleType("torchvision.ops")}
    )
    sys.modules["torchvision.ops.misc"] = misc
    sys.modules["open_clip"] = package
    try:
        return importlib.import_module("open_clip.model")
    finally:
        for name in [*added, *(n for n in list(sys.modules) if n.startswith("open_clip."))]:
            sys.modules.pop(name, None)


def _open_clip(model_module: types.ModuleType, layout: OpenClipLayout):
    return model_module.CLIP(
        embed_dim=layout.embed_dim,
        vision_cfg=model_module.CLIPVisionCfg(
            layers=layout.vision_layers,
            width=layout.vision_width,
            head_width=layout.vision_head_width,
            patch_size=layout.patch_size,
            image_size=layout.image_size,
        ),
        text_cfg=model_module.CLIPTextCfg(
            context_length=layout.context_length,
            vocab_size=layout.vocab_size,
            width=layout.text_width,
            heads=layout.text_heads,
            layers=layout.text_layers,
        ),
    )


def test_vit_h_14_layout_is_open_clips_config():
    config = json.loads((_open_clip_dir() / "model_configs" / "ViT-H-14.json").read_text())
    vision, text = config["vision_cfg"], config["text_cfg"]
    assert VIT_H_14.embed_dim == config["embed_dim"]
    assert (VIT_H_14.image_size, VIT_H_14.vision_layers, VIT_H_14.vision_width) == (
        vision["image_size"],
        vision["layers"],
        vision["width"],
    )
    assert (VIT_H_14.vision_head_width, VIT_H_14.patch_size) == (vision["head_width"], vision["patch_size"])
    assert (VIT_H_14.context_length, VIT_H_14.vocab_size, VIT_H_14.text_width) == (
        text["context_length"],
        text["vocab_size"],
        text["width"],
    )
    assert (VIT_H_14.text_heads, VIT_H_14.text_layers) == (text["heads"], text["layers"])


def test_full_vit_h_14_checkpoint_keys_convert_one_to_one(open_clip_model):
    # on the meta device: every key and shape of the ~1B-parameter network, no memory spent
    with torch.device("meta"):
        reference = _open_clip(open_clip_model, VIT_H_14)
        ours = CLIPModel(VIT_H_14.clip_config())
    converted = convert_open_clip_state_dict(reference.state_dict())
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert sum(v.numel() for v in reference.state_dict().values()) == 986_109_441  # ViT-H-14: 986.1 M


def test_tiny_checkpoint_in_open_clip_layout_scores_as_open_clip(open_clip_model, tmp_path):
    torch.manual_seed(3)
    reference = _open_clip(open_clip_model, TINY_LAYOUT).eval()
    with torch.no_grad():  # open_clip initializes some tensors to 0 or 1: randomize all to catch swaps
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)

    scorer = HpsV2Scorer.from_checkpoint(path, layout=TINY_LAYOUT)
    assert scorer.name == "hpsv2:HPS_v2_compressed.pt"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 24, 3), dtype=np.uint8), rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)]
    prompts = ["a woman in a red hat", "a man in blue jeans holding a bag"]

    pixels = scorer.pixel_values(images)
    ids = [scorer.tokenizer(p)["input_ids"] for p in prompts]
    text = torch.zeros(len(prompts), 77, dtype=torch.long)  # open_clip's tokenizer pads with 0
    for row, tokens in enumerate(ids):
        text[row, : len(tokens)] = torch.tensor(tokens)
    with torch.no_grad():
        ref_image = reference.encode_image(pixels, normalize=True)
        ref_text = reference.encode_text(text, normalize=True)
        ours_image = scorer.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(ours_image, dim=-1), ref_image, atol=1e-5, rtol=1e-4)
    expected = (ref_image * ref_text).sum(dim=-1).tolist()  # HPSv2: diagonal(image @ text.T)
    result = hpsv2_score(images, prompts, scorer)
    assert result.scores == pytest.approx(expected, abs=1e-5)
    assert result.mean == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert result.truncated_prompts == 0
    long = hpsv2_score(images[:1], [" ".join(["red"] * 90)], scorer)
    assert long.truncated_prompts == 1


def test_checkpoint_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(HPSV2_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=HPSV2_ENV_VAR):
        HpsV2Scorer.from_checkpoint()
    with pytest.raises(FileNotFoundError, match="not found") as absent:
        load_open_clip_checkpoint(tmp_path / "HPS_v2_compressed.pt")
    assert "\n" not in str(absent.value)
    with pytest.raises(KeyError, match="no transformers counterpart"):
        convert_open_clip_state_dict({"visual.trunk.blocks.0.weight": torch.zeros(1)})
    # a checkpoint of another size fails on load, naming what is missing
    path = tmp_path / "small.pt"
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}}, path)
    with pytest.raises(ValueError, match="does not fit"):
        HpsV2Scorer.from_checkpoint(path, layout=TINY_LAYOUT)


def test_resize_max_size_pads_the_short_side_black():
    tall = np.full((64, 32, 3), 200, dtype=np.uint8)
    out = resize_max_size(tall, 32)
    assert out.shape == (32, 32, 3)
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()  # 16 wide, centred: 8 black either side
    assert (out[:, 8:24] == 200).all()
    tiny = HpsV2Scorer.tiny(0)
    assert tiny.name.startswith("tiny-random-hpsv2-layout-untrained")
    assert tiny.pixel_values([tall]).shape == (1, 3, 32, 32)
