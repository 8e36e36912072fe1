"""Parse outcomes counted by reason (what human_parsing records and the turn's summary prints)."""

from cosmicman.parsing.parsers import unparsed_by_reason


def test_unparsed_images_counted_by_reason_most_frequent_first():
    reasons = {"a" * 64: "no truth mask", "b" * 64: "too small", "c" * 64: "no truth mask", "d" * 64: "blurred"}
    counts = unparsed_by_reason(reasons)
    assert counts == {"no truth mask": 2, "blurred": 1, "too small": 1}
    assert list(counts) == ["no truth mask", "blurred", "too small"]  # ties in the reason's order
    assert unparsed_by_reason({}) == {}
