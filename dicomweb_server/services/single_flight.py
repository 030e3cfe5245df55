"""Single flight: callers asking for the same key at once share one production of its bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["SingleFlight"]


class SingleFlight:
    """The first caller for a key runs `produce`; callers arriving meanwhile await its result
    (or its exception). Nothing is kept once it is done: caching is the caller's business."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[bytes]] = {}

    async def run(self, key: str, produce: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """The bytes of `key`, and whether this call produced them (and so should cache them)."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running), False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
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
