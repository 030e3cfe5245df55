"""The BlobStore protocol (put a stream, read a stream or a range, delete, list), the optional
local-file capability, and the reads that use it when a store has it."""

from __future__ import annotations

import mmap
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast, runtime_checkable

from dicomweb_server.errors import DicomwebError, NotFoundError, StoreUnavailableError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlobInfo",
    "BlobStore",
    "FileRegion",
    "LocalFiles",
    "check_and_read_ahead",
    "is_local_files",
    "local_region",
    "map_view",
    "read_if_cached",
    "read_sendable",
    "read_view",
]

DEFAULT_CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored object as listed: key, size and last-modified time (seconds since the epoch)."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class FileRegion:
    """`count` bytes of a local file from `offset`, for a response to send.

    A server that supports the ASGI zero-copy extension has the kernel send it (sendfile);
    elsewhere `view()` maps it. No descriptor is held until it is sent: a region that is never
    sent (a client gone, a read-ahead dropped) leaves nothing to close.
    """

    path: str
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count

    def open(self) -> BinaryIO:
        """The file, for the caller to close."""
        return open(self.path, "rb")

    def view(self) -> memoryview:
        """The bytes as a read-only view of a shared mapping (no copy into memory)."""
        if not self.count:
            return memoryview(b"")
        with self.open() as file:
            return map_view(file, self.offset, self.count)


def check_and_read_ahead(fd: int, offset: int, count: int) -> None:
    """Raise EOFError unless the open file holds `count` bytes from `offset`; then ask the
    kernel to start reading them in (Linux), without waiting for it."""
    if os.fstat(fd).st_size < offset + count:
        raise EOFError
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, count, os.POSIX_FADV_WILLNEED)


def map_view(file: BinaryIO, offset: int, count: int) -> memoryview:
    """`count` bytes of an open file from `offset` as a read-only view of a shared mapping; the
    mapping outlives the file object and is unmapped once no view refers to it."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(file.fileno(), offset + count - base, offset=base, prot=mmap.PROT_READ)
    return memoryview(mapped)[offset - base :]


class BlobStore(Protocol):
    """Immutable objects under string keys; a put is visible only once complete.

    Keys are built by the services from validated UIDs (digits, dots, slashes, a hex digest;
    see `storage.keys`); implementations may still refuse anything else. Missing keys raise
    NotFoundError; backend faults raise BackendUnavailableError.
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

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def iter_objects(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Yield every object under `prefix` (for orphan sweeps and export)."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailableError when it does not."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


@runtime_checkable
class LocalFiles(Protocol):
    """A store whose objects are files on this machine: responses can send them by path."""

    def local_path(self, key: str) -> str | None:
        """The object's file path, named without touching the disk (the reader checks it);
        None when this object is not a local file."""
        ...


# Views of at least this many bytes map the file instead of copying it into memory: the
# socket then copies straight from the page cache (one copy, and no fresh pages to fault in).
_MAP_MIN = 128 << 10


_LOCAL_TYPES: dict[type, bool] = {}


def is_local_files(store: object) -> bool:
    """isinstance(store, LocalFiles), remembered per class: a runtime protocol check walks the
    protocol's members on every call (microseconds, per instance of a study retrieve)."""
    kind = type(store)
    known = _LOCAL_TYPES.get(kind)
    if known is None:
        known = _LOCAL_TYPES[kind] = isinstance(store, LocalFiles)
    return known


def local_region(store: BlobStore, key: str, start: int, length: int) -> FileRegion | None:
    """The span as a region of a local file, unchecked, or None where objects are not files."""
    if is_local_files(store):
        path = cast(LocalFiles, store).local_path(key)
        if path is not None:
            return FileRegion(path, start, length)
    return None


async def read_view(store: BlobStore, key: str, start: int, length: int) -> bytes | memoryview:
    """`read_range`, or for a large span of a local file a read-only mapped view (no copy).

    Mapping reads no data, so it runs on the event loop; the kernel is asked to read the span
    ahead, so that by the time a read-ahead queue sends it the pages are usually in memory.
    The view stays valid for as long as it is referenced: objects are never rewritten in place.
    """
    region = local_region(store, key, start, length)
    if region is None or length < _MAP_MIN:
        return await store.read_range(key, start, length)
    try:
        with region.open() as handle:
            check_and_read_ahead(handle.fileno(), start, length)
            return map_view(handle, start, length)
    except (OSError, EOFError) as exc:
        raise _read_error(key, exc) from exc


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+: reads that never wait
_NOWAIT_MAX = 4 << 20  # bytes copied on the event loop at most (about 0.4 ms); larger: a thread


def read_if_cached(store: BlobStore, key: str, start: int, length: int) -> memoryview | None:
    """The span of a local file if every byte of it is in the page cache now, read on the
    event loop without a thread hop; None when it is not (or objects are not local files, or
    the platform cannot tell), for the caller to read it the usual way.

    The read is `preadv` with RWF_NOWAIT, which fails rather than wait for the disk, so a
    cold object never stalls the loop; opening the file can still look its folder up, as a
    study retrieve's file regions do (`read_sendable`)."""
    nowait = _NOWAIT
    if nowait is None or not 0 < length <= _NOWAIT_MAX:
        return None
    region = local_region(store, key, start, length)
    if region is None:
        return None
    buffer = bytearray(length)
    try:
        file = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the usual read names the fault
    try:
        read = os.preadv(file, [buffer], start, nowait)
    except OSError:  # BlockingIOError: not (all) in memory
        return None
    finally:
        os.close(file)
    return memoryview(buffer) if read == length else None


async def read_sendable(
    store: BlobStore, key: str, start: int, length: int
) -> bytes | memoryview | FileRegion:
    """A checked local file region a response can send without a copy, else the bytes."""
    region = local_region(store, key, start, length)
    if region is None:
        return await store.read_range(key, start, length)
    try:
        with region.open() as handle:  # checking the size and reading ahead read no data
            check_and_read_ahead(handle.fileno(), start, length)
    except (OSError, EOFError) as exc:
        raise _read_error(key, exc) from exc
    return region


def _read_error(key: str, exc: OSError | EOFError) -> DicomwebError:
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"object {key} not found")
    if isinstance(exc, EOFError):
        return NotFoundError(f"object {key} is shorter than the requested range")
    return StoreUnavailableError(f"blob store read failed: {exc.strerror}")
