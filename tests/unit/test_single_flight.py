"""Callers asking for one key at once share one production."""

from __future__ import annotations

import asyncio

import pytest

from dicomweb_server.services.single_flight import SingleFlight


async def test_concurrent_callers_share_one_production() -> None:
    flight = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def produce() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return b"frame"

    tasks = [asyncio.create_task(flight.run("k", produce)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(produced for _, produced in results) == [False] * 4 + [True]
    assert {data for data, _ in results} == {b"frame"}
    assert await flight.run("k", produce) == (b"frame", True)  # nothing kept once done
    assert calls == 2


async def test_waiters_get_the_producers_exception() -> None:
    flight = SingleFlight()
    release = asyncio.Event()

    async def produce() -> bytes:
        await release.wait()
        raise ValueError("cannot decode")

    tasks = [asyncio.create_task(flight.run("k", produce)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    with pytest.raises(ValueError):
        await flight.run("k", produce)
