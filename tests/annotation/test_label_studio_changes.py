"""The labels sensor's change feed on Label Studio, without a server: cursor, query, ties at a page end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cosmicman.annotation.label_studio_changes import (
    ChangeCursor,
    ChangedTask,
    advance,
    changed_task,
    changes_query,
    fingerprint,
    ls_time,
    newest_query,
)

T0 = "2026-12-04T10:00:00.000100Z"
T1 = "2026-12-04T10:00:00.000200Z"
T2 = "2026-12-04T10:00:01.000000Z"


def task(id_: int, when: str, answers: int = 1) -> ChangedTask:
    return ChangedTask(id_, when, answers, 0)


def test_timestamps_in_the_filter_format_whatever_label_studio_wrote():
    assert ls_time("2026-12-04T10:00:01Z") == T2  # DRF leaves out zero microseconds
    assert ls_time("2026-12-04T10:00:00.0001Z") == T0
    assert ls_time(datetime(2026, 12, 4, 11, 0, 0, 100, tzinfo=timezone(timedelta(hours=1)))) == T0
    assert ls_time(datetime(2026, 12, 4, 10, 0, 0, 100)) == T0  # naive: Label Studio's UTC
    row = {"id": 7, "updated_at": "2026-12-04T10:00:01Z", "total_annotations": 2, "cancelled_annotations": 1}
    assert changed_task(row) == ChangedTask(7, T2, 2, 1)

    class Model:  # what the SDK gives: attributes, updated_at parsed
        id = 7
        updated_at = datetime(2026, 12, 4, 10, 0, 1, tzinfo=UTC)
        total_annotations = None
        cancelled_annotations = None

    assert changed_task(Model()) == ChangedTask(7, T2, 0, 0)


def test_query_asks_after_the_cursor_oldest_first_and_at_the_instant_again_only_after_a_full_page():
    fresh = ChangeCursor("round-001", 3, "")
    assert json.loads(changes_query(fresh)) == {"ordering": ["tasks:updated_at"]}
    assert json.loads(newest_query()) == {"ordering": ["-tasks:updated_at"]}
    (item,) = json.loads(changes_query(ChangeCursor("round-001", 3, T0)))["filters"]["items"]
    assert item == {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": T0}
    (item,) = json.loads(changes_query(ChangeCursor("round-001", 3, T0, (5,), caught_up=False)))["filters"]["items"]
    assert item["operator"] == "greater_or_equal" and item["value"] == T0


def test_advance_moves_to_the_newest_change_and_keeps_the_tasks_of_a_tie_at_a_full_page_end():
    start = ChangeCursor("round-001", 3, T0)
    # nothing changed: the cursor stays
    assert advance(start, [], 3) == (start, [])
    # a short page: caught up, at its newest instant, nothing to remember about ties
    cur, fresh = advance(start, [task(1, T1), task(2, T2)], 3)
    assert cur == ChangeCursor("round-001", 3, T2) and [t.id for t in fresh] == [1, 2]
    # a full page ending in a tie: not caught up; the tasks read at that instant are remembered
    cur, fresh = advance(start, [task(1, T1), task(2, T2), task(3, T2)], 3)
    assert (cur.since, cur.at_since, cur.caught_up) == (T2, (2, 3), False) and len(fresh) == 3
    # the next page (asked with greater_or_equal) repeats them: only the others are new
    nxt, fresh = advance(cur, [task(2, T2), task(3, T2), task(4, T2)], 3)
    assert [t.id for t in fresh] == [4] and (nxt.at_since, nxt.caught_up) == ((2, 3, 4), False)
    done, fresh = advance(nxt, [task(2, T2), task(3, T2), task(4, T2), task(9, "2026-12-04T10:00:02.000000Z")], 5)
    assert [t.id for t in fresh] == [9] and done.caught_up and done.at_since == ()
    # a full page of one single instant that was read already: the cursor could never move on
    with pytest.raises(ValueError, match="raise the change page size"):
        advance(nxt, [task(2, T2), task(3, T2), task(4, T2)], 3)


def test_cursor_round_trips_and_a_foreign_cursor_says_how_to_reset():
    cur = ChangeCursor("round-002", 9, T1, (4, 5), caught_up=False)
    assert ChangeCursor.from_json(cur.to_json()) == cur
    assert ChangeCursor.from_json(None) is None and ChangeCursor.from_json("") is None
    for bad in ("not json", json.dumps({"round_id": "r"}), json.dumps({"round": 1})):
        with pytest.raises(ValueError, match="clear the sensor's cursor") as e:
            ChangeCursor.from_json(bad)
        assert "\n" not in str(e.value)


def test_fingerprint_changes_with_the_newest_change_and_the_counts_only():
    cur = ChangeCursor("round-001", 3, T1)
    base = fingerprint(cur, 6, 4)
    assert fingerprint(ChangeCursor("round-001", 3, T1, (1,), caught_up=False), 6, 4) == base
    assert (
        len({base, fingerprint(cur, 6, 5), fingerprint(cur, 7, 4), fingerprint(ChangeCursor("round-001", 3, T2), 6, 4)})
        == 4
    )
