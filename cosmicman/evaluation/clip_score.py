"""CLIPScore: ``100 * max(cos(image embedding, caption embedding), 0)`` per image-caption pair, and its mean.

The model is a transformers ``CLIPModel`` from a *local* folder in production (e.g. a saved
``openai/clip-vit-large-patch14``: ``config.json``, weights, tokenizer files, ``preprocessor_config.json``),
and a tiny random ``CLIPModel`` built from a ``CLIPConfig`` locally, whose name says it is untrained.

**Long captions.** CLIP's text tower sees at most 77 tokens (BOS + 75 + EOS); our structured captions
often run longer, and a silent cut would score only their first groups. Each caption is split instead
into consecutive chunks of at most 75 content tokens, each chunk wrapped in BOS / EOS and embedded, and
the unit chunk embeddings are averaged, weighted by their token counts, then re-normalized. A caption of
at most 75 tokens is one chunk, i.e. exactly the standard CLIPScore. Every result reports how many
captions were chunked.

Per-pair clipping at 0 is Hessel et al.'s CLIPScore (with weight 100 instead of their 2.5, as
torchmetrics); torchmetrics clips the *mean* instead, which agrees whenever no pair's cosine is negative.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cosmicman.evaluation.features import to_uint8_rgb

__all__ = ["CLIP_MAX_TOKENS", "ClipScoreResult", "ClipScorer", "build_tiny_clip", "clip_score"]

CLIP_MAX_TOKENS = 77
TINY_IMAGE_SIZE = 32


@dataclass(frozen=True)
class ClipScoreResult:
    """Per-pair scores, their mean, the model that scored them and how long captions were handled."""

    scores: tuple[float, ...]
    mean: float
    model: str
    long_captions: int  # captions over 75 content tokens, scored as token-weighted chunk averages
    chunks: tuple[int, ...]  # chunks per caption (1 for a caption that fits)


def build_tiny_clip(seed: int = 0) -> tuple[Any, Any, Any]:
    """A tiny random ``CLIPModel`` (32-d towers, 32 px images) with the real CLIP tokenizer; no download."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from cosmicman.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, load_clip_tokenizer

    config = CLIPConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": CLIP_MAX_TOKENS,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return model, load_clip_tokenizer(), processor


class ClipScorer:
    """A CLIP model with its tokenizer and image processor, and the name every result carries."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, name: str, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.device = device
        self.bos_id = int(tokenizer.bos_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str = "cpu") -> ClipScorer:
        """A saved transformers CLIP from a local folder (``local_files_only``: nothing is downloaded)."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no CLIP model at {str(folder)!r}: save a transformers CLIPModel with its tokenizer and "
                "preprocessor_config.json there (nothing is downloaded; locally use ClipScorer.tiny())"
            )
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)
        return cls(model, tokenizer, processor, name=f"clip:{folder.name}", device=device)

    @classmethod
    def tiny(cls, seed: int = 0) -> ClipScorer:
        model, tokenizer, processor = build_tiny_clip(seed)
        return cls(model, tokenizer, processor, name=f"tiny-random-clip-untrained:seed={seed}")

    def image_embeddings(self, images: Sequence[Any]) -> torch.Tensor:
        """Unit image embeddings ``[N, P]``; images are quantized to 8-bit RGB first."""
        pil = [Image.fromarray(to_uint8_rgb(img)) for img in images]
        pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            emb = self.model.get_image_features(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def caption_chunks(self, caption: str) -> list[list[int]]:
        """Token ids of each <= 77-token chunk of ``caption``, BOS / EOS included."""
        content = self.tokenizer(caption, add_special_tokens=False, verbose=False)["input_ids"]
        room = CLIP_MAX_TOKENS - 2
        pieces = [content[i : i + room] for i in range(0, len(content), room)] or [[]]
        return [[self.bos_id, *piece, self.eos_id] for piece in pieces]

    def text_embeddings(self, captions: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """Unit caption embeddings ``[N, P]`` (token-weighted chunk averages) and the chunk count of each."""
        per_caption = [self.caption_chunks(c) for c in captions]
        flat = [chunk for chunks in per_caption for chunk in chunks]
        ids = torch.full((len(flat), CLIP_MAX_TOKENS), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, chunk in enumerate(flat):
            ids[row, : len(chunk)] = torch.tensor(chunk)
            mask[row, : len(chunk)] = 1
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        unit = torch.nn.functional.normalize(out.pooler_output.float(), dim=-1).cpu()
        weights = torch.tensor([max(len(chunk) - 2, 1) for chunk in flat], dtype=torch.float32)
        embeddings, start = [], 0
        for chunks in per_caption:
            w = weights[start : start + len(chunks), None]
            embeddings.append((unit[start : start + len(chunks)] * w).sum(dim=0) / w.sum())
            start += len(chunks)
        return torch.nn.functional.normalize(torch.stack(embeddings), dim=-1), [len(c) for c in per_caption]

    def score(self, images: Sequence[Any], captions: Sequence[str], batch_size: int = 32) -> ClipScoreResult:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions; pass one caption per image")
        if not captions:
            raise ValueError("no image-caption pairs given")
        scores: list[float] = []
        chunks: list[int] = []
        for i in range(0, len(captions), batch_size):
            image_emb = self.image_embeddings(images[i : i + batch_size]).cpu()
            text_emb, counts = self.text_embeddings(captions[i : i + batch_size])
            cos = (image_emb * text_emb).sum(dim=-1)
            scores += (100.0 * cos.clamp(min=0.0)).tolist()
            chunks += counts
        return ClipScoreResult(
            scores=tuple(scores),
            mean=float(sum(scores) / len(scores)),
            model=self.name,
            long_captions=sum(1 for c in chunks if c > 1),
            chunks=tuple(chunks),
        )


def clip_score(images: Sequence[Any], captions: Sequence[str], scorer: ClipScorer) -> ClipScoreResult:
    """CLIPScore of each (image, caption) pair under ``scorer`` (see the module doc for long captions)."""
    return scorer.score(images, captions)
