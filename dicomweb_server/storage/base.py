"""The BlobStore protocol: put a stream, read a stream or a range, delete, list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DEFAULT_CHUNK_SIZE", "BlobInfo", "BlobStore"]

DEFAULT_CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored object as listed: key, size and last-modified time (seconds since the epoch)."""

    key: str
    size: int
    modified: float


class BlobStore(Protocol):
    """Immutable objects under string keys; a put is visible only once complete.

    Keys are built by the services from validated UIDs (digits, dots, slashes, a hex digest);
    implementations may still refuse anything else. Missing keys raise NotFoundError;
    backend faults raise BackendUnavailableError.
    """

    async def put(self, key: str, chunks: AsyncIterator[bytes | memoryview]) -> int:
        """Store the stream under `key` atomically and return its size in bytes."""
        ...

    def iter_get(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        """Yield the object's bytes from `start`, `length` bytes (None: to the end)."""
        ...

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return exactly `length` bytes from `start` (a frame or a bulk value)."""
        ...

    async def read_view(self, key: str, start: int, length: int) -> bytes | memoryview:
        """`read_range`, possibly as a read-only view that needs no copy (a mapped file).

        The view stays valid for as long as it is referenced, whatever happens to the key.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def iter_objects(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Yield every object under `prefix` (for orphan sweeps and export)."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...
