"""What the labelling rounds show in the UI: accuracy on I_e per tag and for the weakest categories (the
protocol's 70 categories in one table would bury the page), and the rounds' accuracy and cost curves."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import dagster as dg

from cosmicman.annotation.ledger import RoundLedger
from cosmicman.assets.metadata import table
from cosmicman.assets.plots import line_chart
from cosmicman.core.protocol import load_protocol

WEAKEST_SHOWN = 15


def _tags(categories: Collection[str]) -> dict[str, str]:
    return {c.name: c.tag for c in load_protocol().categories if c.name in categories}


def accuracy_by_tag(
    before: Mapping[str, float], after: Mapping[str, float] | None, threshold: float
) -> dg.TableMetadataValue:
    """Per tag (obj / tex / shape / global): its categories, their mean accuracy before (and after) the
    round with the gain in points, and how many are failing (under the threshold that sends a category to
    humans). Short column names: the table fits the asset page's value column."""
    tags = _tags(before)
    final = before if after is None else {c: after.get(c, v) for c, v in before.items()}
    rows = []
    for tag in sorted(set(tags.values())):
        cats = [c for c, t in tags.items() if t == tag]
        mean_before = sum(before[c] for c in cats) / len(cats)
        row: dict[str, object] = {"tag": tag, "categories": len(cats), "before": mean_before}
        if after is not None:
            mean_after = sum(final[c] for c in cats) / len(cats)
            row.update(after=mean_after, gain=100 * (mean_after - mean_before))
        row["failing"] = sum(final[c] < threshold for c in cats)
        rows.append(row)
    columns = ["tag", "categories", "before", *(("after", "gain") if after is not None else ()), "failing"]
    return table(rows, columns=columns, descriptions={"gain": "points", "failing": f"under {threshold:.0%}"})


def weakest_categories(
    before: Mapping[str, float],
    after: Mapping[str, float] | None = None,
    sent: Collection[str] = (),
    limit: int = WEAKEST_SHOWN,
) -> dg.TableMetadataValue:
    """The ``limit`` categories with the lowest accuracy (after the round when measured), before and after,
    and whether the round sent them to humans."""
    tags = _tags(before)
    final = {c: (after or {}).get(c, v) for c, v in before.items()}
    rows = []
    for cat in sorted(final, key=lambda c: (final[c], c))[:limit]:
        row: dict[str, object] = {"category": cat, "tag": tags.get(cat, ""), "before": before[cat]}
        if after is not None:
            row["after"] = final[cat]
        row["sent"] = cat in sent
        rows.append(row)
    return table(
        rows,
        columns=["category", "tag", "before", *(("after",) if after is not None else ()), "sent"],
        descriptions={"sent": "sent to humans this round"},
    )


def round_history(ledger: RoundLedger) -> dict[str, dg.MetadataValue]:
    """Every round so far: a table, and charts of mean accuracy on I_e and of the labels asked."""
    curve = ledger.curve()
    if not curve:
        return {}
    rounds = [float(p["round"]) for p in curve]
    return {
        "rounds": table(curve, columns=["round", "mean_accuracy", "labels_asked", "manual_share"]),
        "accuracy_curve": line_chart(
            rounds,
            {"mean accuracy": [p["mean_accuracy"] for p in curve]},
            title="mean accuracy on I_e",
            x_label="round",
        ),
        "cost_curve": line_chart(
            rounds,
            {"% of manual": [100 * p["manual_share"] for p in curve]},
            title="labels asked, % of a full manual pass",
            x_label="round",
        ),
    }


def labels_by_tag(by_category: Mapping[str, int]) -> dg.TableMetadataValue:
    """How many answers people gave per tag, over how many categories."""
    tags = _tags(by_category)
    rows = [
        {
            "tag": tag,
            "categories": sum(t == tag for t in tags.values()),
            "labels": sum(n for c, n in by_category.items() if tags.get(c) == tag),
        }
        for tag in sorted(set(tags.values()))
    ]
    return table(rows, columns=["tag", "categories", "labels"])
