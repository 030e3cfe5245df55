"""Single flight: callers asking for the same key at once share one production of its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["SingleFlight"]

_T = TypeVar("_T")


class SingleFlight:
    """The first caller for a key runs `produce`; callers arriving meanwhile await its result
    (or its exception). Nothing is kept once it is done: caching is the caller's business.
    Keys of different kinds of result must differ (a remuxed video and a frame never share one)."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, produce: Callable[[], Awaitable[_T]]) -> tuple[_T, bool]:
        """The result for `key`, and whether this call produced it (and so should cache it)."""
        running = self._running.get(key)
        if running is not None:
            shared: _T = await asyncio.shield(running)
            return shared, False
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            data = await produce()
            future.set_result(data)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._running[key]
        return data, True
