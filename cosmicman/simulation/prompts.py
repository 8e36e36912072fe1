"""Test prompts drawn from the synthetic world: held-out people with exact attributes."""

from __future__ import annotations

import numpy as np

from cosmicman.simulation.world import SyntheticWorld


def synthetic_test_attributes(seed: int, count: int) -> list[dict[str, str]]:
    """``count`` attribute sets drawn by the world of ``seed`` (a seed no sourcing batch uses)."""
    world = SyntheticWorld(seed=seed)
    rng = np.random.default_rng(seed)
    return [world.random_attributes(rng) for _ in range(count)]
