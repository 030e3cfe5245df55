"""A bounded read-ahead queue: fetch the next items while the consumer handles the current one.

WADO-RS sends a study one instance at a time; without read-ahead each object's fetch latency
(an S3 GET, a disk read in a worker thread) adds up in series. Here up to `max_items` fetches
run at once and at most `max_bytes` (by each item's declared cost) are held ahead of the
consumer, in order. The queue is pulled by its consumer (no producer task), so a consumer
that stops (a client gone, a failed part) cancels and awaits every fetch still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = ["iter_read_ahead"]

_T = TypeVar("_T")
_R = TypeVar("_R")


async def iter_read_ahead(
    items: AsyncIterator[_T],
    fetch: Callable[[_T], Awaitable[_R]],
    cost: Callable[[_T], int],
    *,
    max_items: int,
    max_bytes: int,
) -> AsyncGenerator[tuple[_T, _R]]:
    """Yield (item, fetched) in the order of `items`, fetching ahead within both bounds.

    An item's fetch starts once fewer than `max_items` fetches are ahead and its `cost` fits in
    what `max_bytes` leaves; the next item always starts when nothing is ahead, so an item
    costlier than `max_bytes` is fetched alone. A failed fetch raises when its turn comes.
    """
    if max_items < 1 or max_bytes < 0:
        raise ValueError("max_items must be at least 1 and max_bytes must not be negative")
    ahead: deque[tuple[_T, int, asyncio.Task[_R]]] = deque()
    held = 0  # the cost of what is ahead
    pulled: list[_T] = []  # taken from `items` but not started: its cost did not fit yet
    exhausted = False
    # Top up only once half the queue is consumed, so fetches start in groups and can share
    # work (the filesystem store maps a group's files in one worker-thread job).
    refill_at = max_items // 2
    try:
        while True:
            refilling = len(ahead) <= refill_at
            while refilling and not exhausted and len(ahead) < max_items:
                if not pulled:
                    try:
                        pulled.append(await anext(items))
                    except StopAsyncIteration:
                        exhausted = True
                        break
                item_cost = cost(pulled[0])
                if ahead and held + item_cost > max_bytes:
                    break
                item = pulled.pop()
                ahead.append((item, item_cost, asyncio.ensure_future(fetch(item))))
                held += item_cost
            if not ahead:
                return
            item, item_cost, task = ahead[0]
            fetched = await task  # still in `ahead`: cancelled with the rest if we are
            ahead.popleft()
            held -= item_cost
            yield item, fetched
    finally:
        await _cancel_all([task for _, _, task in ahead])
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def _cancel_all(tasks: list[asyncio.Task[_R]]) -> None:
    """Cancel fetches nobody will consume and wait for them, retrieving their outcomes."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        # A fetch that finished before it was cancelled may hold an open stream: close it.
        if not task.cancelled() and task.exception() is None:
            aclose = getattr(task.result(), "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
