"""A received part's bytes: the chunks as they arrived, in memory up to a bound, else a file.

STOW parts pass through here on their way to the blob store. Keeping the received chunks
instead of copying them into one growing buffer saves a copy per byte; the store later
hashes them and writes them to the object in one vectored write. Past `memory_limit` the
part rolls over to a temporary file, so a request's memory stays bounded whatever its size.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import io
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, cast

__all__ = ["Spool"]

_FILE_READ_SIZE = 1 << 20  # bytes per read when a rolled-over spool is hashed or streamed
_thread_local = threading.local()

Buffer = bytes | memoryview


def _read_buffer() -> bytearray:
    """This thread's reused read buffer: a fresh one per part costs page faults, not copies."""
    buffer: bytearray | None = getattr(_thread_local, "buffer", None)
    if buffer is None:
        buffer = _thread_local.buffer = bytearray(_FILE_READ_SIZE)
    return buffer


class Spool:
    """Bytes written once, then read (seekable, like a file) and streamed; close when done.

    `write` keeps a reference to immutable data (bytes, or a read-only view of bytes) and
    copies anything mutable, so a caller may reuse its buffer. Reading does not consume.
    """

    def __init__(self, memory_limit: int, directory: str | None = None) -> None:
        self._memory_limit = memory_limit
        self._directory = directory
        self._chunks: list[Buffer] = []
        self._ends: list[int] = []  # offset just past each chunk, for bisecting reads
        self._file: BinaryIO | None = None
        self._position = 0
        self.size = 0
        self.closed = False

    @property
    def in_memory(self) -> bool:
        """Whether the bytes are still chunks in memory (else they rolled over to a file)."""
        return self._file is None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append `data`; returns its length, like a file's write."""
        if self.closed:
            raise ValueError("write to a closed spool")
        count = len(data)
        if not count:
            return 0
        if self._file is None and self.size + count > self._memory_limit:
            self._roll_over()
        if self._file is not None:
            self._file.write(data)
        else:
            if isinstance(data, bytearray) or (isinstance(data, memoryview) and not data.readonly):
                data = bytes(data)
            self._chunks.append(data)
            self._ends.append(self.size + count)
        self.size += count
        return count

    def _roll_over(self) -> None:
        """Move the chunks so far to a temporary file; later writes go straight to it."""
        file = cast(BinaryIO, tempfile.TemporaryFile(dir=self._directory))  # noqa: SIM115
        try:
            for chunk in self._chunks:
                file.write(chunk)
        except BaseException:
            file.close()
            raise
        self._file = file
        self._chunks = []
        self._ends = []

    # A seekable read-only file over the content (for the Part 10 parser).

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            offset += self.size
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._position = offset
        return offset

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        start = self._position
        end = self.size if size is None or size < 0 else min(self.size, start + size)
        if end <= start:
            return b""
        self._position = end
        if self._file is not None:
            self._file.seek(start)
            return self._file.read(end - start)
        first = bisect.bisect_right(self._ends, start)
        chunk_start = self._ends[first] - len(self._chunks[first])
        if end <= self._ends[first]:  # the common case: within one chunk
            return bytes(self._chunks[first][start - chunk_start : end - chunk_start])
        pieces = []
        index = first
        while start < end:
            chunk = self._chunks[index]
            chunk_start = self._ends[index] - len(chunk)
            stop = min(end, self._ends[index])
            pieces.append(chunk[start - chunk_start : stop - chunk_start])
            start = stop
            index += 1
        return b"".join(pieces)

    # Changing the head, digesting and streaming.

    def overwrite_head(self, data: bytes) -> None:
        """Replace the first len(data) bytes (the Part 10 preamble), without copying the rest."""
        self.replace_head(len(data), data)

    def replace_head(self, count: int, data: bytes) -> None:
        """Replace the first `count` bytes by `data` (of any length: a rewritten file meta
        group); in memory without copying the rest, in a file by rewriting it when the length
        changes."""
        if count > self.size:
            raise ValueError("replace past the end of the spool")
        if self._file is not None:
            if len(data) == count:
                self._file.seek(0)
                self._file.write(data)
            else:
                self._rewrite_file(count, data)
            self.size += len(data) - count
            return
        chunks: list[Buffer] = [data] if data else []
        skip = count
        for chunk in self._chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            chunks.append(memoryview(chunk)[skip:] if skip else chunk)
            skip = 0
        self._chunks = chunks
        self._ends = []
        total = 0
        for chunk in chunks:
            total += len(chunk)
            self._ends.append(total)
        self.size = total

    def _rewrite_file(self, count: int, data: bytes) -> None:
        old = self._file
        assert old is not None
        new = cast(BinaryIO, tempfile.TemporaryFile(dir=self._directory))  # noqa: SIM115
        try:
            new.write(data)
            old.seek(count)
            while block := old.read(_FILE_READ_SIZE):
                new.write(block)
        except BaseException:
            new.close()
            raise
        old.close()
        self._file = new

    def sha256(self) -> str:
        """The content's SHA-256 in hex (blocking: call it from a worker thread)."""
        digest = hashlib.sha256()
        if self._file is None:
            for chunk in self._chunks:
                digest.update(chunk)
            return digest.hexdigest()
        buffer = _read_buffer()
        reader = cast(io.BufferedIOBase, self._file)  # BinaryIO does not declare readinto
        reader.seek(0)
        with memoryview(buffer) as view:
            while count := reader.readinto(buffer):
                with view[:count] as chunk:
                    digest.update(chunk)
        return digest.hexdigest()

    def buffers(self) -> Iterator[Buffer]:
        """The content as the chunks in memory (only while `in_memory`)."""
        if self._file is not None:
            raise ValueError("the spool rolled over to a file")
        return iter(self._chunks)

    async def iter_chunks(self) -> AsyncIterator[Buffer]:
        """The content from the start: the chunks in memory, or reads of the file in a thread."""
        if self._file is None:
            for chunk in self._chunks:
                yield chunk
            return
        file = self._file
        await asyncio.to_thread(file.seek, 0)
        while chunk := await asyncio.to_thread(file.read, _FILE_READ_SIZE):
            yield chunk

    def close(self) -> None:
        """Drop the chunks or close (and so delete) the temporary file."""
        self.closed = True
        self._chunks = []
        self._ends = []
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
