"""The STOW part spool: chunks kept in memory up to a bound, then a temporary file."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from dicomweb_server.services.spool import Spool


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _spool(data: bytes, chunk: int, memory_limit: int) -> Spool:
    spool = Spool(memory_limit)
    for offset in range(0, len(data), chunk):
        spool.write(data[offset : offset + chunk])
    return spool


async def _streamed(spool: Spool) -> bytes:
    return b"".join([bytes(chunk) async for chunk in spool.iter_chunks()])


@pytest.mark.parametrize("memory_limit", [1 << 20, 1000], ids=["in-memory", "rolled-over"])
async def test_reads_seeks_and_streams_like_a_file(memory_limit: int) -> None:
    data = _data(5000)
    with _spool(data, 333, memory_limit) as spool:
        assert spool.in_memory is (memory_limit > len(data))
        assert spool.size == len(data)
        rng = random.Random(1)
        for _ in range(200):  # reads inside one chunk, across several, past the end
            start = rng.randrange(0, 5200)
            length = rng.randrange(0, 1200)
            assert spool.seek(start) == start
            assert spool.read(length) == data[start : start + length]
            assert spool.tell() == min(max(start, start + length), max(start, len(data)))
        spool.seek(-10, io.SEEK_END)
        assert spool.read() == data[-10:]
        spool.seek(100)
        spool.seek(5, io.SEEK_CUR)
        assert spool.read(3) == data[105:108]
        assert spool.sha256() == hashlib.sha256(data).hexdigest()
        assert await _streamed(spool) == data
        assert await _streamed(spool) == data  # reading does not consume


@pytest.mark.parametrize("memory_limit", [1 << 20, 100], ids=["in-memory", "rolled-over"])
@pytest.mark.parametrize("chunk", [50, 128, 1000])
async def test_overwrite_head_replaces_only_the_head(memory_limit: int, chunk: int) -> None:
    data = _data(700)
    with _spool(data, chunk, memory_limit) as spool:
        spool.overwrite_head(b"\0" * 128)
        expected = b"\0" * 128 + data[128:]
        spool.seek(0)
        assert spool.read() == expected
        assert spool.sha256() == hashlib.sha256(expected).hexdigest()
        assert await _streamed(spool) == expected
        if spool.in_memory:
            assert b"".join(bytes(b) for b in spool.buffers()) == expected
        with pytest.raises(ValueError, match="past the end"):
            spool.overwrite_head(b"x" * 701)


def test_mutable_data_is_copied_and_bytes_are_kept() -> None:
    buffer = bytearray(b"abcdef")
    kept = b"ghijkl"
    with Spool(1 << 20) as spool:
        spool.write(buffer)
        spool.write(memoryview(buffer)[2:4])
        spool.write(memoryview(kept)[1:])
        buffer[:] = b"XXXXXX"  # the caller reuses its buffer
        spool.seek(0)
        assert spool.read() == b"abcdefcdhijkl"
        chunks = list(spool.buffers())
        assert chunks[2].obj is kept  # type: ignore[union-attr]  # a view of the caller's bytes


def test_rolls_over_once_past_the_bound_and_keeps_order() -> None:
    data = _data(3000)
    with Spool(1000) as spool:
        spool.write(data[:900])
        assert spool.in_memory
        spool.write(data[900:1100])
        assert not spool.in_memory
        spool.write(data[1100:])
        spool.seek(0)
        assert spool.read() == data
        with pytest.raises(ValueError, match="rolled over"):
            spool.buffers()


def test_closed_spool_refuses_writes() -> None:
    spool = Spool(100)
    spool.write(b"x" * 200)
    spool.close()
    assert spool.closed
    with pytest.raises(ValueError, match="closed"):
        spool.write(b"y")
