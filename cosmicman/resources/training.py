"""Training settings as a Dagster resource: a named recipe plus overrides of ``TrainConfig`` fields.

``TrainConfig`` (``cosmicman.model.train.config``) is the only schema: the resource copies none of its
fields, so its defaults cannot drift from the trainer's, and every field can be set (in code or in the UI
launchpad, as ``overrides: {field: value}``). The per-run fields (``PER_RUN_FIELDS``: shards, output,
latent cache location, resume, the samples the shards hold outside the version) are filled by the
``daring_unet`` asset.

Replicates: each variant trains ``seeds`` models (``seeds_by_variant`` may give a variant its own count), the
i-th with ``TrainConfig.seed`` = the recipe's seed (after overrides) + i, so an ablation reports a mean and a
spread over seeds rather than one draw."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import model_validator

from cosmicman.model.train.config import PER_RUN_FIELDS, TrainConfig
from cosmicman.model.train.recipes import DEFAULT_RECIPE, check_recipe, recipe
from cosmicman.model.train.variants import VARIANTS


class TrainingResource(dg.ConfigurableResource):
    """Daring training settings: ``recipe`` is one of ``cosmicman.model.train.recipes.RECIPES`` (``tiny``:
    the embedded CPU run; ``released-sd15`` / ``released-sdxl``: the released CosmicMan recipe), and
    ``overrides`` changes any ``TrainConfig`` field of it."""

    recipe: str = DEFAULT_RECIPE
    # TrainConfig field -> value, checked against the schema. A bare dict is a permissive shape in Dagster's
    # config (dict[str, Any] would be a Map, which rejects null values such as pretrained: null)
    overrides: dict = {}
    # training seeds per variant (replicates: seed, seed + 1, ...); production trains one
    seeds: int = 1
    # variant name -> its own number of seeds, overriding ``seeds`` (a bare dict, as ``overrides``)
    seeds_by_variant: dict = {}

    @model_validator(mode="after")
    def _known_names(self) -> TrainingResource:
        check_recipe(self.recipe, self.overrides)
        per_run = sorted(set(self.overrides) & set(PER_RUN_FIELDS))
        if per_run:
            raise ValueError(f"training overrides {per_run} are filled per run by the daring_unet asset")
        unknown = sorted(set(self.seeds_by_variant) - set(VARIANTS))
        if unknown:
            raise ValueError(f"training seeds_by_variant names unknown variants {unknown}; known: {list(VARIANTS)}")
        for name, n in {
            "seeds": self.seeds,
            **{f"seeds_by_variant[{v}]": k for v, k in self.seeds_by_variant.items()},
        }.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"training {name}={n!r}: set a whole number of training seeds, at least 1")
        return self

    def seeds_of(self, variant: str) -> list[int]:
        """The training seeds of ``variant``'s replicates: the recipe's seed (after overrides) and the next ones."""
        first = recipe(self.recipe, **self.overrides).seed
        return [first + i for i in range(self.seeds_by_variant.get(variant, self.seeds))]

    def pretrained_model(self) -> str | None:
        """The base model the recipe fine-tunes (a hub id or a diffusers folder); None for tiny components."""
        return recipe(self.recipe, **self.overrides).pretrained

    def launch_config(
        self,
        shards: list[str],
        latent_cache_url: str,
        variant: dict[str, Any] | None = None,
        seed: int | None = None,
        excluded_samples: Sequence[str] = (),
    ) -> TrainConfig:
        """The config the asset launches (its ``output_url`` still empty: it is keyed by this config).
        ``variant`` overrides go last, then the replicate's ``seed`` (one of :meth:`seeds_of`; None: the
        recipe's); the latent cache is used when the config asks for it; checkpoints live beside the
        (config-keyed) output, so a relaunch continues where it stopped. ``excluded_samples``: keys of the
        samples the (shared) shards hold that the dataset version does not."""
        replicate = {} if seed is None else {"seed": seed}
        cfg = recipe(self.recipe, **{**self.overrides, **(variant or {}), **replicate})
        return dataclasses.replace(
            cfg,
            shards=list(shards),
            excluded_samples=list(excluded_samples),
            resume=True,
            cache_url=latent_cache_url if cfg.cache_latents else None,
        )
