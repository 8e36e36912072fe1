"""CLIPScore against a direct computation on a tiny CLIP; long captions chunked, not cut; a saved model reloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmicman.evaluation.clip_score import ClipScorer, clip_score

CAPTIONS = ["a woman in a red hat", "a man", "blue jeans and a white shirt", "an elderly person with a bag"]
SEED = 2  # a tiny random CLIP whose cosines on these pairs fall on both sides of 0


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    return ClipScorer.tiny(SEED)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(3)] + [np.full((40, 40, 3), 9, np.uint8)]


def _direct_cos(scorer: ClipScorer, images, captions) -> torch.Tensor:
    """The textbook computation: processor, get_*_features, cosine of the pair, with 77-token padding."""
    from PIL import Image

    model = scorer.model
    pixels = scorer.image_processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    tokens = scorer.tokenizer(list(captions), padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(**tokens).pooler_output
    return torch.nn.functional.cosine_similarity(img, txt, dim=-1)


def test_clip_score_matches_a_direct_computation(scorer):
    images, captions = _images(), CAPTIONS
    cos = _direct_cos(scorer, images, captions)
    assert (cos > 0.05).any() and (cos < -0.05).any()  # both sides of the clip at 0 are exercised
    expected = (100 * cos.clamp(min=0)).tolist()
    result = clip_score(images, captions, scorer)
    assert result.scores == pytest.approx(expected, abs=1e-4)
    assert result.mean == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    assert result.model == "tiny-random-clip-untrained:seed=2"
    assert result.long_captions == 0 and result.chunks == (1, 1, 1, 1)
    # per-pair clipping: a negative cosine scores 0, not a negative number (and not clipped after averaging)
    assert min(result.scores) == 0.0
    assert result.mean > 100 * float(cos.mean())
    # batching does not change the numbers
    assert scorer.score(images, captions, batch_size=3).scores == pytest.approx(result.scores, abs=1e-5)
    with pytest.raises(ValueError, match="one caption per image"):
        clip_score(images, captions[:2], scorer)


def test_long_caption_is_a_token_weighted_chunk_average_not_a_cut(scorer):
    first = " ".join(["red"] * 75)  # exactly 75 content tokens: one full chunk
    tail = "a blue hat"  # 3 tokens
    long_caption = f"{first} {tail}"
    assert [len(c) for c in scorer.caption_chunks(long_caption)] == [77, 5]

    image = _images()[:1]
    text_first, _ = scorer.text_embeddings([first])
    text_tail, _ = scorer.text_embeddings([tail])
    mixed = torch.nn.functional.normalize(75 * text_first + 3 * text_tail, dim=-1)
    image_emb = scorer.image_embeddings(image)
    expected = 100 * max(float((image_emb * mixed).sum()), 0.0)

    result = clip_score(image, [long_caption], scorer)
    assert result.long_captions == 1 and result.chunks == (2,)
    assert result.scores[0] == pytest.approx(expected, abs=1e-4)
    # a silent cut at 77 tokens would have scored the first chunk alone
    cut = 100 * max(float(_direct_cos(scorer, image, [long_caption])[0]), 0.0)
    assert cut == pytest.approx(100 * max(float((image_emb * text_first).sum()), 0.0), abs=1e-4)
    assert abs(result.scores[0] - cut) > 1e-3


def test_a_saved_clip_reloads_from_a_local_folder(scorer, tmp_path):
    scorer.model.save_pretrained(tmp_path)
    scorer.tokenizer.save_pretrained(tmp_path)
    scorer.image_processor.save_pretrained(tmp_path)
    loaded = ClipScorer.from_pretrained(tmp_path)
    assert loaded.name == f"clip:{tmp_path.name}"
    images = _images()
    assert loaded.score(images, CAPTIONS).scores == pytest.approx(scorer.score(images, CAPTIONS).scores, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="no CLIP model at"):
        ClipScorer.from_pretrained(tmp_path / "absent")
