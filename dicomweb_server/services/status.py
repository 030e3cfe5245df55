"""How the server is doing: are its backends reachable (readiness), and how much does it hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import Counts, IndexCounts, InstanceIndex
from dicomweb_server.storage.base import BlobStore

__all__ = ["Counts", "Readiness", "StatusService"]

_COUNTS_TTL = 10.0  # seconds a count is reused: a landing page reloaded in a loop costs nothing


@dataclass(frozen=True, slots=True)
class Readiness:
    """Each backend's state: "ok" or why it is not reachable."""

    index: str
    object_store: str

    @property
    def ready(self) -> bool:
        return self.index == "ok" and self.object_store == "ok"


class StatusService:
    """Readiness checks and store counts over the index and blob store of this process."""

    def __init__(self, index: InstanceIndex, blobs: BlobStore, *, ready_timeout: float) -> None:
        self._index = index
        self._blobs = blobs
        self._timeout = ready_timeout
        self._counts: tuple[float, Counts] | None = None
        self._counting: asyncio.Lock | None = None

    async def readiness(self) -> Readiness:
        """Ping the index and the object store together, each within the ready timeout."""
        index, store = await asyncio.gather(
            self._check(self._index.ping), self._check(self._blobs.ping)
        )
        return Readiness(index, store)

    async def _check(self, ping: Callable[[], Awaitable[None]]) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await ping()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except DicomwebError as exc:
            return exc.reason
        except OSError as exc:
            return f"unreachable: {exc.strerror or type(exc).__name__}"
        return "ok"

    async def counts(self) -> Counts | None:
        """Studies, series and instances held (reused for 10 s); None if the index cannot say."""
        if not isinstance(self._index, IndexCounts):
            return None
        if self._counting is None:
            self._counting = asyncio.Lock()
        async with self._counting:  # one count at a time, however many pages load at once
            cached = self._counts
            if cached is not None and time.monotonic() - cached[0] < _COUNTS_TTL:
                return cached[1]
            counts = await self._index.counts()
            self._counts = (time.monotonic(), counts)
            return counts
