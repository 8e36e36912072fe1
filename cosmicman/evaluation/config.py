"""What one evaluation run is told: the model, the test prompt set, the judge and the scorers (JSON-able).

The orchestrator (the ``evaluation`` asset) builds it; ``python -m cosmicman.evaluation`` reads it from the
Pipes extras (or ``--config``), wherever it runs: a local child process, a GPU pod. Every scorer is named by a
local path in production; a scorer left unnamed runs on a tiny model built from a config, and every result
says which (a stand-in's name says it is not the real model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import fsspec

FEATURE_KINDS = ("inception", "random_conv")


@dataclass
class EvaluationConfig:
    """One model on one prompt set.

    - ``model_url``: the trained model folder (SD-1.5 or SDXL layout, read from its ``model_index.json``).
    - ``prompts_url``: the versioned test prompt set (JSON lines of protocol attributes).
    - ``store_url``: the object store holding I_e, the real images the distances compare against.
    - ``output_url``: where the report and the sample images go.
    - ``judge``: the semantic-accuracy judge, configured apart from the flywheel's annotator:
      ``{"kind": "vqa", "path": <local VQA model folder>}`` or ``{"kind": "python", "factory":
      "<module>:<function>", "options": {...}}`` (a judge of one's own, built by that function).
    - ``features``: ``{"kind": "inception", "weights_path": ...}`` or ``{"kind": "random_conv", "seed": 0}``.
    - ``clip_path`` / ``hpsv2_path``: a saved CLIP folder / HPSv2 checkpoint; None: a tiny untrained stand-in.
    - ``image_seed``: image i starts from seed ``image_seed + i``; the same seeds for every model compared.
    - ``overlay_prompts``: the first that many test prompts get an attention overlay per caption group
      (``overlays/NNN.png``, :mod:`cosmicman.evaluation.attention_overlays`); 0: none.
    - ``overlay_map_factor``: the overlays' UNet level as image side / map side; None: the released HOLA
      level (1/16) or the level with cross-attention nearest to it.
    """

    model_url: str
    prompts_url: str
    store_url: str
    output_url: str
    judge: dict[str, Any]
    features: dict[str, Any] = field(default_factory=lambda: {"kind": "random_conv", "seed": 0})
    clip_path: str | None = None
    hpsv2_path: str | None = None
    n_prompts: int | None = None
    image_seed: int = 30_000
    steps: int = 10
    guidance_scale: float = 5.0
    scheduler: str | None = None
    overlay_prompts: int = 4
    overlay_map_factor: int | None = None
    device: str = "cpu"
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = self.features.get("kind")
        if kind not in FEATURE_KINDS:
            raise ValueError(f"features.kind {kind!r} is not one of {', '.join(FEATURE_KINDS)}")
        if "kind" not in self.judge:
            raise ValueError('judge has no "kind": name "vqa" (with "path") or "python" (with "factory")')
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.overlay_prompts < 0:
            raise ValueError(f"overlay_prompts must be at least 0 (0: no overlays), got {self.overlay_prompts}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvaluationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown evaluation config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**raw)

    @classmethod
    def load(cls, url: str) -> EvaluationConfig:
        with fsspec.open(url, "rt") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
