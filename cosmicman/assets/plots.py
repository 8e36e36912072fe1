"""Charts and image grids for the Dagster UI, as markdown metadata.

The UI renders a markdown metadata value inline on the asset page (Overview and Events) only while it is
shorter than :data:`INLINE_MARKDOWN_LIMIT` characters; a longer one hides behind "[Show Markdown]". So every
chart here is a small SVG (vector: a loss curve of 60 points fits) written into the markdown as a data URL,
and :func:`svg_markdown` refuses one that would not fit. Photos cannot fit: :func:`image_grid` is a JPEG
contact sheet, large enough to see, in the markdown dialog. Numbers across materializations and partitions
(accuracies per variant, losses per run) are also plain float metadata, which the UI plots itself (Plots).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from PIL import Image

from cosmicman.assets.metadata import rounded

# dagster-webserver 1.13, ui-core MetadataEntry.tsx: `expandSmallValues && entry.mdStr.length < 1000`
INLINE_MARKDOWN_LIMIT = 1000
# 400 px: the value column of the asset page's metadata table at a 1400 px window
WIDTH, LEFT, RIGHT, TOP = 400, 48, 392, 26
COLOURS = ("royalblue", "darkorange", "seagreen")
FONT = "font-size='11' font-family='sans-serif'"


class ChartTooLargeError(ValueError):
    """The chart's markdown would exceed the UI's inline limit and hide behind "[Show Markdown]"."""


def _label(value: float) -> str:
    return f"{rounded(value, 3):g}"


def svg_markdown(body: str, height: int, alt: str) -> dg.MarkdownMetadataValue:
    """An SVG of ``WIDTH`` x ``height`` as inline markdown (a data URL; the UI's markdown allows data images)."""
    svg = f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}'><g {FONT}>{body}</g></svg>"
    # CommonMark: an angle-bracketed link destination may hold spaces; its own brackets are escaped
    md = f"![{alt}](<data:image/svg+xml,{svg.replace('<', chr(92) + '<').replace('>', chr(92) + '>')}>)"
    if len(md) >= INLINE_MARKDOWN_LIMIT:
        raise ChartTooLargeError(f"{alt}: {len(md)} characters, the UI shows at most {INLINE_MARKDOWN_LIMIT} inline")
    return dg.MetadataValue.md(md)


def _spread(lo: float, hi: float) -> tuple[float, float]:
    return (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)


def bucket_means(values: Sequence[float], k: int) -> list[float]:
    """``values`` in ``k`` consecutive buckets of (nearly) equal size, each bucket's mean: a long noisy
    series (a loss per step) thinned without picking lucky points."""
    if k >= len(values):
        return list(values)
    edges = [round(i * len(values) / k) for i in range(k + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def line_chart(
    x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str, x_label: str, height: int = 170
) -> dg.MarkdownMetadataValue:
    """One to three series over a shared x, with the y range and the first and last x labelled. Long series
    are thinned to bucket means (:func:`bucket_means`) until the chart fits inline."""
    if not x or not series or any(len(ys) != len(x) for ys in series.values()):
        raise ValueError("line_chart needs one y per x in every series")
    bottom = height - 22
    values = [v for ys in series.values() for v in ys if math.isfinite(v)]
    lo, hi = _spread(min(values), max(values))
    x0, x1 = _spread(min(x), max(x))

    def px(v: float) -> int:
        return round(LEFT + (v - x0) / (x1 - x0) * (RIGHT - LEFT))

    def py(v: float) -> int:
        return round(bottom - (v - lo) / (hi - lo) * (bottom - TOP))

    # one series is named by the title; several get a legend in their colours
    legend = "".join(
        f"<text x='{LEFT + 200 + 50 * i}' y='12' fill='{c}'>{name}</text>"
        for i, (name, c) in enumerate(zip(series, COLOURS))
        if len(series) > 1
    )
    frame = (
        f"<text x='{LEFT}' y='12'>{title}</text>{legend}"
        f"<path d='M{LEFT} {TOP}V{bottom}H{RIGHT}' stroke='gray' fill='none'/>"
        f"<text x='2' y='{TOP + 8}'>{_label(hi)}</text><text x='2' y='{bottom}'>{_label(lo)}</text>"
        f"<text x='{LEFT}' y='{height - 6}'>{_label(x[0])}</text>"
        f"<text x='{RIGHT - 70}' y='{height - 6}'>{x_label} {_label(x[-1])}</text>"
    )
    k = min(len(x), 80)
    while True:
        xs = bucket_means(x, k)
        lines = ""
        for ys, colour in zip(series.values(), COLOURS):
            points = " ".join(f"{px(a)},{py(b)}" for a, b in zip(xs, bucket_means(ys, k)) if math.isfinite(b))
            lines += f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>"
        try:
            return svg_markdown(frame + lines, height, title)
        except ChartTooLargeError:
            if k <= 2:
                raise
            k = max(2, int(k * 0.8))


def bar_chart(
    values: Mapping[str, float],
    *,
    title: str,
    references: Mapping[str, float] | None = None,
    reference_label: str = "",
) -> dg.MarkdownMetadataValue:
    """Horizontal bars from zero, one row per key; a black tick per row marks its reference (a ceiling).
    Each bar's value is written at its end when the chart still fits inline."""
    references = references or {}
    top = max([*values.values(), *references.values(), 1e-12])
    row = 18
    height = TOP + row * len(values) + 8
    left = LEFT + 56

    def px(v: float) -> int:
        return round(left + max(0.0, v) / top * (RIGHT - 40 - left))

    bars, ticks, labels, numbers = [], [], [], []
    for i, (name, v) in enumerate(values.items()):
        y = TOP + i * row
        bars.append(f"M{left} {y}H{px(v)}v12H{left}z")
        if name in references:
            ticks.append(f"M{px(references[name])} {y - 2}v16")
        labels.append(f"<text x='{left - 4}' y='{y + 10}'>{name}</text>")
        numbers.append(f"<text x='{px(v) + 4}' y='{y + 10}'>{_label(v)}</text>")
    head = f"<text x='2' y='12'>{title}</text>"
    if ticks:
        head += f"<text x='{RIGHT - 110}' y='12'>| {reference_label}</text>"
    body = (
        head
        + f"<path d='{''.join(bars)}' fill='royalblue'/>"
        + (f"<path d='{''.join(ticks)}' stroke='black' stroke-width='2'/>" if ticks else "")
        + f"<g text-anchor='end'>{''.join(labels)}</g>"
    )
    try:
        return svg_markdown(body + "".join(numbers), height, title)
    except ChartTooLargeError:
        return svg_markdown(body, height, title)


def histogram(
    values: Sequence[float], *, title: str, threshold: float | None = None, bins: int = 16, height: int = 150
) -> dg.MarkdownMetadataValue:
    """How many values fall in each of ``bins`` equal bins, with the filter's threshold as a red line."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise ValueError(f"{title}: no finite value to count")
    bottom = height - 22
    lo, hi = _spread(
        min([*finite, *([threshold] if threshold is not None else [])]),
        max([*finite, *([threshold] if threshold is not None else [])]),
    )
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    width = (RIGHT - LEFT) / bins
    peak = max(counts)
    bars = "".join(
        f"M{round(LEFT + i * width)} {bottom}V{round(bottom - n / peak * (bottom - TOP))}h{round(width) - 1}V{bottom}"
        for i, n in enumerate(counts)
        if n
    )
    body = (
        f"<text x='{LEFT}' y='12'>{title} ({len(finite)} images)</text>"
        f"<path d='M{LEFT} {TOP}V{bottom}H{RIGHT}' stroke='gray' fill='none'/>"
        f"<path d='{bars}' fill='royalblue'/>"
        f"<text x='2' y='{TOP + 8}'>{peak}</text><text x='2' y='{bottom}'>0</text>"
        f"<text x='{LEFT}' y='{height - 6}'>{_label(lo)}</text>"
        f"<text x='{RIGHT - 36}' y='{height - 6}'>{_label(hi)}</text>"
    )
    if threshold is not None:
        tx = round(LEFT + (threshold - lo) / (hi - lo) * (RIGHT - LEFT))
        body += (
            f"<path d='M{tx} {TOP - 4}V{bottom}' stroke='red' stroke-width='2'/>"
            f"<text x='{tx + 4}' y='{TOP + 4}' fill='red'>threshold {_label(threshold)}</text>"
        )
    return svg_markdown(body, height, title)


def sheet_markdown(sheet: Image.Image, alt: str, captions: Iterable[str]) -> dg.MarkdownMetadataValue:
    """``sheet`` inline as a JPEG (alt text ``alt``), with the captions numbered below it."""
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    parts = [f"![{alt}](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"]
    numbered = [f"{i + 1}. {c}" for i, c in enumerate(captions)]
    if numbered:
        parts.append("\n".join(numbered))
    return dg.MetadataValue.md("\n\n".join(parts))


def image_grid(
    images: Iterable[Image.Image], captions: Iterable[str] = (), cols: int = 6, thumb: tuple[int, int] = (128, 256)
) -> dg.MarkdownMetadataValue:
    """A JPEG contact sheet (``thumb`` per image, at most ``cols`` across: 768 px wide by default, what the
    UI's markdown dialog shows unscaled), with numbered captions below it."""
    imgs = [im.convert("RGB").resize(thumb, Image.Resampling.LANCZOS) for im in images]
    if not imgs:
        return dg.MetadataValue.md("_no images_")
    cols = min(cols, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb[0], rows * thumb[1]), "white")
    for i, im in enumerate(imgs):
        sheet.paste(im, ((i % cols) * thumb[0], (i // cols) * thumb[1]))
    return sheet_markdown(sheet, "grid", captions)


def image_column(
    images: Iterable[Image.Image], captions: Iterable[str] = (), width: int = 768
) -> dg.MarkdownMetadataValue:
    """A JPEG of ``images`` stacked top to bottom, each scaled to ``width`` px at its own aspect ratio (pictures
    of different heights, such as attention overlays with different group counts), numbered captions below."""
    imgs = [im.convert("RGB") for im in images]
    if not imgs:
        return dg.MetadataValue.md("_no images_")
    scaled = [im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS) for im in imgs]
    sheet = Image.new("RGB", (width, sum(im.height for im in scaled)), "white")
    top = 0
    for im in scaled:
        sheet.paste(im, (0, top))
        top += im.height
    return sheet_markdown(sheet, "column", captions)
