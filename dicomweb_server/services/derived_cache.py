"""Derived data (transcoded frames, thumbnails, remuxed video) in the blob store, within a
byte budget.

Entries are written under `{site}/cache/` (domain/blob_keys.py) and recorded in a ledger
shared by every process (their size and last use). A hit or a write is noted in memory and
the ledger is brought up to date at most every `flush_interval` seconds, off the request
path; when the total is past `max_bytes`, the least recently used entries are claimed from
the ledger and their objects deleted until the total is 90 % of the budget. The cache is an
optimisation: a failure to read, write or evict is logged and the request is served anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from dicomweb_server.errors import DicomwebError, NotFoundError
from dicomweb_server.index.base import CacheLedger
from dicomweb_server.services.memory_cache import MemoryCache
from dicomweb_server.storage.base import BlobStore
from dicomweb_server.telemetry import CACHE_LOOKUPS

__all__ = ["DerivedCache"]

log = logging.getLogger("dicomweb_server.cache")

_FLUSH_INTERVAL = 5.0  # seconds between ledger updates, at most
_MAX_PENDING = 4096  # noted uses that force a ledger update however recent the last one
_LOW_WATER = 0.9  # eviction stops at this fraction of the budget
# /metrics: lookups by entry kind (the folder domain/blob_keys.py puts it in) and result:
# memory (the in-process LRU), hit (the blob store), miss.
_KINDS = ("frames", "rendered", "video")
_LOOKUPS = {
    (kind, result): CACHE_LOOKUPS.labels(kind, result)
    for kind in _KINDS
    for result in ("memory", "hit", "miss")
}


def _kind(key: str) -> str:
    folder = key.rsplit("/", 2)[-2] if key.count("/") >= 2 else ""
    return folder if folder in _KINDS else "other"


def _lookup(kind: str, result: str) -> None:
    counter = _LOOKUPS.get((kind, result))
    (counter or CACHE_LOOKUPS.labels(kind, result)).inc()


class DerivedCache:
    """Get and put derived bytes by key; `close()` writes what is still only noted."""

    def __init__(
        self,
        blobs: BlobStore,
        ledger: CacheLedger,
        *,
        max_bytes: int,
        memory_bytes: int = 0,
        flush_interval: float = _FLUSH_INTERVAL,
    ) -> None:
        self._blobs = blobs
        # In front of the store: a warm transcoded frame is a dict lookup, not an S3 GET.
        self._memory = MemoryCache(memory_bytes)
        self._ledger = ledger
        self._max_bytes = max_bytes
        self._interval = flush_interval
        self._added: dict[str, tuple[int, float]] = {}  # key: (size, when)
        self._used: dict[str, float] = {}  # key: when last used
        self._last_flush = time.monotonic()
        self._flushing: asyncio.Task[None] | None = None
        # One flush at a time: two that overlap would each evict the whole excess they saw.
        self._flush_lock = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """False when the budget is 0: nothing is kept."""
        return self._max_bytes > 0

    async def get(self, key: str) -> bytes | None:
        """The entry's bytes, or None (missing, evicted, or the store failed)."""
        if not self.enabled:
            return None
        kind = _kind(key)
        data = self._memory.get(key)
        if data is not None:
            _lookup(kind, "memory")
            self._used[key] = time.time()
            self._maybe_flush()
            return data
        try:
            data = b"".join([chunk async for chunk in self._blobs.iter_get(key)])
        except NotFoundError:
            _lookup(kind, "miss")
            return None
        except DicomwebError as exc:
            log.warning("derived-data cache read failed: %s", exc.reason)
            _lookup(kind, "miss")
            return None
        _lookup(kind, "hit")
        self._used[key] = time.time()
        self._memory.put(key, data)
        self._maybe_flush()
        return data

    async def put(self, key: str, data: bytes) -> None:
        """Keep `data` under `key` (the caller does not wait when it uses `put_later`)."""
        if not self.enabled:
            return
        self._memory.put(key, data)
        try:
            await self._blobs.put(key, _one(data))
        except DicomwebError as exc:
            log.warning("derived-data cache write failed: %s", exc.reason)
            return
        self._added[key] = (len(data), time.time())
        self._maybe_flush()

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> bool:
        """Keep a large entry written from `chunks` (never held whole); True once it is stored."""
        if not self.enabled:
            return False
        try:
            size = await self._blobs.put(key, chunks)
        except DicomwebError as exc:
            log.warning("derived-data cache write failed: %s", exc.reason)
            return False
        self._added[key] = (size, time.time())
        self._maybe_flush()
        return True

    async def read(self, key: str, start: int, length: int) -> bytes | None:
        """`length` bytes of an entry from `start` (a use of it), or None when it is missing,
        evicted, shorter, or the store failed."""
        if not self.enabled:
            return None
        kind = _kind(key)
        try:
            data = await self._blobs.read_range(key, start, length)
        except NotFoundError:
            _lookup(kind, "miss")
            return None
        except DicomwebError as exc:
            log.warning("derived-data cache read failed: %s", exc.reason)
            _lookup(kind, "miss")
            return None
        if len(data) != length:
            _lookup(kind, "miss")
            return None
        _lookup(kind, "hit")
        self._used[key] = time.time()
        self._maybe_flush()
        return data

    def iter_range(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes of an entry from `start`, streamed (after `read` found it)."""
        return self._blobs.iter_get(key, start, length)

    def put_later(self, key: str, data: bytes) -> None:
        """`put` in the background: the response does not wait for the write."""
        if not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self.put(key, data))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _maybe_flush(self) -> None:
        if self._flushing is not None:
            return
        pending = len(self._added) + len(self._used)
        if time.monotonic() - self._last_flush < self._interval and pending < _MAX_PENDING:
            return
        self._flushing = asyncio.get_running_loop().create_task(self._flush_logged())

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except DicomwebError as exc:
            log.warning("derived-data cache ledger update failed: %s", exc.reason)
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Write noted entries and uses to the ledger, then evict past the budget (after a
        flush already under way, which may have done it)."""
        async with self._flush_lock:
            self._last_flush = time.monotonic()
            added, self._added = self._added, {}
            used, self._used = self._used, {}
            for key, (size, when) in added.items():
                added[key] = (size, max(when, used.pop(key, when)))
            total = await self._ledger.note_cache_use(
                [(key, size, when) for key, (size, when) in added.items()], list(used.items())
            )
            if total > self._max_bytes:
                await self._evict(total - int(self._max_bytes * _LOW_WATER))

    async def _evict(self, excess: int) -> None:
        freed = 0
        while freed < excess:
            victims = await self._ledger.claim_cache_victims(excess - freed)
            if not victims:
                return
            for key, size in victims:
                self._memory.discard_prefix(key)
                await self._blobs.delete(key)
                freed += size
        log.info("derived-data cache: evicted %d bytes (budget %d)", freed, self._max_bytes)

    def forget_in_memory(self, prefix: str = "") -> None:
        """Drop this process's in-memory copies (of keys under `prefix`): the store's copy
        becomes the one served (deleted data, tests)."""
        self._memory.discard_prefix(prefix)

    async def wait_for_writes(self) -> None:
        """Return once every background write started so far has finished."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        """Wait for background writes, then bring the ledger up to date."""
        await self.wait_for_writes()
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._added or self._used:
            try:
                await self.flush()
            except DicomwebError as exc:
                log.warning("derived-data cache ledger update failed: %s", exc.reason)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
