"""Small helpers the assets share: partitions, progress logging, image-grid metadata."""

import base64
import hashlib
import io
import time
from collections.abc import Iterable

import dagster as dg
import polars as pl
from PIL import Image

sourcing_batches = dg.DynamicPartitionsDefinition(name="sourcing_batches")


def content_digest(items: Iterable[str]) -> str:
    """Order-independent digest of a set of ids: the data version of a table keyed by them."""
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


class Progress:
    """Logs "label: done/total" at most every ``every_s`` seconds and at the end."""

    def __init__(self, log: dg.DagsterLogManager, label: str, total: int, every_s: float = 5.0) -> None:
        self.log, self.label, self.total, self.every_s = log, label, total, every_s
        self._last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.log.info(f"{self.label}: {done}/{self.total}")


def image_grid_markdown(
    images: Iterable[Image.Image], captions: Iterable[str] = (), cols: int = 6, thumb: tuple[int, int] = (64, 128)
) -> dg.MetadataValue:
    """A small PNG contact sheet embedded in markdown, so the UI shows what a stage produced."""
    imgs = [im.convert("RGB").resize(thumb) for im in images]
    if not imgs:
        return dg.MetadataValue.md("_no images_")
    rows = (len(imgs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb[0], rows * thumb[1]), "white")
    for i, im in enumerate(imgs):
        sheet.paste(im, ((i % cols) * thumb[0], (i // cols) * thumb[1]))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    lines = [f"![grid](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"]
    lines += [f"{i + 1}. {c}" for i, c in enumerate(captions)]
    return dg.MetadataValue.md("\n\n".join(lines[:1]) + ("\n\n" + "\n".join(lines[1:]) if len(lines) > 1 else ""))


def table_metadata(df: pl.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """A polars frame as markdown table metadata (first ``limit`` rows)."""
    head = df.head(limit)
    cols = head.columns
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return dg.MetadataValue.md("\n".join(out))


def line_charts_markdown(
    x: list[int], series: dict[str, list[float]], x_label: str = "round", size: tuple[int, int] = (320, 200)
) -> dg.MetadataValue:
    """One small line chart per series, side by side, as a PNG embedded in markdown (the UI shows it)."""
    from PIL import ImageDraw

    w, h = size
    pad_l, pad_r, pad_t, pad_b = 44, 12, 22, 30
    sheet = Image.new("RGB", (w * len(series), h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, ys) in enumerate(series.items()):
        ox = i * w
        lo, hi = min(ys + [0.0]), max(ys + [1e-9])
        span = (hi - lo) or 1.0
        x0, x1, y0, y1 = ox + pad_l, ox + w - pad_r, pad_t, h - pad_b
        draw.text((ox + pad_l, 4), name, fill="black")
        draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
        for v in (lo, hi):
            yv = y1 - (v - lo) / span * (y1 - y0)
            draw.text((ox + 2, yv - 6), f"{v:.3g}", fill="black")
        xmin, xmax = min(x), max(x)
        pts = [
            (x0 + (xv - xmin) / ((xmax - xmin) or 1) * (x1 - x0), y1 - (yv - lo) / span * (y1 - y0))
            for xv, yv in zip(x, ys)
        ]
        if len(pts) > 1:
            draw.line(pts, fill=(40, 90, 200), width=2)
        for (px, py), xv in zip(pts, x):
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(40, 90, 200))
            draw.text((px - 3, y1 + 4), str(xv), fill="black")
        draw.text((x1 - 30, h - 14), x_label, fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return dg.MetadataValue.md(f"![chart](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")
