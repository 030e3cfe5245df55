"""TurnBatch (issue 22): keyed reads asked for in one turn of the event loop, one query."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dicomweb_server.index.turn_batch import TurnBatch


class Table:
    """A keyed table that records the keys of each query and can be made to fail or stall."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.asked: list[list[str]] = []
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()  # a query has begun

    async def fetch_many(self, keys: Sequence[str]) -> dict[str, int]:
        self.asked.append(list(keys))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {key: self.rows[key] for key in keys if key in self.rows}


async def test_issue22_one_turn_is_one_query() -> None:
    table = Table({"a": 1, "b": 2, "c": 3})
    batch = TurnBatch(table.fetch_many)
    found = await asyncio.gather(*(batch.get(k) for k in ["a", "b", "x", "a", "c"]))
    assert found == [1, 2, None, 1, 3]
    assert table.asked == [["a", "b", "x", "c"]]  # distinct keys, in the order asked
    assert batch.queries == 1


async def test_issue22_later_turns_are_later_queries() -> None:
    table = Table({"a": 1, "b": 2})
    batch = TurnBatch(table.fetch_many)
    assert await batch.get("a") == 1
    assert await batch.get("b") == 2
    assert await batch.get("zz") is None
    assert table.asked == [["a"], ["b"], ["zz"]]


async def test_issue22_a_query_takes_at_most_max_keys() -> None:
    table = Table({str(n): n for n in range(10)})
    batch = TurnBatch(table.fetch_many, max_keys=4)
    found = await asyncio.gather(*(batch.get(str(n)) for n in range(10)))
    assert found == list(range(10))
    assert [len(keys) for keys in table.asked] == [4, 4, 2]


async def test_issue22_an_error_is_every_callers() -> None:
    table = Table({"a": 1})
    table.error = RuntimeError("index unavailable")
    batch = TurnBatch(table.fetch_many)
    results = await asyncio.gather(batch.get("a"), batch.get("b"), return_exceptions=True)
    assert [str(r) for r in results] == ["index unavailable"] * 2
    table.error = None
    assert await batch.get("a") == 1  # the next turn asks again


async def test_issue22_a_cancelled_caller_leaves_the_others_their_answer() -> None:
    table = Table({"a": 1})
    table.gate = asyncio.Event()
    batch = TurnBatch(table.fetch_many)
    leaving = asyncio.ensure_future(batch.get("a"))
    staying = asyncio.ensure_future(batch.get("a"))
    await table.started.wait()
    leaving.cancel()
    table.gate.set()
    assert await staying == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert table.asked == [["a"]]
