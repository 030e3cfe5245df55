"""Keyed reads asked for in one turn of the event loop, answered by one query.

A viewer's frames arrive on many connections at once, and each frame request first reads its
instance's row. On PostgreSQL each read is a round trip, a pooled connection taken and given
back, and work for a database server that every process shares. `TurnBatch` gathers the keys
asked for while the loop runs the requests that are ready, and answers them all with one
call of `fetch_many` once that turn is over: a lone request waits one turn, a burst of them
one query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["TurnBatch"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TurnBatch(Generic[K, V]):
    """`get(key)` calls made in one turn of the event loop become one `fetch_many(keys)`.

    `fetch_many` gets distinct keys, at most `max_keys` at a time, and returns the values it
    found by key (a key it leaves out is answered None). Its error is every caller's error. A
    caller that is cancelled leaves the others waiting for the same query unharmed.
    """

    def __init__(
        self, fetch_many: Callable[[Sequence[K]], Awaitable[dict[K, V]]], max_keys: int = 64
    ) -> None:
        self._fetch_many = fetch_many
        self._max_keys = max_keys
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        self.queries = 0  # fetch_many calls made (tests, figures)

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush)  # once the requests ready in this turn have asked
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), self._max_keys):
            part = {key: waiting[key] for key in keys[start : start + self._max_keys]}
            task = asyncio.get_running_loop().create_task(self._answer(part))
            self._flushing.add(task)  # held until done: the loop keeps weak references only
            task.add_done_callback(self._flushing.discard)

    async def _answer(self, waiting: dict[K, list[asyncio.Future[V | None]]]) -> None:
        self.queries += 1
        try:
            found = await self._fetch_many(list(waiting))
        except Exception as exc:  # every caller's error
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are the callers
            for futures in waiting.values():
                for future in futures:
                    future.cancel()
            raise
        for key, futures in waiting.items():
            value = found.get(key)
            for future in futures:
                if not future.done():  # a caller cancelled meanwhile
                    future.set_result(value)
