"""The synthetic world as an image source: renders instead of downloads, and its truth kept beside the pool."""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field

from cosmicman.core.store import Store
from cosmicman.simulation.truth import store_truth
from cosmicman.simulation.world import SyntheticSample, SyntheticWorld
from cosmicman.sourcing.sources import SourceItem


@dataclass
class SyntheticSource:
    """The synthetic human world: batch ``b`` renders world indices [b*size, (b+1)*size).

    Items are ``synthetic://<seed>/<index>?case=<case>``. The renders it reads are remembered (without
    their bytes) until the batch's stored images are recorded, so the truth costs no second render; items
    read before a kill are rendered again.
    """

    seed: int = 0
    negative_fraction: float = 0.3
    width: int = 320
    height: int = 640
    name: str = "synthetic"
    _rendered: dict[str, SyntheticSample] = field(default_factory=dict, init=False, repr=False, compare=False)

    def world(self) -> SyntheticWorld:
        return SyntheticWorld(seed=self.seed, width=self.width, height=self.height)

    def plan(self, batch_index: int, size: int, store: Store | None = None) -> list[SourceItem]:
        world = self.world()
        items = []
        for i in range(batch_index * size, (batch_index + 1) * size):
            case = world.case_of(i, self.negative_fraction)
            items.append(
                SourceItem(
                    self.name,
                    f"synth-{self.seed}-{i}",
                    f"synthetic://{self.seed}/{i}?case={case}",
                    licence="CC0 (synthetic)",
                )
            )
        return items

    def render(self, item: SourceItem) -> SyntheticSample:
        parsed = urllib.parse.urlsplit(item.url)
        if parsed.scheme != "synthetic" or int(parsed.netloc) != self.seed:
            raise ValueError(f"{item.url!r} is not an item of synthetic world {self.seed}")
        case = urllib.parse.parse_qs(parsed.query).get("case", [None])[0]
        return self.world().sample(int(parsed.path.strip("/")), case)

    def read(self, item: SourceItem) -> bytes:
        sample = self.render(item)
        self._rendered[item.url] = dataclasses.replace(sample, image_bytes=b"")
        return sample.image_bytes

    def record_stored(self, batch: str, stored: list[tuple[SourceItem, str]], store: Store) -> None:
        """The batch's truth table and truth masks (see :func:`~cosmicman.simulation.truth.store_truth`)."""
        samples = [
            (self._rendered[item.url] if item.url in self._rendered else self.render(item), sha) for item, sha in stored
        ]
        self._rendered.clear()
        store_truth(batch, samples, store)
