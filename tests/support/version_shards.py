"""Shards written by the dataset-version writer, with the caption groups a trainer draws from per sample:
asymmetric random images, label maps with a left arm at the viewer's left edge, every group answered."""

import hashlib
import io

import fsspec
import numpy as np
from PIL import Image

from cosmicman.datasets.captions import build_caption, sample_attributes
from cosmicman.datasets.samples import DatasetSample
from cosmicman.datasets.shards import ShardWriter, prepare_samples

SIZE = 64
LEFT_ARM = 14


def person_attributes(protocol, seed: int, position: str = "left") -> dict[str, str]:
    """Every applicable category answered (many groups, late ones included), the person on ``position``."""
    return dict(sample_attributes(protocol, seed), person_position=position, lighting="bright")


def make_dataset_sample(protocol, tok, i: int) -> DatasetSample:
    """An asymmetric random image and a label map with left / right parts, captioned as a version does."""
    rng = np.random.default_rng(1000 + i)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 18, (SIZE // 8, SIZE // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    labels[:, :8] = LEFT_ARM  # a left arm at the viewer's left edge
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    data = buf.getvalue()
    attrs = person_attributes(protocol, i)
    return DatasetSample(
        hashlib.sha256(data).hexdigest(), data, "png", labels, attrs, build_caption(attrs, protocol, tok, i)
    )


def write_version_shards(folder, protocol, tok, n: int = 6, per_shard: int = 3) -> list[str]:
    """Shards written by the dataset-version writer (``caption_source`` included)."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    writer = ShardWriter(
        fsspec.filesystem("file"), str(folder), str(folder / "partial.tar"), per_shard, None,
        lambda record, _rows: names.append(record.shard),
    )  # fmt: skip
    writer.add(prepare_samples([(make_dataset_sample(protocol, tok, i), None) for i in range(n)], tok))
    writer.finish()
    return [str(folder / name) for name in names]
