"""``cosmicman generate``: free text or a person description in, images and their settings out; the settings
file redoes the run bit for bit; a mistake is one line and exit 2."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosmicman.cli.__main__ import main
from cosmicman.datasets.captions import build_caption
from tests.model.test_generate import train_tiny_models

REPO = Path(__file__).resolve().parents[2]
PERSON = {"gender": "woman", "age": "adult", "top_exists": "yes", "top_color": "red", "pants_exists": "no"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory.mktemp("trained"))


def run(capsys, *argv) -> tuple[int, list[str], list[str]]:
    try:
        code = main(["generate", *map(str, argv)])
    except SystemExit as exc:  # argparse's own refusals exit from the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_a_prompt_generates_and_its_settings_file_redoes_the_run(models, capsys, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    args = ("--prompt", "a man, blue jeans", "--seed", 3, "--num-images", 3, "--steps", 2, "--batch-size", 2)
    code, out, err = run(
        capsys, "--model", models["sd"], *args, "--scheduler", "UniPCMultistepScheduler", "--out", first
    )
    assert (code, err) == (0, [])
    assert out == [str(first / f"{i:03d}_seed{s}.png") for i, s in enumerate((3, 4, 5))] + [
        str(first / "generation.json")
    ]
    settings = json.loads((first / "generation.json").read_text())
    assert settings["scheduler"]["class"] == "UniPCMultistepScheduler" and settings["batch_size"] == 2
    code, out, err = run(capsys, "--from-json", first / "generation.json", "--out", again)
    assert (code, err, out[-1]) == (0, [], "reproduced 3/3 images bit for bit")
    for name in ("000_seed3.png", "001_seed4.png", "002_seed5.png"):
        assert np.array_equal(np.asarray(Image.open(first / name)), np.asarray(Image.open(again / name)))


def test_a_person_description_is_captioned_as_in_training_on_sdxl(models, capsys, tmp_path):
    person = tmp_path / "person.json"
    person.write_text(json.dumps(PERSON))
    code, out, err = run(capsys, "--model", models["sdxl"], "--person", person, "--steps", 2, "--out", tmp_path / "o")
    assert (code, err, len(out)) == (0, [], 2)
    settings = json.loads((tmp_path / "o" / "generation.json").read_text())
    assert settings["person"] == PERSON and settings["model"]["pipeline"] == "StableDiffusionXLPipeline"
    # the flywheel's caption of this person with no group dropped: every described group is in the prompt
    assert settings["prompt"] == build_caption(PERSON, rng=0, group_dropout=0.0).text
    assert "woman" in settings["prompt"] and "red" in settings["prompt"]


def test_images_that_no_longer_match_their_settings_fail_the_rerun(models, capsys, tmp_path):
    run(capsys, "--model", models["sd"], "--prompt", "a woman", "--steps", 2, "--out", tmp_path / "first")
    settings = json.loads((tmp_path / "first" / "generation.json").read_text())
    settings["images"][0]["pixels_sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(settings))
    code, _, err = run(capsys, "--from-json", tmp_path / "edited.json", "--out", tmp_path / "again")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: 1/1 images differ from the recorded ones (000_seed0.png); same library versions")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_model", "model folder {tmp}/nowhere is missing or empty"),
        ("unknown_scheduler", "unknown scheduler 'Magic'; this model's compatible schedulers: DDIMScheduler, "),
        ("unknown_attribute", "unknown attributes in {tmp}/p.json: cape_color; the protocol's: gender, age, "),
        ("bad_answer", "{tmp}/p.json: gender='robot' is not one of man, woman"),
        ("absent_part", "{tmp}/p.json: hat_color describes something absent; it needs hat_exists='yes'"),
        ("bad_person_json", "{tmp}/p.json is not valid JSON: "),
        ("bad_settings_json", "{tmp}/s.json is not valid JSON: "),
        ("settings_with_knobs", "--from-json takes every setting from {tmp}/s.json; drop --steps, --seed"),
        ("seeds_and_count", "--num-images 3 with 2 seeds: give one seed, or one seed per image"),
        ("no_model", "--model is required with --prompt or --person"),
        ("no_input", "one of the arguments --prompt --person --from-json is required"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(models, capsys, tmp_path, case, expected):
    sd, out = models["sd"], ("--out", tmp_path / "out")
    # built lazily: only this case writes its files
    argv = {
        "missing_model": lambda: ("--model", tmp_path / "nowhere", "--prompt", "a woman"),
        "unknown_scheduler": lambda: ("--model", sd, "--prompt", "a woman", "--scheduler", "Magic"),
        "unknown_attribute": lambda: ("--model", sd, "--person", write(tmp_path / "p.json", '{"cape_color": "red"}')),
        "bad_answer": lambda: ("--model", sd, "--person", write(tmp_path / "p.json", '{"gender": "robot"}')),
        "absent_part": lambda: ("--model", sd, "--person", write(tmp_path / "p.json", '{"hat_color": "red"}')),
        "bad_person_json": lambda: ("--model", sd, "--person", write(tmp_path / "p.json", "{gender")),
        "bad_settings_json": lambda: ("--from-json", write(tmp_path / "s.json", "[1,")),
        "settings_with_knobs": lambda: ("--from-json", write(tmp_path / "s.json", "{}"), "--steps", 3, "--seed", 1),
        "seeds_and_count": lambda: ("--model", sd, "--prompt", "a woman", "--seed", 1, 2, "--num-images", 3),
        "no_model": lambda: ("--prompt", "a woman"),
        "no_input": lambda: ("--model", sd),
    }[case]()
    code, lines, err = run(capsys, *argv, *out)
    assert (code, lines, len(err)) == (2, [], 1)
    # the CLI's own errors start "error: "; argparse's name the program first
    assert err[0].startswith("error: " if case != "no_input" else "python -m cosmicman.cli generate: error: ")
    assert expected.format(tmp=tmp_path) in err[0], err[0]
    assert not (tmp_path / "out").exists()


def test_the_cosmicman_command_and_the_library_module():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cosmicman": "cosmicman.cli.__main__:main"}
    # the library module is no command: run as one it says where the command is, instead of doing nothing
    done = subprocess.run(
        [sys.executable, "-m", "cosmicman.model.generate"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].endswith("run `cosmicman generate` (python -m cosmicman.cli generate)")
