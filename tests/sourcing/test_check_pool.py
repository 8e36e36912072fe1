"""The check pool returns every item once with the check an inline run gives, sending several items a task."""

from __future__ import annotations

from cosmicman.core.imageio import check_image
from cosmicman.sourcing.check_pool import CheckPool
from tests.support.hostile_files import encoded, photo


def test_every_item_comes_back_once_with_its_inline_check_in_tasks_of_per_task():
    items = [(f"item-{i}", encoded(photo(64 + i, 48, seed=i), "JPEG"), "jpg" if i % 2 else "png") for i in range(7)]
    pool: CheckPool[str] = CheckPool(workers=1, resize_to=None, phash_scheme="luma", per_task=3)
    assert pool.pool is not None
    sent: list[int] = []
    submit = pool.pool.submit

    def counted(fn, task, *args):
        sent.append(len(task))
        return submit(fn, task, *args)

    pool.pool.submit = counted  # type: ignore[method-assign]
    try:
        results = [r for ticket, data, claimed in items for r in pool.submit(ticket, data, claimed)]
        results += list(pool.drain())
    finally:
        pool.close()
    assert sent == [3, 3, 1]  # two full tasks, and the rest at the drain
    assert sorted(t for t, _, _ in results) == sorted(t for t, _, _ in items)
    for ticket, data, checked in results:
        claimed = dict((t, c) for t, _, c in items)[ticket]
        assert checked == check_image(data, None, claimed, "luma")
