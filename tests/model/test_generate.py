"""Generation from trained tiny SD and SDXL models: images plus settings that remake them bit for bit."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosmicman.model.generate import (
    SETTINGS_FILE,
    GenerationRequest,
    differing_images,
    generate,
    read_settings,
    request_from_settings,
)
from cosmicman.model.pipelines import GenerationError, load_pipeline, model_sha256, render_images
from tests.model.test_train import write_shards
from tests.support.tiny_model import poison_unet, train_tiny_model

FAMILIES = ("sd", "sdxl")
PROMPT = "a woman, red t-shirt, blue jeans"


def train_tiny_models(folder: Path) -> dict[str, Path]:
    shards = write_shards(folder / "shards", n_shards=1, per_shard=4)
    return {family: train_tiny_model(folder / family, family, shards) for family in FAMILIES}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory.mktemp("trained"))


def pixels(paths):
    return [np.asarray(Image.open(p)) for p in paths]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_trained_model_generates_one_image_per_seed_with_its_settings(models, family, tmp_path):
    request = GenerationRequest(str(models[family]), PROMPT, seeds=(5, 9, 11), steps=2, width=48, batch_size=2)
    paths = generate(request, tmp_path)
    assert [p.name for p in paths] == ["000_seed5.png", "001_seed9.png", "002_seed11.png"]
    images = pixels(paths)
    assert all(a.shape == (64, 48, 3) and a.dtype == np.uint8 for a in images)
    assert not np.array_equal(images[0], images[1]) and all(a.std() > 0 for a in images)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    pipeline = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}[family]
    assert settings["model"] == {
        "url": str(models[family]),
        "pipeline": pipeline,
        "family": family,
        "sha256": model_sha256(models[family]),
    }
    assert settings["scheduler"]["class"] == "DDPMScheduler"  # the trainer's, when none is named
    assert settings["scheduler"]["config"]["beta_schedule"] == "scaled_linear"
    assert (settings["prompt"], settings["steps"], settings["guidance_scale"]) == (PROMPT, 2, 7.5)
    assert (settings["height"], settings["width"], settings["batch_size"], settings["device"]) == (64, 48, 2, "cpu")
    assert [i["seed"] for i in settings["images"]] == [5, 9, 11]
    assert {"torch", "diffusers", "transformers", "numpy", "pillow", "python"} <= set(settings["versions"])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_settings_file_reproduces_the_images_bit_for_bit(models, family, tmp_path):
    # an ancestral scheduler draws fresh noise at every step: the per-image generators must drive that too
    request = GenerationRequest(
        str(models[family]), PROMPT, seeds=(1, 2, 3), steps=3, scheduler="EulerAncestralDiscreteScheduler", batch_size=2
    )
    first = generate(request, tmp_path / "first")
    settings = read_settings(tmp_path / "first" / SETTINGS_FILE)
    again = generate(request_from_settings(settings), tmp_path / "again")
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again), strict=True))
    assert differing_images(settings, again) == []
    assert json.loads((tmp_path / "again" / SETTINGS_FILE).read_text()) == settings
    # an image depends on its own seed, not on the batch it was drawn in (up to the UNet's float sums)
    (alone,) = generate(
        GenerationRequest(
            str(models[family]), PROMPT, seeds=(2,), steps=3, scheduler="EulerAncestralDiscreteScheduler"
        ),
        tmp_path / "alone",
    )
    assert np.abs(pixels([alone])[0].astype(int) - pixels(first)[1].astype(int)).max() <= 2


def test_two_schedulers_give_different_images_from_the_same_seed(models, tmp_path):
    url = str(models["sd"])
    euler = generate(GenerationRequest(url, PROMPT, steps=3, scheduler="EulerDiscreteScheduler"), tmp_path / "euler")
    dpm = generate(GenerationRequest(url, PROMPT, steps=3, scheduler="DPMSolverMultistepScheduler"), tmp_path / "dpm")
    assert not np.array_equal(pixels(euler)[0], pixels(dpm)[0])
    recorded = json.loads((tmp_path / "dpm" / SETTINGS_FILE).read_text())["scheduler"]
    # built from the model folder's config: same noise schedule, another sampler
    assert recorded["class"] == "DPMSolverMultistepScheduler" and recorded["config"]["beta_end"] == 0.012


def test_an_unknown_scheduler_names_the_compatible_ones(models):
    with pytest.raises(GenerationError) as err:
        load_pipeline(models["sdxl"], scheduler="FastestScheduler")
    message = str(err.value)
    assert "\n" not in message and "'FastestScheduler'" in message
    assert "EulerDiscreteScheduler" in message and "DPMSolverMultistepScheduler" in message


def test_a_changed_model_is_refused_and_a_moved_one_accepted(models, tmp_path):
    generate(GenerationRequest(str(models["sd"]), PROMPT, steps=2), tmp_path / "first")
    settings = read_settings(tmp_path / "first" / SETTINGS_FILE)
    moved = shutil.copytree(models["sd"], tmp_path / "moved")
    (moved / "training_run.json").write_text("{}")  # not loaded by the pipeline: not part of the hash
    again = generate(request_from_settings(settings, model_url=str(moved)), tmp_path / "again")
    assert differing_images(settings, again) == []
    poison_unet(moved, value=0.5)
    with pytest.raises(GenerationError, match="is not the one the settings record"):
        generate(request_from_settings(settings, model_url=str(moved)), tmp_path / "changed")
    assert not (tmp_path / "changed").exists()


def test_a_missing_or_foreign_model_folder_is_one_line(tmp_path):
    with pytest.raises(GenerationError, match=r"model folder .*nowhere is missing or empty"):
        generate(GenerationRequest(str(tmp_path / "nowhere"), PROMPT), tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(GenerationError, match="names pipeline 'FluxPipeline'; supported: StableDiffusionPipeline"):
        generate(GenerationRequest(str(tmp_path / "other"), PROMPT), tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": 99}', "is not a generation settings file"),
        ('{"format": 1, "prompt": 3}', "missing or mistypes: model, scheduler, prompt"),
    ],
)
def test_a_bad_settings_file_is_one_line(tmp_path, text, match):
    path = tmp_path / SETTINGS_FILE
    path.write_text(text)
    with pytest.raises(GenerationError, match=match):
        read_settings(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": (1, 1)}, "seeds repeat"),
        ({"seeds": ()}, "no seeds"),
        ({"height": 60}, "height 60 is not a positive multiple of 8"),
        ({"steps": 0}, "must be at least 1"),
        ({"prompt": "  "}, "the prompt is empty"),
    ],
)
def test_a_bad_request_is_refused_before_loading(kwargs, match):
    with pytest.raises(GenerationError, match=match):
        GenerationRequest(**{"model_url": "unused", "prompt": PROMPT, **kwargs})


def test_render_images_pairs_prompts_with_seeds(models):
    pipe = load_pipeline(models["sd"])
    images = render_images(pipe, ["a man", "a woman"], seeds=[0, 0], steps=2, batch_size=1)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # same seed, other prompt
    with pytest.raises(ValueError, match="one seed per image"):
        render_images(pipe, ["a man"], seeds=[0, 1])


def test_a_model_on_an_object_store_draws_what_its_local_copy_draws(models, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in models["sd"].rglob("*"):
        if path.is_file():
            fs.pipe(f"/gen-test/sd/{path.relative_to(models['sd']).as_posix()}", path.read_bytes())
    try:
        remote = generate(GenerationRequest("memory://gen-test/sd", PROMPT, steps=2), tmp_path / "remote")
        local = generate(GenerationRequest(str(models["sd"]), PROMPT, steps=2), tmp_path / "local")
    finally:
        fs.rm("/gen-test", recursive=True)
    assert np.array_equal(pixels(remote)[0], pixels(local)[0])
    recorded = json.loads((tmp_path / "remote" / SETTINGS_FILE).read_text())["model"]
    assert recorded["url"] == "memory://gen-test/sd" and recorded["sha256"] == model_sha256(models["sd"])
