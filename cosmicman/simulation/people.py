"""Synthetic people for the annotation stage: I_e and the round-0 pretraining set (rendered with their
truth), a lazily rendered pool, and the ground truth of the synthetic pool images in the store."""

from __future__ import annotations

import json
from functools import partial

from cosmicman.annotation.items import AnnotationItem
from cosmicman.core.keys import SYNTHETIC_TRUTH_PREFIX
from cosmicman.core.store import Store
from cosmicman.core.workers import map_in_workers
from cosmicman.simulation.world import SyntheticSample, SyntheticWorld


def synthetic_samples(seed: int, count: int) -> list[SyntheticSample]:
    """``count`` kept single-person samples of the world ``seed``, rendered in parallel."""
    world = SyntheticWorld(seed=seed)
    return map_in_workers(partial(_kept_sample, world), count, min_per_worker=4)


def synthetic_people(seed: int, count: int) -> list[AnnotationItem]:
    """Rendered synthetic people with their ground truth (I_e, or a round-0 pretraining set)."""
    return [AnnotationItem.from_bytes(s.image_bytes, s.attributes) for s in synthetic_samples(seed, count)]


def synthetic_pool(seed: int, count: int) -> list[AnnotationItem]:
    """A pool of ``count`` synthetic people whose truth is known at once (drawn in parallel) and whose
    images are rendered only when a round samples them: a round over a pool of 20 000 renders a few
    hundred."""
    world = SyntheticWorld(seed=seed)
    truths = map_in_workers(world.attributes, count, min_per_worker=1000)
    return [
        AnnotationItem.lazy(f"synth-{seed}-{i}", partial(_rendered, world, i), truth) for i, truth in enumerate(truths)
    ]


def synthetic_truth(store: Store) -> dict[str, dict[str, str]]:
    """sha256 -> ground-truth attributes of every synthetic pool image that shows one person."""
    truth: dict[str, dict[str, str]] = {}
    for _, df in store.iter_tables(SYNTHETIC_TRUTH_PREFIX):
        for sha, attrs in df.select("sha256", "attributes").iter_rows():
            if attrs:
                truth[sha] = json.loads(attrs)
    return truth


def _kept_sample(world: SyntheticWorld, index: int) -> SyntheticSample:
    return world.sample(index, case="kept")


def _rendered(world: SyntheticWorld, index: int) -> bytes:
    return world.sample(index, case="kept").image_bytes
