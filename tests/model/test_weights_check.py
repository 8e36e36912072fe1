"""A trained model folder loads and has finite weights (cosmicman.model.weights_check)."""

import shutil

import pytest

from cosmicman.model.weights_check import NON_FINITE_SHOWN, check_model_weights
from tests.support.tiny_model import poison_unet, truncate_unet, write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def copy_of(model, tmp_path):
    return shutil.copytree(model, tmp_path / "model")


def test_a_sound_model_loads_with_every_weight_finite(model):
    report = check_model_weights(str(model))
    assert report.passed and report.load_error is None and report.non_finite_total == 0
    assert set(report.values) == {"unet", "vae", "text_encoder"} and all(n > 0 for n in report.values.values())
    assert report.reason.startswith(f"{model} loads; all {sum(report.values.values())} weights")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_one_non_finite_weight_fails(model, tmp_path, value):
    folder = copy_of(model, tmp_path)
    (name,) = poison_unet(folder, value)
    report = check_model_weights(str(folder))
    assert not report.passed and report.load_error is None
    assert report.non_finite_total == 1 and report.non_finite == {f"unet.{name}": 1}
    assert report.reason.startswith("1 of ") and f"unet.{name}" in report.reason


def test_many_non_finite_tensors_are_counted_and_the_first_named(model, tmp_path):
    folder = copy_of(model, tmp_path)
    poison_unet(folder, tensors=NON_FINITE_SHOWN + 5)
    report = check_model_weights(str(folder))
    assert report.non_finite_total == NON_FINITE_SHOWN + 5 and len(report.non_finite) == NON_FINITE_SHOWN


def test_a_folder_that_does_not_load_fails_with_the_error(model, tmp_path):
    folder = copy_of(model, tmp_path)
    truncate_unet(folder)
    report = check_model_weights(str(folder))
    assert not report.passed and report.load_error and report.values == {}
    assert report.reason.startswith(f"{folder} does not load: ")
