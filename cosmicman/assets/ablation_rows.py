"""Figures over training seeds: the mean and the spread of each replicated figure, the per-group attention
averaged over seeds, and HOLA's attention gain paired by seed. Plain functions over plain values, so the
assets (``daring_unet``, ``evaluation``, ``ablation_table``) and the summary agree and a fast test pins them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# the row of the untuned base model in the ablation table and the summary
BASE_ROW = "base (no fine-tune)"
SD_SUFFIX = "_sd"


def mean_and_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1) of ``values``; the spread of one value is None (not
    0: one seed says nothing about the spread)."""
    if not values:
        raise ValueError("no values to average: at least one seed's figure is needed")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def over_seeds(per_seed: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float | None]:
    """``{key: mean, key_sd: spread}`` over the seeds' figures of each of ``keys`` that every seed reports
    as a number (a key some seed lacks is left out, not averaged over fewer seeds)."""
    out: dict[str, float | None] = {}
    for key in keys:
        values = [seed.get(key) for seed in per_seed]
        if not per_seed or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        out[key], out[key + SD_SUFFIX] = mean_and_sd([float(v) for v in values])  # type: ignore[arg-type]
    return out


def group_shares_over_seeds(per_seed: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per caption group (sorted): the mean and spread over seeds of its share of cross-attention inside
    its mask, and its chance share. ``per_seed[i]`` maps group -> ``{"share_in_mask", "chance"}``; a group one
    seed did not measure is averaged over the seeds that did, and ``seeds`` says how many."""
    shares: dict[str, list[float]] = {}
    chance: dict[str, Any] = {}
    for groups in per_seed:
        for group, cell in groups.items():
            shares.setdefault(group, []).append(float(cell["share_in_mask"]))
            chance.setdefault(group, cell.get("chance"))
    rows = []
    for group in sorted(shares):
        mean, sd = mean_and_sd(shares[group])
        rows.append(
            {
                "group": group,
                "share_in_mask": mean,
                "share_in_mask_sd": sd,
                "chance": chance[group],
                "seeds": len(shares[group]),
            }
        )
    return rows


@dataclass(frozen=True)
class PairedGain:
    """``treated - control`` of one figure over the seeds both trained: per seed, then its mean and spread."""

    seeds: tuple[int, ...]
    treated: float  # mean over the paired seeds
    control: float
    gain: float
    gain_sd: float | None  # None for one pair


def paired_gain(treated: Mapping[int, float], control: Mapping[int, float]) -> PairedGain | None:
    """The gain of ``treated`` over ``control`` (each seed -> figure), paired by training seed: seed s of the
    one against seed s of the other, so both start from the same draw; None when no seed is in both."""
    seeds = tuple(sorted(set(treated) & set(control)))
    if not seeds:
        return None
    gain, gain_sd = mean_and_sd([treated[s] - control[s] for s in seeds])
    return PairedGain(
        seeds=seeds,
        treated=statistics.fmean(treated[s] for s in seeds),
        control=statistics.fmean(control[s] for s in seeds),
        gain=gain,
        gain_sd=gain_sd,
    )


def seed_figures(models: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """seed -> ``key`` from a ``models`` table's rows (``daring_unet``'s per-seed table), where it is a number."""
    return {
        int(row["seed"]): float(row[key])
        for row in models
        if isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)
    }
