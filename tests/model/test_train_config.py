"""One training config: ``TrainConfig`` is the only schema; the Dagster resource is a recipe name plus
overrides of its fields, so the resource and the trainer cannot disagree on a default."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pydantic
import pytest

from cosmicman.model.train.config import PER_RUN_FIELDS, TrainConfig
from cosmicman.model.train.recipes import DEFAULT_RECIPE, RECIPES, recipe
from cosmicman.model.train.variants import VARIANTS
from cosmicman.resources.training import TrainingResource

SHARDS = ["file:///data/shard-000000.tar"]
CACHE = "file:///store/cache/latents"


def _launched(resource: TrainingResource, variant: dict | None = None) -> dict:
    return dataclasses.asdict(resource.launch_config(SHARDS, CACHE, variant))


def _with_run_fields(cfg: TrainConfig) -> dict:
    """What the asset adds to a recipe's config (output_url comes later: it is keyed by the config)."""
    return {
        **dataclasses.asdict(cfg),
        "shards": SHARDS,
        "resume": True,
        "cache_url": CACHE if cfg.cache_latents else None,
    }


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_resource_and_recipe_build_the_same_config(name):
    launched = _launched(TrainingResource(recipe=name))
    expected = _with_run_fields(recipe(name))
    assert set(launched) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert launched == expected  # every field


def test_default_resource_is_the_tiny_recipe():
    assert TrainingResource().recipe == DEFAULT_RECIPE == "tiny"
    tiny = recipe("tiny")
    assert (tiny.pretrained, tiny.resolution, tiny.steps, tiny.lr, tiny.hola_map_factor) == (None, 64, 500, 3e-3, 8)
    # Eq. 3 as printed: within 500 steps the released (mean) reduction leaves attention at chance
    assert (tiny.hola_reduction, tiny.beta, tiny.batch_size) == ("paper", 1.0, 4)
    assert (tiny.ema_decay, tiny.noise_offset, tiny.caption_dropout, tiny.cache_latents) == (0.9999, 0.05, 0.1, False)


def test_released_recipes():
    sd15, sdxl = recipe("released-sd15"), recipe("released-sdxl")
    for cfg in (sd15, sdxl):
        assert (cfg.lr, cfg.mixed_precision, cfg.buckets, cfg.cache_latents, cfg.gradient_checkpointing) == (
            1e-5,
            "bf16",
            True,
            False,  # a latent cache would freeze the per-sample flip and caption draws
            True,
        )
        assert (cfg.ema_decay, cfg.noise_offset, cfg.caption_dropout, cfg.hola_map_factor) == (0.9999, 0.05, 0.1, 16)
        assert (cfg.batch_size, cfg.grad_accum, cfg.checkpoint_every, cfg.checkpoints_keep) == (4, 4, 1000, 3)
    assert (sd15.resolution, sd15.family, sd15.deepspeed) == (512, "sd", "zero2")
    assert (sdxl.resolution, sdxl.family, sdxl.deepspeed) == (1024, "sdxl", "zero2_offload")


def test_recipes_and_variants_hold_no_per_run_fields():
    for overrides in [*RECIPES.values(), *VARIANTS.values()]:
        assert not set(overrides) & set(PER_RUN_FIELDS)
        TrainConfig.check_names(overrides)


def test_overrides_reach_the_config():
    resource = TrainingResource(
        recipe="tiny", overrides={"lr": 3e-4, "snr_gamma": 5.0, "act_fn": "mish", "shuffle_buffer": 8}
    )
    cfg = resource.launch_config(SHARDS, CACHE)
    assert (cfg.lr, cfg.snr_gamma, cfg.act_fn, cfg.shuffle_buffer) == (3e-4, 5.0, "mish", 8)
    assert cfg.resolution == 64  # the rest is the recipe's
    # a variant's overrides go last (the ablation differs from its baseline only there)
    assert resource.launch_config(SHARDS, CACHE, VARIANTS["baseline"]).beta == 0.0
    assert resource.launch_config(SHARDS, CACHE, VARIANTS["hola-gelu"]).act_fn == "gelu"
    # a released recipe turned into a CPU smoke run: no latent cache asked, none filled in
    smoke = TrainingResource(recipe="released-sd15", overrides={"cache_latents": False, "pretrained": None})
    assert smoke.launch_config(SHARDS, CACHE).cache_url is None
    assert recipe("tiny", steps=7) == dataclasses.replace(recipe("tiny"), steps=7)


def test_unknown_names_fail_in_one_line():
    with pytest.raises(ValueError, match=r"unknown training overrides \['learning_rate'\]; known: \[.*'lr'") as e:
        recipe("tiny", learning_rate=1e-4)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"unknown training recipe 'sd'; known: \['released-sd15', "):
        recipe("sd")
    with pytest.raises(pydantic.ValidationError, match=r"unknown training overrides \['learning_rate'\]"):
        TrainingResource(overrides={"learning_rate": 1e-4})
    with pytest.raises(pydantic.ValidationError, match="unknown training recipe 'sd'"):
        TrainingResource(recipe="sd")
    with pytest.raises(pydantic.ValidationError, match=r"\['shards'\] are filled per run"):
        TrainingResource(overrides={"shards": ["x.tar"]})
    with pytest.raises(ValueError, match="hola_reduction must be one of"):  # values: the schema's own checks
        TrainingResource(overrides={"hola_reduction": "mean"}).launch_config(SHARDS, CACHE)


def test_launchpad_run_config_sets_any_field():
    """What the UI launchpad sends: the recipe and overrides (None included) as run config."""
    seen = {}

    @dg.asset
    def probe(training: TrainingResource) -> None:
        seen.update(_launched(training))

    run_config = {
        "resources": {
            "training": {
                "config": {"recipe": "released-sd15", "overrides": {"pretrained": None, "steps": 5, "deepspeed": None}}
            }
        }
    }
    assert dg.materialize([probe], resources={"training": TrainingResource()}, run_config=run_config).success
    assert seen == _with_run_fields(recipe("released-sd15", pretrained=None, steps=5, deepspeed=None))
    bad = {"resources": {"training": {"config": {"overrides": {"stepz": 5}}}}}
    result = dg.materialize([probe], resources={"training": TrainingResource()}, run_config=bad, raise_on_error=False)
    assert not result.success
