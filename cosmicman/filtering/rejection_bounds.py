"""How much each filter of the chain rejects in a batch, and whether that stays within bounds (Dagster-free).

A filter's rejection share is the images it rejected over the images that *reached* it: the chain stops
at an image's first failure (:mod:`cosmicman.filtering.chain`), so each filter sees only what the filters
before it kept. Judged on what reached it, a filter's share does not swing because a filter before it got
stricter (a batch of small images does not make the face filter look idle).

Default bounds, the most a filter may reject of what reaches it (the least is 0):

- ``decode`` 0.05: sourcing already decoded every stored image in full, so a filter-time decode failure means
  a blob changed in the store; the ceiling leaves room for a stray one in a small batch, not for more.
- ``size`` 0.90: web sources carry many images under the size rule (the paper's 640x1280 keeps a minority
  of a LAION-scale crawl); above 90 % a source is serving thumbnails or the rule is misconfigured.
- ``fake_person`` 0.50, ``quality`` 0.50: paintings, renders and blurred or dark photos are a minority of a
  people-photo source; rejecting half of what reaches them means the head or the scorer drifted, or its
  threshold is off.
- ``person_count`` 0.75, ``face_size`` 0.75: searches for people still return groups, empty scenes and
  distant figures, so these two reject the most after size; three quarters means the detector misses people.

The floor is 0 by default because on a batch of a few dozen images a filter rejecting nothing is normal
(the local synthetic world draws each negative kind with probability 30 % / 7, about 4 %, so a batch of 48 has
none of a given kind about one time in eight); a source known to carry a reject kind can raise its floor.
Under ``min_images`` (default 20) images reaching a filter, its share is reported but not judged: one image
more or less moves it by 5 % or more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# the chain's filters in its order (FilterChain.process_image), each with the decisions it rejects with
FILTER_STAGES: dict[str, tuple[str, ...]] = {
    "decode": ("corrupt",),
    "size": ("too_small",),
    "fake_person": ("fake_person",),
    "quality": ("low_quality",),
    "person_count": ("no_person", "many_people"),
    "face_size": ("small_face",),
}
DEFAULT_MAX_SHARE: dict[str, float] = {
    "decode": 0.05,
    "size": 0.90,
    "fake_person": 0.50,
    "quality": 0.50,
    "person_count": 0.75,
    "face_size": 0.75,
}
DEFAULT_MIN_IMAGES = 20


@dataclass(frozen=True)
class ShareBounds:
    """The least and the most share of the images reaching a filter that it may reject."""

    min_share: float
    max_share: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= self.max_share <= 1.0:
            raise ValueError(f"bounds must satisfy 0 <= min <= max <= 1, got [{self.min_share}, {self.max_share}]")


def rejection_bounds(
    min_share: Mapping[str, float] | None = None, max_share: Mapping[str, float] | None = None
) -> dict[str, ShareBounds]:
    """The default bounds of every filter with the given overrides; an unknown filter name is an error."""
    min_share, max_share = dict(min_share or {}), dict(max_share or {})
    unknown = sorted((set(min_share) | set(max_share)) - set(FILTER_STAGES))
    if unknown:
        raise ValueError(f"unknown filters {unknown}: the chain's filters are {list(FILTER_STAGES)}")
    return {
        stage: ShareBounds(min_share.get(stage, 0.0), max_share.get(stage, DEFAULT_MAX_SHARE[stage]))
        for stage in FILTER_STAGES
    }


@dataclass(frozen=True)
class StageShare:
    """One filter in one batch: what reached it, what it rejected, and the verdict against its bounds."""

    stage: str
    reached: int
    rejected: int
    bounds: ShareBounds
    judged: bool

    @property
    def share(self) -> float:
        return self.rejected / self.reached if self.reached else 0.0

    @property
    def within(self) -> bool:
        """Inside its bounds (both ends included), or not judged."""
        return not self.judged or self.bounds.min_share <= self.share <= self.bounds.max_share


def stage_shares(
    decisions: Mapping[str, int], bounds: Mapping[str, ShareBounds], min_images: int = DEFAULT_MIN_IMAGES
) -> list[StageShare]:
    """Each filter's share of a batch from its decision counts (``{"kept": 40, "too_small": 3, ...}``), in
    chain order. A decision no filter makes is an error: the chain and this table disagree."""
    known = {"kept", *(d for ds in FILTER_STAGES.values() for d in ds)}
    strange = sorted(set(decisions) - known)
    if strange:
        raise ValueError(f"decisions {strange} belong to no filter of {list(FILTER_STAGES)}")
    reached = sum(decisions.values())
    out = []
    for stage, rejects in FILTER_STAGES.items():
        rejected = sum(decisions.get(d, 0) for d in rejects)
        out.append(StageShare(stage, reached, rejected, bounds[stage], judged=reached >= min_images))
        reached -= rejected
    return out


def out_of_bounds(shares: list[StageShare]) -> list[str]:
    """One line per filter outside its bounds, e.g. ``"size rejected 92.0 % of 50 (bounds 0.0-90.0 %)"``."""
    return [
        f"{s.stage} rejected {100 * s.share:.1f} % of {s.reached} "
        f"(bounds {100 * s.bounds.min_share:.1f}-{100 * s.bounds.max_share:.1f} %)"
        for s in shares
        if not s.within
    ]
