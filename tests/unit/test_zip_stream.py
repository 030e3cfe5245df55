"""The streaming zip writer: read back by Python's zipfile, lengths known ahead, ZIP64 limits."""

from __future__ import annotations

import bisect
import io
import struct
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.bodies import FileRegion
from dicomweb_server.web.zip_stream import ZipEntry, iter_zip, zip_length


async def _chunks(*pieces: object) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece  # type: ignore[misc]


async def _entries(items: Sequence[ZipEntry]) -> AsyncIterator[ZipEntry]:
    for item in items:
        yield item


async def _archive(items: Sequence[ZipEntry]) -> bytes:
    pieces = []
    async for piece in iter_zip(_entries(items)):
        pieces.append(piece.view() if isinstance(piece, FileRegion) else piece)
    return b"".join(pieces)


async def test_entries_read_back_with_their_bytes_and_the_length_known_ahead(
    tmp_path: Path,
) -> None:
    on_disk = tmp_path / "object"
    on_disk.write_bytes(b"x" * 1000 + bytes(range(256)) * 2000 + b"y" * 1000)
    region = FileRegion(str(on_disk), 1000, 512_000)  # a region, checksummed off the loop
    items = [
        ZipEntry("1.2.3/4.5/6.7.dcm", 11, _chunks(b"hello", memoryview(b" world"))),
        ZipEntry("1.2.3/4.5/empty.dcm", 0, _chunks()),
        ZipEntry("1.2.3/4.6/8.9.dcm", 512_000, _chunks(region)),
    ]
    expected = {"1.2.3/4.5/6.7.dcm": b"hello world", "1.2.3/4.5/empty.dcm": b""}
    expected["1.2.3/4.6/8.9.dcm"] = bytes(range(256)) * 2000
    body = await _archive(items)
    assert len(body) == zip_length((item.name, item.size) for item in items)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None  # every CRC-32 checks
        assert archive.namelist() == list(expected)
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.external_attr >> 16 == 0o100644
            assert archive.read(info) == expected[info.filename]


async def test_an_entry_shorter_or_longer_than_stated_cuts_the_archive() -> None:
    for stated in (10, 12):
        pieces = []
        with pytest.raises(DicomwebError, match="the index records"):
            async for piece in iter_zip(_entries([ZipEntry("a.dcm", stated, _chunks(b"x" * 11))])):
                pieces.append(piece)
        body = b"".join(pieces)
        assert b"PK\x05\x06" not in body  # no end of central directory record
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(body))


async def test_more_than_65535_entries_get_the_zip64_end_records() -> None:
    count = 70_000
    items = [ZipEntry(f"s/{n}.dcm", 1, _chunks(b"%d" % (n % 10))) for n in range(count)]
    body = await _archive(items)
    assert len(body) == zip_length((item.name, 1) for item in items)
    assert b"PK\x06\x06" in body[-200:] and b"PK\x06\x07" in body[-200:]
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        assert len(names) == count
        assert archive.read("s/69999.dcm") == b"9"


class _Sparse(io.RawIOBase):
    """A seekable file made of recorded pieces, runs of zeros stored as their length only."""

    def __init__(self, pieces: list[bytes | int]) -> None:
        self._starts: list[int] = []
        self._pieces = pieces
        position = 0
        for piece in pieces:
            self._starts.append(position)
            position += piece if isinstance(piece, int) else len(piece)
        self._size = position
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._size - self._position)
        done = 0
        while done < wanted:
            index = bisect.bisect_right(self._starts, self._position) - 1
            piece, start = self._pieces[index], self._starts[index]
            within = self._position - start
            if isinstance(piece, int):
                take = min(piece - within, wanted - done)
                buffer[done : done + take] = bytes(take)
            else:
                take = min(len(piece) - within, wanted - done)
                buffer[done : done + take] = piece[within : within + take]
            done += take
            self._position += take
        return done


async def test_an_entry_past_4_gib_and_offsets_past_4_gib_read_back_as_zip64() -> None:
    """A real 4 GiB + 1 KiB entry of zeros (checksummed, never held), then a small one."""
    zeros = memoryview(bytes(64 << 20))
    big = (4 << 30) + 1024

    async def big_body() -> AsyncIterator[bytes]:
        left = big
        while left:
            take = min(left, len(zeros))
            yield zeros[:take]  # type: ignore[misc]
            left -= take

    items = [
        ZipEntry("a/big.dcm", big, big_body()),
        ZipEntry("a/small.dcm", 5, _chunks(b"after")),
    ]
    pieces: list[bytes | int] = []
    async for piece in iter_zip(_entries(items)):
        if isinstance(piece, memoryview) and piece.obj is zeros.obj:
            pieces.append(len(piece))
        else:
            pieces.append(bytes(piece))
    sparse = _Sparse(pieces)
    assert sparse.seek(0, 2) == zip_length([("a/big.dcm", big), ("a/small.dcm", 5)])
    sparse.seek(0)
    with zipfile.ZipFile(io.BufferedReader(sparse)) as archive:
        first, second = archive.infolist()
        assert (first.filename, first.file_size, first.header_offset) == ("a/big.dcm", big, 0)
        assert second.header_offset > 4 << 30
        assert archive.read("a/small.dcm") == b"after"
        with archive.open(first) as entry:
            assert entry.read(4096) == bytes(4096)
    local = pieces[0]
    assert isinstance(local, bytes)
    assert struct.unpack_from("<II", local, 18) == (0xFFFFFFFF, 0xFFFFFFFF)  # sizes in ZIP64
