"""Figures over training seeds (cosmicman.assets.ablation_rows) and the seeds the training resource asks for."""

import math

import pydantic
import pytest

from cosmicman.assets.ablation_rows import (
    group_shares_over_seeds,
    mean_and_sd,
    over_seeds,
    paired_gain,
    seed_figures,
)
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.training import TrainingResource

SHARDS = ["file:///data/shard-000000.tar"]
CACHE = "file:///store/cache/latents"


def test_mean_and_sample_sd_and_one_value_has_no_spread():
    mean, sd = mean_and_sd([0.1, 0.2, 0.6])
    assert mean == pytest.approx(0.3)
    assert sd == pytest.approx(math.sqrt(((0.2**2) + (0.1**2) + (0.3**2)) / 2))  # n - 1, not n
    assert mean_and_sd([0.4]) == (0.4, None)
    with pytest.raises(ValueError, match="no values to average"):
        mean_and_sd([])


def test_over_seeds_averages_every_number_every_seed_reports():
    per_seed = [{"acc_all": 0.5, "fd": 10.0, "judge": "x", "kid": 0.1}, {"acc_all": 0.7, "fd": 14.0, "judge": "x"}]
    out = over_seeds(per_seed, ["acc_all", "fd", "judge", "kid"])
    assert out["acc_all"] == pytest.approx(0.6) and out["acc_all_sd"] == pytest.approx(math.sqrt(0.02))
    assert out["fd"] == pytest.approx(12.0) and out["fd_sd"] == pytest.approx(math.sqrt(8.0))
    assert set(out) == {"acc_all", "acc_all_sd", "fd", "fd_sd"}  # no text, no figure one seed lacks
    assert over_seeds(per_seed[:1], ["acc_all"]) == {"acc_all": 0.5, "acc_all_sd": None}


def test_the_gain_pairs_seeds_and_leaves_out_unpaired_ones():
    hola = {0: 0.30, 1: 0.25, 2: 0.40, 7: 0.9}
    baseline = {0: 0.20, 1: 0.21, 2: 0.20, 5: 0.0}
    gain = paired_gain(hola, baseline)
    assert gain is not None and gain.seeds == (0, 1, 2)
    diffs = [0.10, 0.04, 0.20]
    assert gain.gain == pytest.approx(sum(diffs) / 3) and gain.gain > 0  # hola minus baseline, not the reverse
    assert gain.gain_sd == pytest.approx(math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2))
    assert gain.treated == pytest.approx(0.95 / 3) and gain.control == pytest.approx(0.61 / 3)
    one = paired_gain({0: 0.3}, {0: 0.2, 1: 0.1})
    assert one is not None and one.gain == pytest.approx(0.1) and one.gain_sd is None
    assert paired_gain({1: 0.3}, {0: 0.2}) is None


def test_seed_figures_read_a_models_table_and_skip_missing_cells():
    rows = [{"seed": 0, "attention_in_mask": 0.2}, {"seed": 1, "attention_in_mask": None}, {"seed": 2}]
    assert seed_figures(rows, "attention_in_mask") == {0: 0.2}


def test_group_shares_are_averaged_over_the_seeds_that_measured_them():
    rows = group_shares_over_seeds(
        [
            {"hair": {"share_in_mask": 0.2, "chance": 0.1}, "top": {"share_in_mask": 0.5, "chance": 0.3}},
            {"hair": {"share_in_mask": 0.4, "chance": 0.1}},
        ]
    )
    assert [r["group"] for r in rows] == ["hair", "top"]
    assert rows[0]["share_in_mask"] == pytest.approx(0.3) and rows[0]["share_in_mask_sd"] == pytest.approx(
        math.sqrt(0.02)
    )
    assert rows[0]["chance"] == 0.1 and rows[0]["seeds"] == 2
    assert rows[1] == {"group": "top", "share_in_mask": 0.5, "share_in_mask_sd": None, "chance": 0.3, "seeds": 1}


def test_the_resource_gives_each_variant_its_seeds_from_the_recipe_seed():
    assert TrainingResource().seeds_of("hola") == [0]  # production default: one seed
    resource = TrainingResource(seeds=2, seeds_by_variant={"hola": 3, "baseline": 1})
    assert [resource.seeds_of(v) for v in ("hola", "baseline", "hola-gelu")] == [[0, 1, 2], [0], [0, 1]]
    assert TrainingResource(overrides={"seed": 5}, seeds=3).seeds_of("hola") == [5, 6, 7]
    # the replicate's seed reaches the config, after the variant's overrides; seed 0 is the recipe's config
    cfg = resource.launch_config(SHARDS, CACHE, VARIANTS["baseline"], seed=2)
    assert (cfg.seed, cfg.beta) == (2, 0.0)
    assert resource.launch_config(SHARDS, CACHE, VARIANTS["baseline"], seed=0) == resource.launch_config(
        SHARDS, CACHE, VARIANTS["baseline"]
    )


def test_the_base_model_is_the_recipes_pretrained_one():
    assert TrainingResource().pretrained_model() is None  # tiny: components built from configs
    assert TrainingResource(overrides={"pretrained": "/models/base"}).pretrained_model() == "/models/base"
    assert TrainingResource(recipe="released-sd15").pretrained_model() == "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seeds_by_variant": {"hola-swish": 2}}, r"unknown variants \['hola-swish'\]; known: \['baseline', 'hola'"),
        ({"seeds": 0}, r"training seeds=0: set a whole number of training seeds, at least 1"),
        ({"seeds_by_variant": {"hola": 0}}, r"seeds_by_variant\[hola\]=0: set a whole number"),
        ({"seeds_by_variant": {"hola": True}}, r"seeds_by_variant\[hola\]=True"),
        ({"seeds_by_variant": {"hola": 1.5}}, r"seeds_by_variant\[hola\]=1.5"),
    ],
)
def test_bad_seed_settings_fail_in_one_line(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message) as err:
        TrainingResource(**settings)
    (error,) = err.value.errors()
    assert "\n" not in error["msg"]
