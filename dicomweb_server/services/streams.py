"""Small async byte streams the retrieve service hands to the web layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO, Any, TypeVar, cast

from dicomweb_server.storage.base import DEFAULT_CHUNK_SIZE, FileRegion

__all__ = ["chain", "close_stream", "iter_spool", "one_chunk", "one_view", "opened"]

T = TypeVar("T")


async def iter_spool(spool: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(spool.read, DEFAULT_CHUNK_SIZE * 4):
            yield chunk
    finally:
        spool.close()


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def one_view(data: bytes | memoryview | FileRegion) -> AsyncIterator[bytes]:
    # A view is sent as is: Starlette and uvicorn write any buffer without copying it; a file
    # region is sent by the kernel where the server can (serve/zerocopy.py), else mapped.
    yield cast(bytes, data)


async def chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """`first`, then `rest`; closing this closes `rest` (an index listing lets go of its
    cursor when a client leaves early, not when the listing is collected)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await close_stream(rest)


async def opened(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` with its first chunk already fetched, so opening errors raise in the caller."""
    try:
        first = await anext(chunks, b"")
    except BaseException:
        await close_stream(chunks)
        raise
    return _Opened(first, chunks)


class _Opened:
    """A stream whose first chunk is already read; `aclose` closes the source, even when
    nobody started iterating (a read-ahead cancelled, a response never sent)."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Opened:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        if first:
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        self._first = None
        await close_stream(self._rest)


async def close_stream(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
