"""The bounded read-ahead queue: order, both bounds, failures and early stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dicomweb_server.services.read_ahead import iter_read_ahead


class _Source:
    """Items 0..n-1 as an async generator that records whether it was closed."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.closed = False

    async def items(self) -> AsyncIterator[int]:
        try:
            for item in range(self.count):
                yield item
        finally:
            self.closed = True


class _Fetcher:
    """Fetches that finish when released, recording how many ran at once and their cost."""

    def __init__(self, costs: dict[int, int] | None = None, fail: int | None = None) -> None:
        self.costs = costs or {}
        self.fail = fail
        self.running: set[int] = set()
        self.started: list[int] = []
        self.most_at_once = 0
        self.most_cost = 0
        self.cancelled: list[int] = []

    def cost(self, item: int) -> int:
        return self.costs.get(item, 10)

    async def fetch(self, item: int) -> str:
        self.started.append(item)
        self.running.add(item)
        self.most_at_once = max(self.most_at_once, len(self.running))
        self.most_cost = max(self.most_cost, sum(self.cost(i) for i in self.running))
        try:
            await asyncio.sleep(0.001 * (item % 3))  # finish out of order
            if item == self.fail:
                raise OSError(f"item {item} failed")
            return f"data {item}"
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.running.discard(item)


async def test_yields_every_item_in_order() -> None:
    source, fetcher = _Source(20), _Fetcher()
    got = [
        pair
        async for pair in iter_read_ahead(
            source.items(), fetcher.fetch, fetcher.cost, max_items=4, max_bytes=1000
        )
    ]
    assert got == [(i, f"data {i}") for i in range(20)]
    assert source.closed


async def test_never_more_than_max_items_ahead() -> None:
    source, fetcher = _Source(30), _Fetcher()
    async for _ in iter_read_ahead(
        source.items(), fetcher.fetch, fetcher.cost, max_items=3, max_bytes=10_000
    ):
        await asyncio.sleep(0.002)  # a slow consumer: fetches pile up to the bound
    assert fetcher.most_at_once == 3


async def test_held_cost_stays_within_max_bytes() -> None:
    source, fetcher = _Source(30), _Fetcher()  # each item costs 10
    held_seen = []
    queue = iter_read_ahead(source.items(), fetcher.fetch, fetcher.cost, max_items=8, max_bytes=35)
    async for item, _ in queue:
        # fetches started and not yet handed out
        held_seen.append(10 * (len(fetcher.started) - item - 1))
        await asyncio.sleep(0.002)
    assert max(held_seen) <= 35
    assert fetcher.most_cost <= 35


async def test_an_item_costlier_than_the_bound_is_fetched_alone() -> None:
    source = _Source(5)
    fetcher = _Fetcher(costs={2: 500})
    async for _ in iter_read_ahead(
        source.items(), fetcher.fetch, fetcher.cost, max_items=4, max_bytes=100
    ):
        if 2 in fetcher.running:
            assert fetcher.running == {2}
        await asyncio.sleep(0.002)
    assert fetcher.started == [0, 1, 2, 3, 4]


async def test_a_failed_fetch_raises_at_its_turn_and_cancels_the_rest() -> None:
    source, fetcher = _Source(20), _Fetcher(fail=5)
    got = []
    with pytest.raises(OSError, match="item 5 failed"):
        async for item, _ in iter_read_ahead(
            source.items(), fetcher.fetch, fetcher.cost, max_items=4, max_bytes=1000
        ):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert not fetcher.running
    assert source.closed
    assert _other_tasks() == set()


async def test_stopping_early_cancels_fetches_and_closes_the_source() -> None:
    source = _Source(50)

    async def slow(item: int) -> str:
        await asyncio.sleep(10 if item > 0 else 0)
        return "x"

    queue = iter_read_ahead(source.items(), slow, lambda item: 1, max_items=6, max_bytes=100)
    assert await anext(queue) == (0, "x")
    assert len(_other_tasks()) > 0  # fetches of the next items are under way
    await queue.aclose()
    assert _other_tasks() == set()
    assert source.closed


async def test_a_cancelled_consumer_leaves_no_fetch_behind() -> None:
    source = _Source(50)
    started = asyncio.Event()

    async def slow(item: int) -> str:
        if item == 1:
            started.set()
        await asyncio.sleep(10 if item > 0 else 0)
        return "x"

    async def consume() -> None:
        async for _ in iter_read_ahead(
            source.items(), slow, lambda item: 1, max_items=6, max_bytes=100
        ):
            await asyncio.sleep(10)

    consumer = asyncio.ensure_future(consume())
    await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert _other_tasks() == set()
    assert source.closed


async def test_unconsumed_streams_are_closed() -> None:
    closed: list[int] = []

    class Stream:
        def __init__(self, item: int) -> None:
            self.item = item

        async def aclose(self) -> None:
            closed.append(self.item)

    async def open_stream(item: int) -> Stream:
        return Stream(item)

    source = _Source(10)
    queue = iter_read_ahead(source.items(), open_stream, lambda item: 1, max_items=4, max_bytes=100)
    first, _ = await anext(queue)
    await asyncio.sleep(0)  # let the fetches ahead finish
    await queue.aclose()
    assert first == 0
    assert sorted(closed) == [1, 2, 3]


async def test_bounds_are_checked() -> None:
    fetcher = _Fetcher()
    queue = iter_read_ahead(
        _Source(1).items(), fetcher.fetch, fetcher.cost, max_items=0, max_bytes=1
    )
    with pytest.raises(ValueError, match="max_items"):
        await anext(queue)


def _other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}
