"""Attention overlays per caption group: captured in the evaluation's own generation pass on the committed base
model (same images bit for bit, same metrics), the maps' normalisation, the level chosen, the pictures."""

import dataclasses
import io
import math
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest
import torch
from PIL import Image

from cosmicman.assets.annotation import eval_set
from cosmicman.core.caption_draw import Caption, CaptionGroup
from cosmicman.core.store import Store
from cosmicman.core.tokenizer import load_clip_tokenizer
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource
from cosmicman.environments.simulated_data import SimulatedEvaluationResource
from cosmicman.evaluation.attention_overlays import (
    LABEL_HEIGHT,
    PANELS_PER_LINE,
    GroupMap,
    StepMeanMaps,
    attention_level,
    capturing,
    group_maps,
    heat_colours,
    overlay_panel,
    overlay_row,
    panel_scale,
)
from cosmicman.evaluation.config import EvaluationConfig
from cosmicman.evaluation.prompt_set import write_prompt_set
from cosmicman.evaluation.run import GENERATION_BATCH, evaluate_model, generate_capturing, prompt_captions
from cosmicman.model.pipelines import load_pipeline
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.base_model import COMMITTED_DIR
from cosmicman.simulation.prompts import synthetic_test_attributes

N_PROMPTS = GENERATION_BATCH + 2
CAPTURED = GENERATION_BATCH + 1  # the capture reaches into the second pipeline call


@pytest.fixture(scope="module")
def captions():
    return prompt_captions(synthetic_test_attributes(30_000, N_PROMPTS), load_clip_tokenizer())


@pytest.fixture(scope="module")
def generated(captions, tmp_path_factory):
    cfg = EvaluationConfig(
        model_url=str(COMMITTED_DIR),
        prompts_url="unused",
        store_url="unused",
        output_url=str(tmp_path_factory.mktemp("out")),
        judge={"kind": "python"},
        steps=3,
    )
    texts = [c.text for c in captions]
    return generate_capturing(cfg, texts, 0), generate_capturing(cfg, texts, CAPTURED)


def test_capturing_does_not_change_a_single_pixel(generated):
    plain, captured = generated
    assert plain.level is None and plain.token_maps == []
    assert len(captured.images) == len(plain.images) == N_PROMPTS
    for a, b in zip(plain.images, captured.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_maps_of_the_first_prompts_are_captured_at_the_level_nearest_to_hola_s(generated):
    _, captured = generated
    # the base model: 64 px images, a VAE of factor 4, cross-attention at 16x16 (1/4) and 8x8 (1/8, the tiny
    # recipe's HOLA level: down_blocks.1, the mid block, up_blocks.0's two)
    assert captured.level is not None
    assert (captured.level.map_hw, captured.level.map_factor) == ((8, 8), 8)
    assert len(captured.level.layers) == 4 and all(n.endswith("attn2") for n in captured.level.layers)
    assert len(captured.token_maps) == CAPTURED
    assert all(m.shape == (8 * 8, 77) for m in captured.token_maps)
    # prompts differ, so do their maps (the second call's prompt is its own, not a copy of the first)
    assert not np.allclose(captured.token_maps[0], captured.token_maps[GENERATION_BATCH])


def test_at_every_cell_the_averaged_maps_sum_to_one_over_the_tokens(generated, captions):
    _, captured = generated
    for maps, caption in zip(captured.token_maps, captions):
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-6)
        for group in group_maps(maps, caption, (8, 8)):
            assert group.map.shape == (8, 8) and 0 < group.map.min() <= group.map.max() < 1


def test_a_group_map_is_the_mean_over_its_span_and_a_group_without_span_has_none():
    token_maps = np.arange(4 * 6, dtype=np.float64).reshape(4, 6)
    caption = Caption(
        "x",
        (
            CaptionGroup("person", "a", (), True, (1, 3)),
            CaptionGroup("hat", "b", (1,), False, None),
            CaptionGroup("top", "c", (2,), False, (3, 4)),
        ),
    )
    maps = group_maps(token_maps, caption, (2, 2))
    assert [(g.name, g.span) for g in maps] == [("person", (1, 3)), ("top", (3, 4))]
    np.testing.assert_array_equal(maps[0].map, token_maps[:, 1:3].mean(-1).reshape(2, 2))
    np.testing.assert_array_equal(maps[1].map, token_maps[:, 3].reshape(2, 2))  # end-exclusive: token 4 is out


def test_the_maps_are_the_conditional_rows_averaged_over_heads_and_calls_with_equal_weight():
    maps = StepMeanMaps(n_prompts=2)
    uncond, cond = torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)
    cond[:, 0] = 4.0  # head 0
    maps.add(torch.cat([uncond, cond]))  # classifier-free guidance: [negative; prompt]
    maps.add(torch.zeros(2, 3, 4, 5))  # no guidance: the prompts only
    np.testing.assert_allclose(maps.mean(), np.full((2, 4, 5), (4 + 1 + 1) / 3 / 2))
    with pytest.raises(ValueError, match="captured 3 rows for 2 prompts"):
        maps.add(torch.zeros(3, 3, 4, 5))
    with pytest.raises(ValueError, match="no cross-attention was captured"):
        StepMeanMaps(1).mean()


def test_the_level_is_chosen_by_factor_and_a_factor_without_cross_attention_is_one_clear_error():
    pipe = load_pipeline(COMMITTED_DIR)
    assert attention_level(pipe.unet, 64, 4, 4).map_hw == (16, 16)
    assert attention_level(pipe.unet, 64, 4, None) == attention_level(pipe.unet, 64, 4, 8)
    with pytest.raises(ValueError, match="overlay_map_factor 16 has no cross-attention level for 64 px images; "):
        attention_level(pipe.unet, 64, 4, 16)
    before = dict(pipe.unet.attn_processors)
    with capturing(pipe.unet, attention_level(pipe.unet, 64, 4, 4), 1):
        assert all(type(p).__name__ == "_StepMeanProcessor" for p in pipe.unet.attn_processors.values())
    assert pipe.unet.attn_processors == before  # the UNet's own processors, the very objects, come back


def _unet_layout(levels_with_cross_attention, n_levels):
    """A stand-in with what ``attention_level`` reads: the UNet's config and its processors' names."""
    names = [f"down_blocks.{level}.attentions.0.transformer_blocks.0.attn2" for level in levels_with_cross_attention]
    names += [f"{n[:-5]}attn1" for n in names]
    processors = {f"{n}.processor": None for n in names}
    return SimpleNamespace(config={"block_out_channels": [32] * n_levels}, attn_processors=processors)


def test_by_default_the_level_is_hola_s_sixteenth_or_the_nearest_the_finer_of_two_as_near():
    sd15 = _unet_layout([0, 1, 2], 4)  # 512 px, a VAE of factor 8: cross-attention at 1/8, 1/16, 1/32
    assert attention_level(sd15, 512, 8, None).map_hw == (32, 32)
    assert attention_level(sd15, 512, 8, None).layers == ("down_blocks.1.attentions.0.transformer_blocks.0.attn2",)
    assert attention_level(_unet_layout([0, 2], 3), 512, 8, None).map_factor == 8  # 1/8 and 1/32: one octave each
    assert attention_level(_unet_layout([2], 3), 512, 8, None).map_factor == 32


def test_a_heatmap_is_scaled_by_its_peak_and_blended_at_half_weight():
    np.testing.assert_array_equal(
        heat_colours(np.array([0.0, 0.5, 1.0, 2.0])), [[0, 0, 160], [60, 200, 60], [220, 0, 0], [220, 0, 0]]
    )
    grey = Image.new("RGB", (2, 2), (100, 100, 100))
    # peak 2, lowest 1: the lowest cell reads 0.5 (green), not 0 (a min-max scaling would make it blue)
    panel = np.asarray(overlay_panel(grey, np.array([[2.0, 1.0], [1.0, 1.0]]), 2)).astype(int)
    assert panel[0, 0].tolist() == [160, 50, 50] and panel[1, 1].tolist() == [80, 150, 80]


def test_an_overlay_picture_wraps_its_panels_and_starts_with_the_image_pixel_for_pixel():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    groups = [GroupMap(f"g{i}", (i + 1, i + 2), np.ones((4, 4))) for i in range(PANELS_PER_LINE)]
    row = overlay_row(image, groups)
    scale = panel_scale(64)
    assert scale == 3
    side = 64 * scale
    assert row.size == (PANELS_PER_LINE * side, 2 * (side + LABEL_HEIGHT))  # 1 + 7 panels: two lines
    first = np.asarray(row)[:side, :side]
    np.testing.assert_array_equal(first, np.repeat(np.repeat(np.asarray(image), scale, 0), scale, 1))


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """The same model on the same prompts, evaluated with 3 overlays and with none."""
    root = tmp_path_factory.mktemp("evaluate")
    store = Store(str(root / "store"))
    resources = {
        "object_store": ObjectStoreResource(url=store.url),
        "annotation": SimulatedAnnotatorResource(eval_size=8),
    }
    assert dg.materialize([eval_set], resources=resources).success
    prompts_url = str(root / "prompts.jsonl")
    write_prompt_set(synthetic_test_attributes(30_000, 5), prompts_url)
    base = SimulatedEvaluationResource(inference_steps=2, overlay_prompts=3)
    with_overlays = base.run_config(str(COMMITTED_DIR), prompts_url, store.url, str(root / "with"))
    without = dataclasses.replace(with_overlays, output_url=str(root / "without"), overlay_prompts=0)
    quiet = lambda message: None  # noqa: E731
    return (
        (evaluate_model(with_overlays, quiet), Store(with_overlays.output_url)),
        (evaluate_model(without, quiet), Store(without.output_url)),
    )


def test_overlays_change_no_metric_no_sample_and_no_answer(evaluations):
    (report, out), (plain, plain_out) = evaluations
    assert report["metrics"] == plain["metrics"] and report["ceiling"] == plain["ceiling"]
    assert [s["key"] for s in report["samples"]] == [s["key"] for s in plain["samples"]]
    for sample in report["samples"]:
        assert out.read_bytes(sample["key"]) == plain_out.read_bytes(sample["key"])
    assert out.read_table("questions.parquet").equals(plain_out.read_table("questions.parquet"))
    assert plain["overlays"] == [] and "overlay_attention" not in plain


def test_the_report_holds_one_overlay_per_captured_prompt_with_one_panel_per_group_with_a_span(evaluations):
    (report, out), _ = evaluations
    captions = prompt_captions(synthetic_test_attributes(30_000, 5), load_clip_tokenizer())
    assert [o["key"] for o in report["overlays"]] == [f"overlays/{i:03d}.png" for i in range(3)]
    assert report["overlay_attention"]["map_hw"] == [8, 8] and report["overlay_attention"]["map_factor"] == 8
    for overlay, sample, caption in zip(report["overlays"], report["samples"], captions):
        with_span = [g for g in caption.groups if g.span is not None]
        assert overlay["caption"] == sample["caption"] == caption.text
        assert [(g["name"], tuple(g["span"])) for g in overlay["groups"]] == [(g.name, g.span) for g in with_span]
        assert overlay["groups_without_span"] == [g.name for g in caption.groups if g.span is None]
        # uniform attention over the 77 tokens would be 1/77 per token: a group's mean lies near it
        assert all(0 < g["mean"] <= g["peak"] < 1 for g in overlay["groups"])
        picture = np.asarray(Image.open(io.BytesIO(out.read_bytes(overlay["key"]))))
        panels = 1 + len(with_span)
        cols = min(PANELS_PER_LINE, panels)
        side = 64 * panel_scale(64)
        assert picture.shape == (math.ceil(panels / cols) * (side + LABEL_HEIGHT), cols * side, 3)
        sample_pixels = np.asarray(Image.open(io.BytesIO(out.read_bytes(sample["key"]))))
        np.testing.assert_array_equal(picture[:side, :side], np.repeat(np.repeat(sample_pixels, 3, 0), 3, 1))
