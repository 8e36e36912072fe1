"""A Human-Art stand-in: a small folder of synthetic renders in the Human-Art layout, for the local
fake-person head (real = photographic renders, fake = flat cartoon people)."""

from __future__ import annotations

import json

from cosmicman.core.imageio import image_format_ext
from cosmicman.core.keys import synthetic_humanart_prefix
from cosmicman.core.store import Store
from cosmicman.simulation.world import SyntheticWorld

# Real = photographic renders of every kind (the head must not learn "a person is present"),
# fake = flat cartoon people; counts per 100 training images.
FAKE_HEAD_MIX = {"kept": 20, "low_quality": 10, "no_person": 7, "many_people": 7, "small_face": 6, "fake_person": 50}


def synthetic_humanart_scenario(case: str) -> tuple[str, str]:
    """Where a render of ``case`` sits in the Human-Art layout: cartoons are 2D virtual humans, every
    photographic render (people or not) is real_human/<case>."""
    return ("2D_virtual_human", "cartoon") if case == "fake_person" else ("real_human", case)


def write_synthetic_humanart_folder(store: Store, seed: int, size: int) -> str:
    """Write ``size`` renders of seed ``seed`` in ``FAKE_HEAD_MIX`` into ``store`` once; the folder's URL.

    Keyed by seed and size, and completed by a manifest written last: a folder with a manifest is
    reused as is, one without (an interrupted write) is rendered again over itself.
    """
    prefix = synthetic_humanart_prefix(seed, size)
    manifest = f"{prefix}/manifest.json"
    if not store.exists(manifest):
        world = SyntheticWorld(seed=seed)
        cases = [c for c, n in FAKE_HEAD_MIX.items() for _ in range(n * size // 100)]
        for i, case in enumerate(cases):
            group, scenario = synthetic_humanart_scenario(case)
            data = world.sample(i, case=case).image_bytes
            store.write_bytes(f"{prefix}/images/{group}/{scenario}/{i:012d}.{image_format_ext(data)}", data)
        store.write_bytes(
            manifest, json.dumps({"seed": seed, "mix": FAKE_HEAD_MIX, "images": len(cases)}, sort_keys=True).encode()
        )
    return store.uri(prefix)
