"""What the ``evaluation`` asset shows of a report: the attention overlays as a picture beside the samples, and
a report without overlays says why instead of showing nothing."""

import base64
import io
import re

import dagster as dg
import pytest
from PIL import Image

from cosmicman.assets.evaluation_metadata import ACCURACIES, report_metadata
from cosmicman.assets.plots import image_column
from cosmicman.core.imageio import encode_png
from cosmicman.core.store import Store


@pytest.fixture
def report(tmp_path):
    """A finished evaluation's report (the figures are placeholders) with two samples and two overlays."""
    out = Store(str(tmp_path / "out"))
    for i in range(2):
        out.write_bytes(f"samples/{i:03d}.png", encode_png(Image.new("RGB", (64, 64), (i * 100, 0, 0))))
        # overlays of different heights: one line of panels, two lines
        out.write_bytes(f"overlays/{i:03d}.png", encode_png(Image.new("RGB", (1344, 208 * (i + 1)), "blue")))
    return {
        "metrics": {k: 0.5 for k in ACCURACIES},
        "ceiling": {k: 0.9 for k in ACCURACIES},
        "samples": [{"key": f"samples/{i:03d}.png", "caption": f"person {i}"} for i in range(2)],
        "overlays": [{"key": f"overlays/{i:03d}.png", "caption": f"person {i}", "groups": []} for i in range(2)],
        "overlay_attention": {"map_hw": [16, 16], "map_factor": 4, "layers": ["a.attn2", "b.attn2", "c.attn2"]},
        "output_url": out.url,
        "prompt_set_version": "ps-x-n2",
        "n_prompts": 2,
        "judge": {"name": "judge", "version": "1"},
        "feature_extractor": "f",
        "clip_model": "c",
        "hpsv2_model": "h",
    }


def _jpeg(markdown: str) -> Image.Image:
    found = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found
    return Image.open(io.BytesIO(base64.b64decode(found.group(1))))


def test_the_overlays_are_one_picture_beside_the_samples_with_what_they_show(report, tmp_path):
    meta = report_metadata(Store(str(tmp_path)), report, "hola")
    assert isinstance(meta["samples"], dg.MarkdownMetadataValue)
    overlays = meta["attention_overlays"]
    assert isinstance(overlays, dg.MarkdownMetadataValue)
    # stacked at 768 px wide, each at its own aspect ratio: 208 * 768 / 1344 + 416 * 768 / 1344
    assert _jpeg(overlays.md_str).size == (768, 119 + 238)
    assert overlays.md_str.endswith("1. person 0\n2. person 1")
    assert meta["attention_overlays_maps"].startswith("cross-attention at 1/4 of the image (16x16 maps, 3 layers)")


def test_a_report_without_overlays_says_why(report, tmp_path):
    old = {k: v for k, v in report.items() if k not in ("overlays", "overlay_attention")}
    meta = report_metadata(Store(str(tmp_path)), old, "hola")
    assert meta["attention_overlays"].startswith("this report has no overlays: evaluated before")
    meta = report_metadata(Store(str(tmp_path)), {**old, "overlays": []}, "hola")
    assert meta["attention_overlays"] == "this report has no overlays: it was evaluated with overlay_prompts = 0"
    assert "attention_overlays_maps" not in meta


def test_an_empty_column_says_so():
    assert image_column([]).md_str == "_no images_"
