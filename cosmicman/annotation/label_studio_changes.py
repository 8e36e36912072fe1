"""What changed in a round's Label Studio project since the labels sensor's last tick (pure: no server).

Label Studio stamps a task's ``updated_at`` whenever one of its annotations is created, updated or deleted
(``Annotation.save`` / ``delete`` call ``update_task``), and its task list filters and orders on that column
(the data manager's ``filter:tasks:updated_at``, type ``Datetime``, operators ``greater`` and
``greater_or_equal``, value in ``%Y-%m-%dT%H:%M:%S.%fZ``). So the sensor keeps a :class:`ChangeCursor` (the
newest ``updated_at`` it read, in Label Studio's own clock) and asks, once per tick, for at most one page
of the tasks updated after it, oldest first, with only the fields it needs (``include``, no image URL
resolution). Nothing changed: an empty page. One new annotation: that one task.

A full page may end inside a run of tasks with the same ``updated_at``: the next request then asks for
``greater_or_equal`` and drops the tasks already read at that instant (``at_since``). Until a page comes
back short the cursor is not ``caught_up`` and the sensor requests no run (the state is still moving
under it). A new round (or project) starts from the project's newest task (one task read), not from the
beginning: how many tasks are answered comes from Label Studio's counters, not from reading them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

LS_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # the data manager's Datetime filter format
UPDATED_AT = "tasks:updated_at"
CHANGE_FIELDS = "id,updated_at,total_annotations,cancelled_annotations"  # what a changed task costs
COUNT_FIELDS = "id,task_number,num_tasks_with_annotations"  # without id the counts come back unnamed


def ls_time(value: datetime | str) -> str:
    """A Label Studio timestamp (a datetime, or its ISO text, with or without microseconds) in the
    filter format, UTC."""
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime(LS_DATETIME)


@dataclass(frozen=True)
class ChangeCursor:
    """Where the labels sensor stopped reading a round's Label Studio project (its sensor cursor)."""

    round_id: str
    project_id: int | None
    since: str  # the newest task ``updated_at`` read (Label Studio's clock, LS_DATETIME); "" before any
    at_since: tuple[int, ...] = ()  # tasks read at exactly ``since`` while not caught up
    caught_up: bool = True

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "at_since": list(self.at_since)}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | None) -> ChangeCursor | None:
        """The cursor a sensor stored; None for a sensor that has none yet."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(
                round_id=str(data["round_id"]),
                project_id=None if data["project_id"] is None else int(data["project_id"]),
                since=str(data["since"]),
                at_since=tuple(int(i) for i in data.get("at_since") or ()),
                caught_up=bool(data.get("caught_up", True)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"the labels sensor's cursor is not a Label Studio change cursor ({type(e).__name__}: {e}); "
                "clear the sensor's cursor in the Dagster UI to start from the open round's current state"
            ) from None


@dataclass(frozen=True)
class ChangedTask:
    """One task the change feed read: its Label Studio id, when it changed, and its answer counts."""

    id: int
    updated_at: str
    answers: int  # annotations that are not skips
    skips: int


def changes_query(cursor: ChangeCursor) -> str:
    """The task list ``query`` for the tasks updated after ``cursor``, oldest first."""
    query: dict[str, Any] = {"ordering": [UPDATED_AT]}
    if cursor.since:
        op = "greater" if cursor.caught_up else "greater_or_equal"
        query["filters"] = {
            "conjunction": "and",
            "items": [{"filter": f"filter:{UPDATED_AT}", "operator": op, "type": "Datetime", "value": cursor.since}],
        }
    return json.dumps(query, sort_keys=True)


def newest_query() -> str:
    """The task list ``query`` whose first task is the project's most recently updated one."""
    return json.dumps({"ordering": [f"-{UPDATED_AT}"]})


def changed_task(row: Any) -> ChangedTask:
    """A task of the change feed (an SDK model or its JSON) as a :class:`ChangedTask`."""

    def field(name: str) -> Any:
        return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)

    return ChangedTask(
        int(field("id")),
        ls_time(field("updated_at")),
        int(field("total_annotations") or 0),
        int(field("cancelled_annotations") or 0),
    )


def advance(
    cursor: ChangeCursor, page: Sequence[ChangedTask], page_size: int
) -> tuple[ChangeCursor, list[ChangedTask]]:
    """The cursor after reading ``page`` (the answer to :func:`changes_query`) and the tasks in it that
    were not read before. Raises ValueError when a full page is one single instant (the cursor could
    never move past it)."""
    fresh = [t for t in page if not (t.updated_at == cursor.since and t.id in cursor.at_since)]
    full = len(page) >= page_size
    if not page:
        return ChangeCursor(cursor.round_id, cursor.project_id, cursor.since), []
    newest = page[-1].updated_at
    if full and newest == cursor.since and not fresh:
        raise ValueError(
            f"more than {page_size} Label Studio tasks changed at the same instant {newest}: raise the "
            "change page size (label_studio_change_page_size) above that"
        )
    at_since: tuple[int, ...] = ()
    if full:  # the next page may hold more tasks of the same instant
        same = {t.id for t in page if t.updated_at == newest}
        at_since = tuple(sorted(same | (set(cursor.at_since) if newest == cursor.since else set())))
    return ChangeCursor(cursor.round_id, cursor.project_id, newest, at_since, caught_up=not full), fresh


def fingerprint(cursor: ChangeCursor, task_number: int, answered: int) -> str:
    """What a round's state is known as: its newest change and its counts (a run key part)."""
    text = f"{cursor.round_id}|{cursor.project_id}|{cursor.since}|{task_number}|{answered}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]
