"""Each filter's rejection share of a batch and its bounds (cosmicman.filtering.rejection_bounds)."""

import pytest

from cosmicman.filtering.decisions import DECISIONS
from cosmicman.filtering.rejection_bounds import (
    DEFAULT_MAX_SHARE,
    DEFAULT_MIN_IMAGES,
    FILTER_STAGES,
    ShareBounds,
    out_of_bounds,
    rejection_bounds,
    stage_shares,
)


def test_stages_follow_the_chain_and_cover_every_rejection():
    assert [d for ds in FILTER_STAGES.values() for d in ds] == list(DECISIONS[1:])
    assert DEFAULT_MAX_SHARE == {
        "decode": 0.05,
        "size": 0.90,
        "fake_person": 0.50,
        "quality": 0.50,
        "person_count": 0.75,
        "face_size": 0.75,
    }
    assert DEFAULT_MIN_IMAGES == 20


def test_a_share_is_of_what_reached_the_filter():
    decisions = {"kept": 20, "too_small": 40, "no_person": 10, "many_people": 10, "small_face": 20}
    shares = {s.stage: s for s in stage_shares(decisions, rejection_bounds())}
    assert [s for s in shares] == list(FILTER_STAGES)
    assert (shares["size"].reached, shares["size"].rejected, shares["size"].share) == (100, 40, 0.4)
    # person count sees the 60 the size rule kept and rejects both of its decisions
    assert (shares["person_count"].reached, shares["person_count"].rejected) == (60, 20)
    assert shares["face_size"].reached == 40 and shares["face_size"].share == 0.5
    assert out_of_bounds(list(shares.values())) == []


def test_a_share_exactly_at_the_ceiling_passes_just_over_it_fails():
    at = stage_shares({"kept": 10, "too_small": 90}, rejection_bounds())
    assert at[1].share == 0.9 and at[1].within
    over = stage_shares({"kept": 9, "too_small": 91}, rejection_bounds())
    assert not over[1].within
    assert out_of_bounds(over) == ["size rejected 91.0 % of 100 (bounds 0.0-90.0 %)"]


def test_a_floor_exactly_met_passes_just_under_it_fails():
    bounds = rejection_bounds(min_share={"fake_person": 0.1})
    assert stage_shares({"kept": 90, "fake_person": 10}, bounds)[2].within
    assert not stage_shares({"kept": 91, "fake_person": 9}, bounds)[2].within


def test_too_few_images_are_reported_not_judged():
    under = stage_shares({"too_small": DEFAULT_MIN_IMAGES - 1}, rejection_bounds())
    assert under[1].share == 1.0 and not under[1].judged and under[1].within
    at = stage_shares({"too_small": DEFAULT_MIN_IMAGES}, rejection_bounds())
    assert at[1].judged and not at[1].within
    # later filters see fewer images: an empty one is never judged
    assert stage_shares({"too_small": 100}, rejection_bounds())[2].reached == 0


def test_overrides_and_bad_input_are_refused():
    assert rejection_bounds(max_share={"size": 0.95})["size"] == ShareBounds(0.0, 0.95)
    assert rejection_bounds()["decode"] == ShareBounds(0.0, 0.05)
    with pytest.raises(ValueError, match="unknown filters"):
        rejection_bounds(max_share={"sizes": 0.5})
    with pytest.raises(ValueError, match="0 <= min <= max <= 1"):
        ShareBounds(0.6, 0.5)
    with pytest.raises(ValueError, match="belong to no filter"):
        stage_shares({"kept": 1, "blurry": 1}, rejection_bounds())
