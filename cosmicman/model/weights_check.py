"""Does a trained model folder load, and are all its weights finite? (Dagster-free)

The model is loaded the way evaluation loads it (:func:`cosmicman.model.pipelines.load_pipeline`: diffusers
folder, the UNet through the loader that re-applies its Prime activation), so a folder that passes here is one
evaluation can open. Every parameter and buffer of every torch component (UNet, VAE, text encoders) is then
scanned: a NaN or an infinity anywhere makes every image it generates meaningless, even when the training loss
looked finite (the trainer's guard watches the loss, not the weights it publishes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from cosmicman.model.pipelines import load_pipeline, local_model_dir

NON_FINITE_SHOWN = 20


@dataclass(frozen=True)
class WeightsReport:
    """``values``: weights scanned per component; ``non_finite``: tensors with a NaN or infinity and how many
    (the first ``NON_FINITE_SHOWN``), ``non_finite_total`` over all; ``load_error`` when it did not load."""

    url: str
    load_error: str | None
    values: dict[str, int]
    non_finite: dict[str, int]
    non_finite_total: int

    @property
    def passed(self) -> bool:
        return self.load_error is None and self.non_finite_total == 0

    @property
    def reason(self) -> str:
        if self.load_error is not None:
            return f"{self.url} does not load: {self.load_error}"
        scanned = sum(self.values.values())
        if self.non_finite_total:
            first = ", ".join(self.non_finite)
            return f"{self.non_finite_total} of {scanned} weights are NaN or infinite (in {first})"
        return f"{self.url} loads; all {scanned} weights of {', '.join(self.values)} are finite"


def check_model_weights(url: str) -> WeightsReport:
    """Load the model at ``url`` (a diffusers folder, any fsspec URL) and scan every weight."""
    with local_model_dir(url) as model_dir:
        try:
            pipe = load_pipeline(model_dir)
        except Exception as exc:  # whatever stops it loading is the finding, reported whole
            return WeightsReport(url, f"{type(exc).__name__}: {exc}", {}, {}, 0)
    values: dict[str, int] = {}
    non_finite: dict[str, int] = {}
    total = 0
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        values[name] = 0
        for tensor_name, tensor in itertools.chain(component.named_parameters(), component.named_buffers()):
            values[name] += tensor.numel()
            if not tensor.is_floating_point():
                continue
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                total += bad
                if len(non_finite) < NON_FINITE_SHOWN:
                    non_finite[f"{name}.{tensor_name}"] = bad
    return WeightsReport(url, None, values, non_finite, total)
