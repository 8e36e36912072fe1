"""The numbers a person wants after a turn of the flywheel, read from the instance and the object store."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from cosmicman.assets.ablation_rows import BASE_ROW
from cosmicman.cli.environment import resolved
from cosmicman.core.store import Store
from cosmicman.model.train.variants import VARIANTS


def object_store_of(defs: dg.Definitions) -> Store:
    """The environment's object store, its ``dg.EnvVar`` fields read (a missing one is a one-line error)."""
    return resolved((defs.resources or {})["object_store"], "object store").store()


def unparsed_images(instance: dg.DagsterInstance, batches: Sequence[str]) -> dict[str, int]:
    """Kept images that ``human_parsing`` could not parse (so they reach no dataset), counted by reason over
    ``batches`` (its ``unparsed_by_reason`` metadata), most frequent first."""
    from cosmicman.assets.evaluation import latest_metadata

    counts: dict[str, int] = {}
    for batch in batches:
        for reason, n in (latest_metadata(instance, "human_parsing", batch).get("unparsed_by_reason") or {}).items():
            counts[reason] = counts.get(reason, 0) + n
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def collect_summary(defs: dg.Definitions, instance: dg.DagsterInstance, variants: list[str]) -> dict:
    """The numbers a person wants after a turn of the flywheel, read from the latest materializations."""
    from cosmicman.assets.evaluation import latest_metadata

    def meta(asset: str, partition: str | None = None) -> dict:
        if partition is not None:
            return latest_metadata(instance, asset, partition)
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return {}
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    partitions = instance.get_dynamic_partitions("sourcing_batches")
    stages: dict[str, dict] = {}
    rejections: dict[str, int] = {}
    for p in partitions:
        raw, filt, parse = meta("raw_images", p), meta("filtered_images", p), meta("human_parsing", p)
        stages[p] = {"raw": raw.get("images"), "kept": filt.get("kept"), "parsed": parse.get("parsed")}
        for reason, n in (raw.get("failed_by_reason") or {}).items():
            rejections[f"sourcing:{reason}"] = rejections.get(f"sourcing:{reason}", 0) + n
        for reason, n in (filt.get("decisions") or {}).items():
            if reason != "kept":
                rejections[reason] = rejections.get(reason, 0) + n
    from cosmicman.annotation.ledger import RoundLedger

    hq = meta("cosmicman_hq")
    ablation = meta("ablation_table")
    ledger = RoundLedger(object_store_of(defs))
    results, curve = ledger.results(), ledger.curve()
    return {
        "batches": stages,
        "rejections": rejections,
        "unparsed": unparsed_images(instance, partitions),
        "hitl": {
            "rounds": len(results),
            "curve": curve,
            "mean_accuracy_round0": curve[0]["mean_accuracy"] if curve else None,
            "mean_accuracy_final": curve[-1]["mean_accuracy"] if curve else None,
            "labels_asked": curve[-1]["labels_asked"] if curve else 0,
            "manual_share": curve[-1]["manual_share"] if curve else 0.0,
            "stop_reason": results[-1].stop_reason if results else None,
        },
        "dataset": {
            "version": hq.get("version"),
            "samples": hq.get("samples"),
            "reused": hq.get("reused"),
            "stats": hq.get("stats"),
        },
        "variants": {
            v: {
                **{
                    k: meta("daring_unet", v).get(k)
                    for k in (
                        "loss_first",
                        "loss_last",
                        "loss_last_sd",
                        "steps",
                        "output_url",
                        "reused",
                        "attention_in_mask",
                        "attention_in_mask_sd",
                        "seeds",
                    )
                },
                **{k: meta("evaluation", v).get(k) for k in (*EVALUATED, *(f"{m}_sd" for m in FIGURES))},
            }
            for v in variants
        },
        # the untuned base model, scored as every variant ({} until base_model_evaluation ran)
        "base": {k: meta("base_model_evaluation").get(k) for k in FIGURES} if meta("base_model_evaluation") else {},
        "ablation_rows": ablation.get("variants"),
        "ablation": {k: ablation.get(k) for k in GAIN_KEYS},
    }


# the figures of a model's evaluation (each a mean over training seeds, with ``<figure>_sd`` beside it)
FIGURES = ("acc_obj", "acc_tex", "acc_shape", "acc_all", "frechet_distance", "kid", "clip_score", "hpsv2")
EVALUATED = (*FIGURES, "ceiling_acc_all", "judge", "feature_extractor", "prompt_set_version", "n_prompts")
# what ablation_table says of HOLA's attention gain over the noise-only baseline (cosmicman.assets.evaluation)
GAIN_KEYS = (
    "hola_attention_gain",
    "hola_attention_gain_sd",
    "hola_attention_gain_seeds",
    "hola_attention_in_mask",
    "baseline_attention_in_mask",
    "attention_in_mask_chance",
    "hola_attention_gain_note",
)


def mean_sd(mean: float | None, sd: float | None, spec: str) -> str:
    """``0.512 ± 0.013`` (``spec`` formats both), the mean alone for one seed, ``-`` when not measured."""
    if mean is None:
        return "-"
    return f"{mean:{spec}}" if sd is None else f"{mean:{spec}} ± {sd:{spec}}"


def gain_line(ablation: dict) -> str:
    """``HOLA attention gain: X ± sd over n seeds (hola A vs noise-only B, chance C)``, or why it is missing."""
    gain = ablation.get("hola_attention_gain")
    if gain is None:
        return f"HOLA attention gain: {ablation.get('hola_attention_gain_note') or 'not measured (no ablation table)'}"
    n = ablation.get("hola_attention_gain_seeds")
    chance = ablation.get("attention_in_mask_chance")
    return (
        f"HOLA attention gain: {mean_sd(gain, ablation.get('hola_attention_gain_sd'), '.3f')} over {n} "
        f"seed{'s' if n != 1 else ''} (hola {ablation['hola_attention_in_mask']:.3f} vs noise-only "
        f"{ablation['baseline_attention_in_mask']:.3f}, chance {'-' if chance is None else format(chance, '.3f')})"
    )


def print_summary(summary: dict) -> None:
    print("\n=== CosmicMan flywheel: summary ===")
    total_raw = total_kept = 0
    for batch, s in summary["batches"].items():
        print(f"  {batch}: raw {s['raw']}  kept {s['kept']}  parsed {s['parsed']}")
        total_raw += s["raw"] or 0
        total_kept += s["kept"] or 0
    print(f"  images: raw {total_raw} -> kept {total_kept}")
    print("  rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["rejections"].items())))
    for reason, n in summary["unparsed"].items():
        print(f"  {n} images not parsed: {reason}")
    h = summary["hitl"]
    print(
        f"  annotation: {h['rounds']} rounds, mean accuracy {h['mean_accuracy_round0']:.3f} -> "
        f"{h['mean_accuracy_final']:.3f}, {h['labels_asked']} human labels ({100 * h['manual_share']:.1f}% of a "
        f"full manual pass), stop: {h['stop_reason']}"
    )
    d = summary["dataset"]
    stats = d["stats"] or {}
    reused = " (unchanged, reused)" if d["reused"] else ""
    print(
        f"  dataset cosmicman-hq {d['version']}: {d['samples']} samples{reused}; "
        + ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, (int, float)))[:400]
    )
    seeds = ", ".join(f"{name} x{len(v['seeds'] or [0])}" for name, v in summary["variants"].items())
    print(f"  daring_unet variants (same data and steps; training seeds: {seeds}); each figure mean ± sd over seeds:")
    untrained = [v for v in VARIANTS if v not in summary["variants"]]
    if untrained:
        print(
            f"    not trained in this turn: {', '.join(untrained)} (add them with --variants, or make run RUN_VARIANTS)"
        )
    print(
        f"    {'variant':<20} {'seeds':>5} {'loss last':>17} {'acc_obj':>7} {'acc_tex':>7} {'acc_shape':>9} "
        f"{'acc_all':>15} {'FD':>17} {'KID':>7} {'CLIP':>6} {'HPSv2':>6} {'attn in mask':>15}"
    )
    base = summary.get("base") or {}
    rows = [(BASE_ROW, {**base, "seeds": None, "reused": False})] if base else []
    for name, v in [*rows, *summary["variants"].items()]:
        print(
            f"    {name:<20} {'-' if v['seeds'] is None else len(v['seeds']):>5} "
            f"{mean_sd(v.get('loss_last'), v.get('loss_last_sd'), '.4f'):>17} {v['acc_obj']:>7.3f} "
            f"{v['acc_tex']:>7.3f} {v['acc_shape']:>9.3f} {mean_sd(v['acc_all'], v.get('acc_all_sd'), '.3f'):>15} "
            f"{mean_sd(v['frechet_distance'], v.get('frechet_distance_sd'), '.3f'):>17} {v['kid']:>7.4f} "
            f"{v['clip_score']:>6.2f} {v['hpsv2']:>6.3f} "
            f"{mean_sd(v.get('attention_in_mask'), v.get('attention_in_mask_sd'), '.3f'):>15}"
            f"{'  (reused)' if v['reused'] else ''}"
        )
    if not base:
        print(f"    {BASE_ROW}: not evaluated (base_model_evaluation has no materialization)")
    first = next(iter(summary["variants"].values()))
    print(f"    models under {first['output_url'].rsplit('/', 1)[0]}")
    print(
        f"    scored on prompt set {first['prompt_set_version']} ({first['n_prompts']} prompts) by the judge "
        f"{first['judge']} (not the annotator); real-image ceiling acc_all {first['ceiling_acc_all']:.3f}; "
        f"distances over {first['feature_extractor']}"
    )
    print(f"  {gain_line(summary['ablation'])}")
    runs = summary["runs"]
    by = ", ".join(f"{n} by {name}" for name, n in runs["by"].items())
    print(f"  runs launched this turn: {runs['launched']} ({by or 'nothing new to do'})")
    print(f"  took {summary['seconds']}s; the daemon's log: {summary['daemon_log']}\n")
    print("Open the UI:  make ui   (then http://127.0.0.1:3000)")
