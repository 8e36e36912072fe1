"""HPSv2 (Human Preference Score v2): OpenCLIP ViT-H/14 fine-tuned on human preferences, built without download.

HPSv2's score of an (image, prompt) pair is the cosine of the two unit embeddings (its ``score.py``:
``diagonal(image_features @ text_features.T)``, no logit scale), about 0.2-0.3 on real models; we report
it as it is, not times 100.

**No open_clip at run time.** ``open_clip`` needs torchvision, which this project never depends on
(the wheel is installed ``--no-deps`` for its BPE vocabulary only). The same network is a transformers
``CLIPModel``: :data:`VIT_H_14` is open_clip's ``ViT-H-14.json`` (embed 1024; vision 32 x 1280, head
width 80, patch 14, 224 px; text 24 x 1024, 16 heads, 77 tokens), exact GELU and LayerNorm eps 1e-5 as
open_clip builds it. :func:`convert_open_clip_state_dict` maps the checkpoint's keys (``HPS_v2_compressed.pt``
holds ``{"state_dict": <open_clip CLIP state dict>}``) one to one:

==========================================================  ==========================================
open_clip                                                   transformers CLIPModel
==========================================================  ==========================================
``token_embedding.weight`` / ``positional_embedding``       ``text_model.embeddings.token_embedding`` /
                                                            ``.position_embedding.weight``
``transformer.resblocks.i.ln_1`` / ``ln_2``                 ``text_model.encoder.layers.i.layer_norm1/2``
``...attn.in_proj_weight`` / ``in_proj_bias`` ([3w, w])     split in three: ``self_attn.q_proj/k_proj/v_proj``
``...attn.out_proj``                                        ``self_attn.out_proj``
``...mlp.c_fc`` / ``mlp.c_proj``                            ``mlp.fc1`` / ``mlp.fc2``
``ln_final``                                                ``text_model.final_layer_norm``
``text_projection`` ([w, e])                                ``text_projection.weight`` (transposed)
``visual.conv1.weight``                                     ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding`` / ``visual.positional_embedding``  ``vision_model.embeddings.class_embedding`` /
                                                            ``.position_embedding.weight``
``visual.ln_pre`` / ``visual.ln_post``                      ``vision_model.pre_layrnorm`` / ``post_layernorm``
``visual.transformer.resblocks.i.*``                        ``vision_model.encoder.layers.i.*`` (as text)
``visual.proj`` ([w, e])                                    ``visual_projection.weight`` (transposed)
``logit_scale``                                             ``logit_scale``
==========================================================  ==========================================

Pooling agrees: open_clip pools text at the arg-max token id (the end-of-text token, 49407) and images
at the class token after ``ln_post``; transformers pools at the first end-of-text token and at the class
token after ``post_layernorm``. A key left over or missing on either side raises.

Preprocessing is HPSv2's ``preprocess_val``: the longer side resized to 224 (bicubic), padded to a
square with black, centred, then normalized with OpenAI CLIP's mean / std. Prompts are truncated to 77
tokens, as HPSv2's open_clip tokenizer does; the result counts the truncated prompts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosmicman.evaluation.features import to_uint8_rgb

__all__ = [
    "HPSV2_ENV_VAR",
    "TINY_LAYOUT",
    "VIT_H_14",
    "HpsV2Result",
    "HpsV2Scorer",
    "OpenClipLayout",
    "convert_open_clip_state_dict",
    "hpsv2_score",
    "load_open_clip_checkpoint",
]

HPSV2_ENV_VAR = "COSMICMAN_HPSV2_PATH"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, which HPSv2's preprocess_val uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class OpenClipLayout:
    """An open_clip ViT CLIP's shape, in the terms of its ``model_configs/*.json``."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    text_width: int
    text_layers: int
    text_heads: int
    vocab_size: int = 49408
    context_length: int = CONTEXT_LENGTH
    mlp_ratio: float = 4.0

    def clip_config(self) -> Any:
        """The transformers ``CLIPConfig`` of the same network."""
        from transformers import CLIPConfig

        from cosmicman.core.tokenizer import BOS_ID, EOS_ID, PAD_ID

        return CLIPConfig(
            text_config={
                "vocab_size": self.vocab_size,
                "hidden_size": self.text_width,
                "intermediate_size": int(self.text_width * self.mlp_ratio),
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.context_length,
                "hidden_act": "gelu",
                "layer_norm_eps": 1e-5,
                "bos_token_id": BOS_ID,
                "eos_token_id": EOS_ID,
                "pad_token_id": PAD_ID,
            },
            vision_config={
                "hidden_size": self.vision_width,
                "intermediate_size": int(self.vision_width * self.mlp_ratio),
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.vision_width // self.vision_head_width,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_act": "gelu",
                "layer_norm_eps": 1e-5,
            },
            projection_dim=self.embed_dim,
        )


# open_clip's model_configs/ViT-H-14.json, the tower HPSv2 fine-tunes
VIT_H_14 = OpenClipLayout(
    embed_dim=1024,
    image_size=224,
    patch_size=14,
    vision_width=1280,
    vision_layers=32,
    vision_head_width=80,
    text_width=1024,
    text_layers=24,
    text_heads=16,
)
# the same layout shrunk for tests and local runs (random weights: the scores mean nothing)
TINY_LAYOUT = OpenClipLayout(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_head_width=16,
    text_width=32,
    text_layers=2,
    text_heads=2,
)

_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# buffers some open_clip versions save: the causal mask is rebuilt by transformers, nothing is lost
_IGNORED = {"attn_mask", "visual.attn_mask"}


def convert_open_clip_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip ViT CLIP state dict -> the transformers ``CLIPModel`` one (the table in the module doc)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        match = _BLOCK.match(key)
        if match is None:
            raise KeyError(f"open_clip key {key!r} has no transformers counterpart (not a ViT CLIP checkpoint?)")
        tower = "vision_model" if match.group(1) else "text_model"
        prefix = f"{tower}.encoder.layers.{match.group(2)}"
        rest = match.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # weight / bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{name}.{kind}"] = part.contiguous()
            continue
        module, _, param = rest.rpartition(".")
        if module not in _BLOCK_PARTS:
            raise KeyError(f"open_clip key {key!r} has no transformers counterpart (not a ViT CLIP checkpoint?)")
        out[f"{prefix}.{_BLOCK_PARTS[module]}.{param}"] = value
    return out


def load_open_clip_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The open_clip state dict in an HPSv2 checkpoint (``{"state_dict": ...}`` or a bare state dict)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"HPSv2 checkpoint not found at {str(file)!r}: place 'HPS_v2_compressed.pt' there or set "
            f"{HPSV2_ENV_VAR} (nothing is downloaded; locally use HpsV2Scorer.tiny())"
        )
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds no state dict (found {type(checkpoint).__name__})")
    # DistributedDataParallel training saves every key under "module."
    return {k.removeprefix("module."): v for k, v in state.items()}


def _model_from_open_clip(state: Mapping[str, torch.Tensor], layout: OpenClipLayout) -> Any:
    from transformers import CLIPModel

    model = CLIPModel(layout.clip_config())
    converted = convert_open_clip_state_dict(state)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the {layout.vision_layers}-layer layout: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {list(unexpected)[:3]}"
        )
    return model.eval()


def resize_max_size(image: np.ndarray, size: int) -> np.ndarray:
    """HPSv2's val resize: longer side to ``size`` (bicubic), padded with black to a centred square."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


@dataclass(frozen=True)
class HpsV2Result:
    """Per-pair HPSv2 scores (cosines), their mean, the model, and how many prompts were cut at 77 tokens."""

    scores: tuple[float, ...]
    mean: float
    model: str
    truncated_prompts: int


class HpsV2Scorer:
    """The HPSv2 network as a transformers ``CLIPModel``, with the CLIP tokenizer and HPSv2's preprocessing."""

    def __init__(self, model: Any, name: str, device: str = "cpu"):
        from cosmicman.core.tokenizer import load_clip_tokenizer

        self.model = model.to(device).eval()
        self.tokenizer = load_clip_tokenizer()
        self.image_size = int(model.config.vision_config.image_size)
        self.name = name
        self.device = device

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str] | None = None, layout: OpenClipLayout = VIT_H_14, device: str = "cpu"
    ) -> HpsV2Scorer:
        """HPSv2 from a local ``HPS_v2_compressed.pt`` (the argument or ``COSMICMAN_HPSV2_PATH``)."""
        raw = path or os.environ.get(HPSV2_ENV_VAR)
        if not raw:
            raise FileNotFoundError(
                f"HPSv2 needs a local checkpoint: pass path or set {HPSV2_ENV_VAR} to 'HPS_v2_compressed.pt' "
                "(nothing is downloaded; locally use HpsV2Scorer.tiny())"
            )
        model = _model_from_open_clip(load_open_clip_checkpoint(raw), layout)
        return cls(model, name=f"hpsv2:{Path(raw).name}", device=device)

    @classmethod
    def tiny(cls, seed: int = 0) -> HpsV2Scorer:
        """A random network of :data:`TINY_LAYOUT`: it exercises the pipeline, its scores mean nothing."""
        from transformers import CLIPModel

        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = CLIPModel(TINY_LAYOUT.clip_config())
        finally:
            torch.random.set_rng_state(state)
        return cls(model, name=f"tiny-random-hpsv2-layout-untrained:seed={seed}")

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        arrays = [resize_max_size(to_uint8_rgb(img), self.image_size) for img in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def score(self, images: Sequence[Any], prompts: Sequence[str], batch_size: int = 16) -> HpsV2Result:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts; pass one prompt per image")
        if not prompts:
            raise ValueError("no image-prompt pairs given")
        scores: list[float] = []
        truncated = 0
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i : i + batch_size])
            lengths = [len(ids) for ids in self.tokenizer(batch, verbose=False)["input_ids"]]
            truncated += sum(1 for n in lengths if n > CONTEXT_LENGTH)
            tokens = self.tokenizer(
                batch, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
            )
            with torch.no_grad():
                image = self.model.get_image_features(
                    pixel_values=self.pixel_values(images[i : i + batch_size]).to(self.device)
                ).pooler_output
                text = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                ).pooler_output
            cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
            scores += cos.cpu().tolist()
        return HpsV2Result(
            scores=tuple(scores), mean=float(np.mean(scores)), model=self.name, truncated_prompts=truncated
        )


def hpsv2_score(images: Sequence[Any], prompts: Sequence[str], scorer: HpsV2Scorer) -> HpsV2Result:
    """HPSv2 of each (image, prompt) pair under ``scorer``."""
    return scorer.score(images, prompts)
