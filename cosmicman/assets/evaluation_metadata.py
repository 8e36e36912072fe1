"""What the ``evaluation`` asset shows of an evaluation report (``cosmicman.evaluation.run``)."""

from __future__ import annotations

import io
from typing import Any

import dagster as dg
from PIL import Image

from cosmicman.assets.metadata import table
from cosmicman.assets.plots import bar_chart, image_column, image_grid
from cosmicman.core.store import Store

ACCURACIES = ("acc_obj", "acc_tex", "acc_shape", "acc_all")
METRIC_NOTES = {
    "frechet_distance": "to the real I_e images, over the feature extractor named (lower is better)",
    "kid": "kernel inception distance to the real I_e images (lower is better; near 0 for one distribution)",
    "clip_score": "100 x cos(image, caption) over the CLIP model named",
    "hpsv2": "human preference score over the HPSv2 model named",
}


def attention_overlays(root: Store, report: dict[str, Any]) -> dict[str, Any]:
    """``attention_overlays``: the report's overlay pictures (per prompt: the sample, then each caption group's
    cross-attention on it) and ``attention_overlays_maps``: what they show; or, as text, why there are none."""
    if "overlays" not in report:
        return {
            "attention_overlays": "this report has no overlays: evaluated before the evaluation drew them (issue 13)"
        }
    if not report["overlays"]:
        return {"attention_overlays": "this report has no overlays: it was evaluated with overlay_prompts = 0"}
    level = report["overlay_attention"]
    pictures = [Image.open(io.BytesIO(root.read_bytes(o["key"]))) for o in report["overlays"]]
    return {
        "attention_overlays": image_column(pictures, [o["caption"] for o in report["overlays"]]),
        "attention_overlays_maps": (
            f"cross-attention at 1/{level['map_factor']} of the image ({level['map_hw'][0]}x{level['map_hw'][1]} "
            f"maps, {len(level['layers'])} layers), mean over denoising steps, layers and heads; a group's map is "
            "the mean over its words, shown against its own peak, peak / mean beside its name"
        ),
    }


def report_metadata(store: Store, report: dict[str, Any], variant: str) -> dict[str, Any]:
    """The figures (each a number, so the checks and the ablation table read them), the generated-vs-real
    table, the accuracy chart against the real-image ceiling, the samples and attention overlays, and what
    scored them."""
    metrics, ceiling = report["metrics"], report["ceiling"]
    root = Store(report["output_url"], **store.storage_options)
    samples = [Image.open(io.BytesIO(root.read_bytes(s["key"]))) for s in report["samples"]]
    return {
        **metrics,
        **{f"ceiling_{k}": v for k, v in ceiling.items()},
        "metrics": table(
            [
                {"metric": k, "generated": v, "real_images": ceiling.get(k), "note": METRIC_NOTES.get(k, "")}
                for k, v in metrics.items()
            ],
            columns=["metric", "generated", "real_images", "note"],
        ),
        "accuracy_chart": bar_chart(
            {k: metrics[k] for k in ACCURACIES},
            title=f"{variant}: semantic accuracy",
            references={k: ceiling[k] for k in ACCURACIES},
            reference_label="real images",
        ),
        "samples": image_grid(samples, [s["caption"] for s in report["samples"]], thumb=(192, 192), cols=4),
        **attention_overlays(root, report),
        "prompt_set_version": report["prompt_set_version"],
        "n_prompts": report["n_prompts"],
        "judge": f"{report['judge']['name']} ({report['judge']['version']})",
        "feature_extractor": report["feature_extractor"],
        "clip_model": report["clip_model"],
        "hpsv2_model": report["hpsv2_model"],
    }


def attention_by_group(per_variant: dict[str, dg.TableMetadataValue]) -> list[dict[str, Any]]:
    """One row per caption group: its chance share and each variant's share of cross-attention inside the
    group's parsing mask (``daring_unet``'s ``attention_in_mask_by_group`` tables), HOLA's effect per group."""
    shares: dict[str, dict[str, Any]] = {}
    for variant, table_value in per_variant.items():
        for record in table_value.records:
            row = shares.setdefault(str(record.data["group"]), {"chance": record.data.get("chance")})
            row[variant] = record.data.get("share_in_mask")
    return [{"group": group, **row} for group, row in sorted(shares.items())]
