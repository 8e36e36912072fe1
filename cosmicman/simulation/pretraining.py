"""Round 0 of the simulated loop: the labels a generic pretrained VLM would give, and the probe trained on them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cosmicman.annotation.probe_annotator import ProbeAnnotator
from cosmicman.core.protocol import Category, Protocol, load_protocol

# Per-category reliability of the labels a generic (web-trained) VLM has "seen": head categories
# (gender, age, big garments) are reliable; tail ones (patterns, lengths, types, small items) are
# systematically confused. Categories not listed use the per-tag default.
GENERIC_VLM_PROFILE: dict[str, float] = {
    "gender": 0.97,
    "age": 0.95,
    "background": 0.92,
    "hair_exists": 0.95,
    "top_exists": 0.95,
    "pants_exists": 0.95,
    "dress_exists": 0.93,
    "skirt_exists": 0.9,
    "shoes_exists": 0.9,
    "hat_exists": 0.9,
    "top_color": 0.88,
    "dress_color": 0.85,
    "pants_color": 0.85,
    "hair_color": 0.85,
    "skin_tone": 0.8,
    "_tag:global": 0.75,
    "_tag:obj": 0.6,
    "_tag:tex": 0.5,
    "_tag:shape": 0.4,
    "top_pattern": 0.35,
    "dress_pattern": 0.3,
    "skirt_pattern": 0.3,
    "pants_pattern": 0.3,
    "scarf_pattern": 0.3,
    "sleeve_length": 0.45,
    "pants_length": 0.4,
    "dress_length": 0.4,
    "skirt_length": 0.35,
    "hat_type": 0.35,
    "shoes_type": 0.35,
    "bag_type": 0.3,
    "pose": 0.4,
    "belt_exists": 0.5,
    "belt_color": 0.3,
    "sunglasses_exists": 0.55,
}


def _reliability(cat: Category, profile: Mapping[str, float]) -> float:
    return float(profile.get(cat.name, profile.get(f"_tag:{cat.tag}", 0.6)))


def _confusion_map(cat: Category, seed: int) -> dict[str, str]:
    """A fixed derangement of the vocabulary: the systematic mistake the simulated VLM makes."""
    answers = list(cat.answers)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{cat.name}".encode()).digest()[:4], "little"))
    shift = int(rng.integers(1, len(answers))) if len(answers) > 1 else 0
    order = [answers[i] for i in rng.permutation(len(answers))]
    return {order[i]: order[(i + shift) % len(order)] for i in range(len(order))}


def simulate_pretraining_labels(
    attributes: Sequence[Mapping[str, str]],
    seed: int = 0,
    profile: Mapping[str, float] | None = None,
    protocol: Protocol | None = None,
    tail_coverage: float = 0.5,
) -> list[dict[str, str]]:
    """Noisy, biased labels as a generic pretrained VLM would give, from the true ``attributes``.

    Per category with reliability ``r`` (from ``profile``): the true answer with probability ``r``,
    otherwise the category's fixed systematic confusion (a derangement of its vocabulary), so weak
    categories are learnt *wrongly*, not just noisily. Categories with ``r < 0.6`` are only labelled
    on a ``tail_coverage`` fraction of the images (the VLM rarely saw them).
    """
    protocol = protocol or load_protocol()
    profile = GENERIC_VLM_PROFILE if profile is None else profile
    rng = np.random.default_rng(seed)
    maps = {c.name: _confusion_map(c, seed) for c in protocol.categories}
    out = []
    for attrs in attributes:
        noisy = {}
        for cat in protocol.categories:
            if cat.name not in attrs:
                continue
            r = _reliability(cat, profile)
            if r < 0.6 and rng.random() > tail_coverage:
                continue
            truth = attrs[cat.name]
            noisy[cat.name] = truth if rng.random() < r else maps[cat.name][truth]
        out.append(noisy)
    return out


def pretrained_probe(
    images: Sequence[Image.Image | bytes],
    true_attributes: Sequence[Mapping[str, str]],
    seed: int = 0,
    profile: Mapping[str, float] | None = None,
    protocol: Protocol | None = None,
    **kwargs: Any,
) -> ProbeAnnotator:
    """Round 0, simulating a generic pretrained VLM: the probe trained on :func:`simulate_pretraining_labels`."""
    noisy = simulate_pretraining_labels(true_attributes, seed=seed, profile=profile, protocol=protocol)
    return ProbeAnnotator.train(images, noisy, protocol=protocol, **kwargs)
