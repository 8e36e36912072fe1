"""Training settings as a Dagster resource: a named recipe plus overrides of ``TrainConfig`` fields.

``TrainConfig`` (``cosmicman.model.train.config``) is the only schema: the resource copies none of its
fields, so its defaults cannot drift from the trainer's, and every field can be set (in code or in the UI
launchpad, as ``overrides: {field: value}``). The per-run fields (``PER_RUN_FIELDS``: shards, output,
latent cache location, resume) are filled by the ``daring_unet`` asset."""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg
from pydantic import model_validator

from cosmicman.model.train.config import PER_RUN_FIELDS, TrainConfig
from cosmicman.model.train.recipes import DEFAULT_RECIPE, check_recipe, recipe


class TrainingResource(dg.ConfigurableResource):
    """Daring training settings: ``recipe`` is one of ``cosmicman.model.train.recipes.RECIPES`` (``tiny``:
    the embedded CPU run; ``released-sd15`` / ``released-sdxl``: the released CosmicMan recipe), and
    ``overrides`` changes any ``TrainConfig`` field of it."""

    recipe: str = DEFAULT_RECIPE
    # TrainConfig field -> value, checked against the schema. A bare dict is a permissive shape in Dagster's
    # config (dict[str, Any] would be a Map, which rejects null values such as pretrained: null)
    overrides: dict = {}

    @model_validator(mode="after")
    def _known_names(self) -> TrainingResource:
        check_recipe(self.recipe, self.overrides)
        per_run = sorted(set(self.overrides) & set(PER_RUN_FIELDS))
        if per_run:
            raise ValueError(f"training overrides {per_run} are filled per run by the daring_unet asset")
        return self

    def launch_config(
        self, shards: list[str], latent_cache_url: str, variant: dict[str, Any] | None = None
    ) -> TrainConfig:
        """The config the asset launches (its ``output_url`` still empty: it is keyed by this config).
        ``variant`` overrides go last; the latent cache is used when the config asks for it; checkpoints
        live beside the (config-keyed) output, so a relaunch continues where it stopped."""
        cfg = recipe(self.recipe, **{**self.overrides, **(variant or {})})
        return dataclasses.replace(
            cfg, shards=list(shards), resume=True, cache_url=latent_cache_url if cfg.cache_latents else None
        )
