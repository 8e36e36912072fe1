"""What the annotation stage works on: label records and the images (with or without truth) they are about."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from PIL import Image

from cosmicman.core.imageio import decode_image, sha256_hex
from cosmicman.core.workers import map_in_workers

LabelSource = Literal["oracle", "human", "implied"]


@dataclass(frozen=True)
class LabelRecord:
    """One answer to one question about one image. ``source``: ``"oracle"`` (simulated), ``"human"``, or
    ``"implied"`` (derived from the answers to detail questions, see :func:`implied_labels`)."""

    image_sha256: str
    category: str
    answer: str
    source: LabelSource = "oracle"
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AnnotationItem:
    """An image in I_e or in the pool. ``attributes`` is the ground truth (I_e, synthetic pool) or None.

    The annotator only ever sees ``image``; the truth is for measuring it and for the simulated oracle.
    ``pool_id`` is what a round samples by (the sha256 for a real image). A :meth:`lazy` item decodes
    (or renders) its image the first time ``image`` or ``image_sha256`` is read, so a round over a large
    pool touches only the images it samples.
    """

    def __init__(
        self,
        image_sha256: str,
        image: Image.Image,
        attributes: Mapping[str, str] | None = None,
        pool_id: str | None = None,
    ) -> None:
        self._sha, self._image = image_sha256, image
        self._load: Callable[[], bytes] | None = None
        self.attributes = dict(attributes) if attributes is not None else None
        self.pool_id = pool_id or image_sha256

    @classmethod
    def lazy(
        cls, pool_id: str, load: Callable[[], bytes], attributes: Mapping[str, str] | None = None
    ) -> AnnotationItem:
        item = cls("", None, attributes, pool_id)  # type: ignore[arg-type]
        item._load = load
        return item

    def _materialize(self) -> None:
        if self._load is not None:
            self._set_bytes(self._load())

    def _set_bytes(self, data: bytes) -> None:
        self._sha, self._image, self._load = sha256_hex(data), decode_image(data), None

    @property
    def image_sha256(self) -> str:
        self._materialize()
        return self._sha

    @property
    def image(self) -> Image.Image:
        self._materialize()
        return self._image

    @classmethod
    def from_bytes(cls, data: bytes, attributes: Mapping[str, str] | None = None) -> AnnotationItem:
        return cls(sha256_hex(data), decode_image(data), attributes)

    @classmethod
    def from_sample(cls, sample: Any, with_truth: bool = True) -> AnnotationItem:
        """From a ``SyntheticSample`` (anything with ``image_bytes`` and ``attributes``)."""
        return cls.from_bytes(sample.image_bytes, sample.attributes if with_truth else None)


def items_from_samples(samples: Iterable[Any], with_truth: bool = True) -> list[AnnotationItem]:
    return [AnnotationItem.from_sample(s, with_truth) for s in samples]


def materialize(items: Sequence[AnnotationItem]) -> None:
    """Decode (or render) the :meth:`AnnotationItem.lazy` ones among ``items`` now, loading in parallel."""
    lazy = [(it, it._load) for it in items if it._load is not None]
    loaded = map_in_workers(lambda i: lazy[i][1](), len(lazy), min_per_worker=4)
    for (item, _), data in zip(lazy, loaded):
        item._set_bytes(data)


def labelled_image_rows(labels: Sequence[LabelRecord], images: Mapping[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The labelled images' sha256s (sorted) and each one's row; every one must be in ``images``."""
    shas = sorted({lab.image_sha256 for lab in labels})
    missing = [s for s in shas if s not in images]
    if missing:
        raise KeyError(f"finetune needs the labelled images; {len(missing)} missing, e.g. {missing[0]}")
    return shas, {s: i for i, s in enumerate(shas)}
