"""services/render.py: the pixel budget renderings in flight share."""

from __future__ import annotations

import asyncio

import pytest

from dicomweb_server.services.render import PixelBudget


async def test_renderings_within_the_budget_start_at_once_and_give_it_back() -> None:
    budget = PixelBudget(100)
    first = await budget.acquire(60)
    second = await budget.acquire(40)
    assert budget.held == 100
    first()
    first()  # released twice (sent, then the response's own finally): counted once
    assert budget.held == 40
    second()
    assert budget.held == 0


async def test_a_rendering_waits_for_room_and_waiters_go_in_arrival_order() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(100)
    large = asyncio.ensure_future(budget.acquire(80))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(budget.acquire(10))
    await asyncio.sleep(0)
    assert not large.done() and not small.done()  # the small one does not overtake
    held()
    await asyncio.sleep(0)
    assert large.done() and small.done()
    assert budget.held == 90
    large.result()()
    small.result()()
    assert budget.held == 0


async def test_a_rendering_larger_than_the_budget_takes_all_of_it() -> None:
    budget = PixelBudget(100)
    release = await budget.acquire(1000)
    assert budget.held == 100
    release()
    assert budget.held == 0


async def test_a_wait_given_up_leaves_the_line_and_lets_the_next_in() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(50)
    blocked = asyncio.ensure_future(budget.acquire(80))
    await asyncio.sleep(0)
    behind = asyncio.ensure_future(budget.acquire(50))
    await asyncio.sleep(0)
    assert not behind.done()  # in line behind the 80
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await blocked
    await asyncio.sleep(0)
    assert behind.done()  # 50 + 50 fit once the 80 gave up
    assert budget.held == 100
    held()
    behind.result()()
    assert budget.held == 0


async def test_a_wait_granted_as_it_is_cancelled_gives_the_pixels_back() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(100)
    waiting = asyncio.ensure_future(budget.acquire(100))
    await asyncio.sleep(0)
    held()  # grants the waiter...
    waiting.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.held == 0
