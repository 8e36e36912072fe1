"""A small folder dataset of synthetic people, so the local flywheel exercises the folder source too."""

from __future__ import annotations

import json
from pathlib import Path

from cosmicman.simulation.world import SyntheticWorld


def write_demo_folder(folder: Path, count: int = 6, seed: int = 5_000) -> int:
    """Write ``count`` renders and a ``captions.jsonl`` into ``folder`` unless it exists; images written.

    The folder appears whole or not at all (written beside it, then renamed)."""
    if folder.exists():
        return 0
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(seed=seed)
    captions = []
    for i in range(count):
        s = world.sample(i, case="kept")
        (tmp / f"person_{i:03d}.jpg").write_bytes(s.image_bytes)
        captions.append(json.dumps({"file": f"person_{i:03d}.jpg", "caption": "a person"}))
    (tmp / "captions.jsonl").write_text("\n".join(captions) + "\n")
    tmp.rename(folder)
    return count
