"""Verify: re-read every indexed object and compare it with the digest and size the index
recorded at ingest (SHA-256 of the stored bytes, whose preamble was zeroed before hashing).

Objects are streamed and hashed chunk by chunk (hashing in worker threads, which release the
GIL), `jobs` at once; memory stays at a few chunks per job whatever the object sizes.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dicomweb_server.domain.blob_keys import parse_instance_blob_key
from dicomweb_server.errors import NotFoundError
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.storage.base import BlobStore

__all__ = ["Finding", "VerifyService", "VerifyStats"]

_CHUNK = 1 << 20


class Finding(enum.StrEnum):
    """What is wrong with one indexed object."""

    MISSING = "missing"
    CORRUPT = "corrupt"


@dataclass(slots=True)
class VerifyStats:
    """Counters of a verify run."""

    total: int | None = None
    checked: int = 0
    bytes_read: int = 0
    missing: int = 0
    corrupt: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped_early: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def problems(self) -> int:
        return self.missing + self.corrupt


FindingListener = Callable[[str, Finding, str], None]  # blob key, finding, detail


class VerifyService:
    """Checks the objects the index references; findings go to `listener` as they come."""

    def __init__(
        self, index: InstanceIndex, blobs: BlobStore, listener: FindingListener | None = None
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._listener = listener
        self.stats = VerifyStats()
        self._stop = False

    def stop(self) -> None:
        self._stop = True
        self.stats.stopped_early = True

    async def run(self, site: str | None, *, jobs: int) -> None:
        """Check every object of `site` (None: every site), `jobs` at a time."""
        total = 0
        async for _ in self._index.iter_blob_keys(site):
            total += 1
        self.stats.total = total
        keys: asyncio.Queue[str | None] = asyncio.Queue(maxsize=jobs * 2)

        async def feed() -> None:
            try:
                async for key in self._index.iter_blob_keys(site):
                    if self._stop:
                        break
                    await keys.put(key)
            finally:
                for _ in range(jobs):
                    await keys.put(None)

        async def work() -> None:
            while (key := await keys.get()) is not None:
                await self._check(key)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                for _ in range(jobs):
                    group.create_task(work())
        except BaseExceptionGroup as errors:  # the first failure, as itself (a DicomwebError)
            raise _first_error(errors) from None

    async def _check(self, blob_key: str) -> None:
        try:
            await self._check_object(blob_key)
        finally:
            self.stats.checked += 1

    async def _check_object(self, blob_key: str) -> None:
        key = parse_instance_blob_key(blob_key)
        stored = await self._index.get_instance(key) if key is not None else None
        if stored is None or stored.blob_key != blob_key:
            return  # deleted or replaced since it was listed
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in self._blobs.iter_get(blob_key, chunk_size=_CHUNK):
                size += len(chunk)
                self.stats.bytes_read += len(chunk)
                if len(chunk) >= 64 << 10:
                    await asyncio.to_thread(digest.update, chunk)
                else:
                    digest.update(chunk)
        except NotFoundError:
            self._found(blob_key, Finding.MISSING, "the object is not in the blob store")
            return
        if size != stored.size:
            self._found(
                blob_key, Finding.CORRUPT, f"{size} bytes where the index recorded {stored.size}"
            )
        elif digest.hexdigest() != stored.digest:
            self._found(
                blob_key,
                Finding.CORRUPT,
                f"SHA-256 {digest.hexdigest()[:16]}... where the index recorded"
                f" {stored.digest[:16]}...",
            )

    def _found(self, blob_key: str, finding: Finding, detail: str) -> None:
        if finding is Finding.MISSING:
            self.stats.missing += 1
        else:
            self.stats.corrupt += 1
        if self._listener is not None:
            self._listener(blob_key, finding, detail)


def _first_error(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
