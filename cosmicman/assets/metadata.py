"""Metadata in Dagster's own types: rounded numbers and tables with a schema.

Every asset passes its metadata through :func:`tidy_metadata`, so no number reaches the UI with 16 digits,
and reports tables with :func:`table` (rows of plain values) or :func:`frame_table` (a polars frame), so the
UI shows them natively with their column types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl

# accuracies read to 4 decimals (0.8532), losses to 4 significant digits (0.01234), seconds to 1 decimal (123.4)
SIGNIFICANT_DIGITS = 4


def rounded(value: float, significant: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``significant`` significant digits, never rounding into its integer part (123456.7 stays
    123457.0); nan and infinities unchanged."""
    if not math.isfinite(value) or value == 0:
        return value
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return round(value, decimals)


def tidy(value: Any) -> Any:
    """``value`` with every float rounded by :func:`rounded`: plain values, lists and dicts, and the
    float, JSON and table metadata values that carry them."""
    # metadata values first: some are named tuples
    if isinstance(value, dg.FloatMetadataValue):
        return dg.MetadataValue.float(tidy(value.value))
    if isinstance(value, dg.JsonMetadataValue):
        return dg.MetadataValue.json(tidy(value.data))
    if isinstance(value, dg.TableMetadataValue):
        records = [dg.TableRecord(tidy(dict(r.data))) for r in value.records]
        return dg.MetadataValue.table(records, schema=value.schema)
    if isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, float):
        return rounded(value)
    if isinstance(value, Mapping):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tidy(v) for v in value]
    return value


def tidy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """An asset's metadata ready for the UI: every number rounded (see :func:`tidy`)."""
    return {key: tidy(value) for key, value in metadata.items()}


def _column_type(values: Sequence[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dg.TableMetadataValue:
    """Rows of plain values as a native table; ``columns`` orders them (default: the first row's keys),
    types come from the values (int, float, bool, else string), numbers are rounded."""
    names = list(columns) if columns is not None else list(rows[0]) if rows else []
    descriptions = descriptions or {}
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name, _column_type([r.get(name) for r in rows]), description=descriptions.get(name))
            for name in names
        ]
    )
    # every record carries every column (Dagster requires it); a missing cell is None, shown empty
    records = [dg.TableRecord({name: _cell(r.get(name)) for name in names}) for r in rows]
    return dg.MetadataValue.table(records, schema=schema)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return rounded(value)
    return str(value)


def frame_table(df: pl.DataFrame, limit: int | None = None) -> dg.TableMetadataValue:
    """A polars frame (its first ``limit`` rows) as a native table."""
    return table((df if limit is None else df.head(limit)).to_dicts(), columns=df.columns)


def counts_table(counts: Mapping[str, int], key: str, count: str = "images") -> dg.TableMetadataValue:
    """How many of each ``key`` (a reason, a source, a category), largest first, with each one's share."""
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return table(
        [{key: k, count: n, "share": n / total if total else 0.0} for k, n in ordered], columns=[key, count, "share"]
    )


def location(uri: str) -> dg.MetadataValue:
    """Where something lives, as the UI can use it: an http(s) URL as a link; anything else (a local path,
    ``s3://...``) as a path to copy, without ``file://``, which browsers do not open from the UI."""
    if uri.startswith(("http://", "https://")):
        return dg.MetadataValue.url(uri)
    return dg.MetadataValue.path(uri.removeprefix("file://"))
