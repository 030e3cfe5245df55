"""A streaming zip writer: stored (not deflated) entries, data descriptors, ZIP64 when needed.

The body is written front to back without seeking, entry by entry (APPNOTE.TXT 6.3.10):
each local header has general purpose bit 3 set, so its CRC-32 and sizes are zero and the
data descriptor after the entry's bytes carries them. Every entry's size is known before its
bytes (the index records it), so which entries need ZIP64 fields is decided up front, and the
whole body's length can be computed before the first byte (`zip_length`). The central
directory is kept as encoded records, about a hundred bytes per entry plus its name.

Sizes and offsets above 2**31 - 1 get ZIP64 fields, as Python's zipfile writes them (some
readers take the 32-bit fields as signed), and more than 65,535 entries get the ZIP64 end of
central directory record.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.bodies import FileRegion

__all__ = ["ZipEntry", "ZipWriter", "iter_zip", "zip_length"]

_ZIP64_LIMIT = (1 << 31) - 1  # sizes and offsets above this get ZIP64 fields
_MAX_ENTRIES = 0xFFFF  # entries a plain end of central directory record counts
_CRC_IN_THREAD = 256 << 10  # chunks at least this long are checksummed off the event loop

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header, 46 bytes
_DESCRIPTOR = struct.Struct("<IIII")  # data descriptor with its signature
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_END = struct.Struct("<IHHHHIIH")  # end of central directory record, 22 bytes
_END64 = struct.Struct("<IQHHIIQQQQ")  # ZIP64 end of central directory record, 56 bytes
_LOCATOR64 = struct.Struct("<IIQI")  # ZIP64 end of central directory locator, 20 bytes

_LOCAL_SIGNATURE = 0x04034B50
_CENTRAL_SIGNATURE = 0x02014B50
_DESCRIPTOR_SIGNATURE = 0x08074B50
_END_SIGNATURE = 0x06054B50
_END64_SIGNATURE = 0x06064B50
_LOCATOR64_SIGNATURE = 0x07064B50
_ZIP64_EXTRA = 0x0001

_DATA_DESCRIPTOR = 0x0008  # general purpose bit 3: CRC-32 and sizes follow the data
_STORED = 0
_VERSION = 20  # 2.0: data descriptors
_VERSION64 = 45  # 4.5: ZIP64
_MADE_BY_UNIX = 3 << 8  # the external attributes below are Unix modes
_REGULAR_FILE = 0o100644 << 16  # -rw-r--r--: unzip otherwise extracts with mode 0000


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One file of the archive: its name (generated, ASCII), its size, and its bytes."""

    name: str
    size: int
    body: AsyncIterator[bytes]


def _dos_time(when: time.struct_time) -> tuple[int, int]:
    """(time, date) in MS-DOS form; years before 1980 are 1980."""
    year = max(when.tm_year, 1980)
    date = (year - 1980) << 9 | when.tm_mon << 5 | when.tm_mday
    clock = when.tm_hour << 11 | when.tm_min << 5 | when.tm_sec // 2
    return clock, date


@dataclass(slots=True)
class ZipWriter:
    """The framing of a zip, entry by entry: `start` before an entry's bytes, `finish` after
    them, `close` at the end. It never sees the bytes themselves, only their CRC-32."""

    modified: time.struct_time = field(default_factory=time.localtime)
    _offset: int = 0  # bytes written so far
    _count: int = 0  # entries finished
    _central: bytearray = field(default_factory=bytearray)
    _pending: tuple[bytes, int, int, bool] | None = None  # name, size, offset, ZIP64 sizes

    def start(self, name: str, size: int) -> bytes:
        """The local file header of an entry of `size` bytes."""
        if self._pending is not None:
            raise RuntimeError("the previous zip entry is not finished")
        encoded = name.encode("ascii")
        zip64 = size > _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", _ZIP64_EXTRA, 16, 0, 0) if zip64 else b""
        clock, date = _dos_time(self.modified)
        header = _LOCAL.pack(
            _LOCAL_SIGNATURE,
            _VERSION64 if zip64 else _VERSION,
            _DATA_DESCRIPTOR,
            _STORED,
            clock,
            date,
            0,  # CRC-32: in the data descriptor
            0xFFFFFFFF if zip64 else 0,
            0xFFFFFFFF if zip64 else 0,
            len(encoded),
            len(extra),
        )
        self._pending = (encoded, size, self._offset, zip64)
        self._offset += len(header) + len(encoded) + len(extra) + size
        return header + encoded + extra

    def finish(self, crc: int) -> bytes:
        """The data descriptor of the entry just written; records its central header."""
        if self._pending is None:
            raise RuntimeError("no zip entry was started")
        name, size, offset, zip64 = self._pending
        self._pending = None
        if zip64:
            descriptor = _DESCRIPTOR64.pack(_DESCRIPTOR_SIGNATURE, crc, size, size)
        else:
            descriptor = _DESCRIPTOR.pack(_DESCRIPTOR_SIGNATURE, crc, size, size)
        self._offset += len(descriptor)
        self._count += 1
        self._central += self._central_header(name, size, offset, crc)
        return descriptor

    def _central_header(self, name: bytes, size: int, offset: int, crc: int) -> bytes:
        fields = []
        if size > _ZIP64_LIMIT:
            fields += [size, size]  # uncompressed, then compressed (APPNOTE 4.5.3)
        if offset > _ZIP64_LIMIT:
            fields.append(offset)
        extra = b""
        if fields:
            extra = struct.pack(f"<HH{len(fields)}Q", _ZIP64_EXTRA, 8 * len(fields), *fields)
        clock, date = _dos_time(self.modified)
        small_size = 0xFFFFFFFF if size > _ZIP64_LIMIT else size
        header = _CENTRAL.pack(
            _CENTRAL_SIGNATURE,
            _MADE_BY_UNIX | (_VERSION64 if fields else _VERSION),
            _VERSION64 if fields else _VERSION,
            _DATA_DESCRIPTOR,
            _STORED,
            clock,
            date,
            crc,
            small_size,
            small_size,
            len(name),
            len(extra),
            0,  # no comment
            0,  # disk number
            0,  # internal attributes
            _REGULAR_FILE,
            0xFFFFFFFF if offset > _ZIP64_LIMIT else offset,
        )
        return header + name + extra

    def close(self) -> bytes:
        """The central directory and the end records."""
        if self._pending is not None:
            raise RuntimeError("the last zip entry is not finished")
        start, size, count = self._offset, len(self._central), self._count
        tail = bytes(self._central)
        self._central = bytearray()
        if count > _MAX_ENTRIES or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
            end64 = self._offset + size
            tail += _END64.pack(
                _END64_SIGNATURE,
                _END64.size - 12,  # the record's size, not counting these first 12 bytes
                _MADE_BY_UNIX | _VERSION64,
                _VERSION64,
                0,
                0,
                count,
                count,
                size,
                start,
            )
            tail += _LOCATOR64.pack(_LOCATOR64_SIGNATURE, 0, end64, 1)
        tail += _END.pack(
            _END_SIGNATURE,
            0,
            0,
            min(count, _MAX_ENTRIES),
            min(count, _MAX_ENTRIES),
            min(size, 0xFFFFFFFF),
            min(start, 0xFFFFFFFF),
            0,
        )
        self._offset += len(tail)
        return tail


def zip_length(entries: Iterable[tuple[str, int]]) -> int:
    """The length of the archive of these (name, size) entries, as `iter_zip` writes it."""
    writer = ZipWriter()
    total = 0
    for name, size in entries:
        total += len(writer.start(name, size)) + size + len(writer.finish(0))
    return total + len(writer.close())


async def _crc32(data: bytes | memoryview, crc: int) -> int:
    if len(data) < _CRC_IN_THREAD:
        return zlib.crc32(data, crc)
    return await asyncio.to_thread(zlib.crc32, data, crc)  # zlib lets go of the GIL


async def iter_zip(
    entries: AsyncIterator[ZipEntry], writer: ZipWriter | None = None
) -> AsyncIterator[bytes]:
    """The archive of `entries`, piece by piece: each entry's chunks pass through uncopied
    (a file region stays a region, for the server to send), framed by headers.

    An entry whose bytes are not its stated size raises before its data descriptor: the
    body is then cut short, without a central directory, so no reader takes it as complete.
    """
    writer = writer or ZipWriter()
    async for entry in entries:
        yield writer.start(entry.name, entry.size)
        crc = 0
        written = 0
        try:
            async for chunk in entry.body:
                data = chunk.view() if isinstance(chunk, FileRegion) else chunk
                crc = await _crc32(data, crc)
                written += len(data)
                if written > entry.size:
                    break
                if data:
                    yield chunk
        finally:
            aclose = getattr(entry.body, "aclose", None)
            if aclose is not None:
                await aclose()
        if written != entry.size:
            raise DicomwebError(
                f"zip entry {entry.name} has {'more than ' if written > entry.size else ''}"
                f"{written} bytes, not the {entry.size} the index records"
            )
        yield writer.finish(crc)
    yield writer.close()
