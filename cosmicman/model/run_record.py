"""The short form of a ``training_run.json`` record: what the trainer reports to Dagster (and prints).

Kept free of torch / diffusers so the Dagster code location can read published records cheaply."""

from __future__ import annotations

from typing import Any


def summary(record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"]
    out = {
        "output_url": record["config"]["output_url"],
        "loss_first": m["loss_first"],
        "loss_last": m["loss_last"],
        "noise_loss_last": m["noise_loss_last"],
        "hola_loss_last": m["hola_loss_last"],
        "steps": m["steps"],
        "seconds": m["seconds"],
        "seconds_per_step": m["seconds_per_step"],
        "n_shards": len(record["data"]["shards"]),
        "code_version": record["code_version"] or "",
        "hola_reduction": record["config"]["hola_reduction"],
        "act_fn": record["config"]["act_fn"],
    }
    if m.get("attention_alignment"):
        a = m["attention_alignment"]
        out.update(
            attention_in_mask=a["mean"], attention_in_mask_chance=a["chance"], attention_in_mask_by_group=a["groups"]
        )
    return out
