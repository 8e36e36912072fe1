"""The local judge: reads colours from pixels, trains its heads on renders, saves and loads, answers only
from the image and its parsing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cosmicman.evaluation.questions import prompt_questions
from cosmicman.simulation.palette import COLORS, LIGHTING
from cosmicman.simulation.region_judge import (
    HEADS_PATH,
    JUDGE_NAME,
    RegionReaderJudge,
    RenderParsing,
    read_colour,
    render_prompts,
    train_region_judge,
    world_people,
)


def patch(rgb: tuple[int, int, int], light: float) -> tuple[np.ndarray, np.ndarray]:
    img = np.full((20, 20, 3), 200, np.float32)
    img[5:15, 5:15] = rgb
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 4
    return np.clip(img * light, 0, 255).astype(np.uint8), labels


@pytest.mark.parametrize("name", ["red", "brown", "white", "beige", "gray", "black"])
def test_a_colour_is_read_in_bright_and_in_dim_light(name):
    dim = float(np.mean(LIGHTING["dim"]))
    for light in (1.0, dim):
        img, labels = patch(COLORS[name], light)
        assert read_colour(img, labels, (4,), COLORS, light) == name
    assert read_colour(*patch(COLORS["white"], 1.0), (7,), COLORS, 1.0) is None  # no such region


def test_dim_light_must_be_undone_to_read_beige():
    dim = float(np.mean(LIGHTING["dim"]))
    img, labels = patch(COLORS["beige"], dim)
    assert read_colour(img, labels, (4,), COLORS, 1.0) != "beige"


@pytest.fixture(scope="module")
def small_judge():
    people = world_people(7, 24)
    images, parsing = render_prompts(people, 7)
    return train_region_judge(images, parsing, people), images, people


def test_trains_a_head_for_every_category_and_saves_loads_the_same_judge(small_judge, tmp_path):
    judge, images, _ = small_judge
    path = tmp_path / "heads.npz"
    judge.save(path)
    again = RegionReaderJudge.load(judge.parse, path)
    assert again.version == judge.version and again.name == JUDGE_NAME
    assert [again.read(im) for im in images[:3]] == [judge.read(im) for im in images[:3]]


def test_the_reading_of_an_image_does_not_depend_on_the_questions(small_judge):
    judge, images, people = small_judge
    seen = judge.read(images[0])
    for attributes in (people[0], people[1]):
        qs = prompt_questions(attributes)
        answers = judge.answer([images[0]], [qs])[0]
        for q, a in zip(qs, answers):
            if q.category is not None and q.expected == "yes" and seen.get(q.category, q.value) != q.value:
                assert a == "no", q.id


def test_colours_are_read_not_taken_from_the_heads(small_judge):
    judge, images, people = small_judge
    for image, attributes in zip(images, people):
        if "top_color" in attributes:
            assert judge.read(image)["top_color"] == attributes["top_color"]


def test_render_parsing_knows_only_its_renders():
    parsing = RenderParsing()
    with pytest.raises(KeyError, match="parses only the renders it was given"):
        parsing(Image.new("RGB", (8, 8)))


def test_missing_heads_say_how_to_build_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m cosmicman.simulation.region_judge --out"):
        RegionReaderJudge.load(RenderParsing(), tmp_path / "absent.npz")


def test_the_committed_heads_load():
    judge = RegionReaderJudge.load(RenderParsing(), HEADS_PATH)
    assert len(judge.version) == 16
