"""Frames kept in memory and read ahead (services/frame_read_ahead.py), over a real folder
store whose reads are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomweb_server.domain.records import FrameSpans
from dicomweb_server.errors import NotFoundError
from dicomweb_server.services.frame_read_ahead import KeptFrames
from dicomweb_server.storage.base import DEFAULT_CHUNK_SIZE
from dicomweb_server.storage.filesystem import FilesystemBlobStore

FRAME = 1000  # bytes per frame
HEADER = 132  # where the first frame starts in the object


class CountedStore(FilesystemBlobStore):
    """The folder store, counting its ranged reads and streams; with `break_after`, each
    stream breaks after that many bytes with an error no store names; while `hold` is set to
    an unset event, streams wait for it before their first byte; with `pieces`, streams
    arrive in pieces of that many bytes, as a network read can cut them anywhere."""

    def __init__(
        self, root: Path, break_after: int | None = None, pieces: int | None = None
    ) -> None:
        super().__init__(root)
        self._pieces = pieces
        self.ranges = 0
        self.streams: list[tuple[int, int | None]] = []
        self._break_after = break_after
        self.hold: asyncio.Event | None = None

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges += 1
        return await super().read_range(key, start, length)

    async def iter_get(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        self.streams.append((start, length))
        if self.hold is not None:
            await self.hold.wait()
        async for chunk in super().iter_get(key, start, length, chunk_size):
            if self._pieces is not None:
                for at in range(0, len(chunk), self._pieces):
                    yield chunk[at : at + self._pieces]
                continue
            if self._break_after is None:
                yield chunk
                continue
            yield chunk[: self._break_after]
            raise RuntimeError("the connection broke")


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _frame_bytes(number: int) -> bytes:
    return bytes([number % 251]) * FRAME


async def _stored(store: CountedStore, frames: int) -> list[FrameSpans]:
    body = b"H" * HEADER + b"".join(_frame_bytes(n) for n in range(1, frames + 1))
    await store.put("site/obj", _one(body))
    return [FrameSpans(((HEADER + (n - 1) * FRAME, FRAME),)) for n in range(1, frames + 1)]


async def _settled(kept: KeptFrames) -> None:
    for _ in range(500):
        if not kept._fetches:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the read-ahead did not finish")


@pytest.mark.parametrize("pieces", [None, 333, 1000, 2500])
async def test_a_frames_request_streams_the_next_frames_in_and_they_are_answered_from_memory(
    tmp_path: Path, pieces: int | None
) -> None:
    store = CountedStore(tmp_path, pieces=pieces)
    frames = await _stored(store, 40)
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME)

    assert await kept.read("site/obj", frames, 1, ahead=True) == _frame_bytes(1)
    await _settled(kept)
    assert store.ranges == 1
    assert store.streams == [(HEADER + FRAME, 8 * FRAME)]  # frames 2-9 in one read
    assert kept.fetched_ahead == 8

    for number in range(2, 10):
        assert await kept.read("site/obj", frames, number, ahead=True) == _frame_bytes(number)
    assert store.ranges == 1  # every one from memory

    # Paging on through all 40 frames, nearly every ask is answered from memory.
    for number in range(10, 41):
        assert await kept.read("site/obj", frames, number, ahead=True) == _frame_bytes(number)
    await _settled(kept)
    assert store.ranges + len(store.streams) <= 8
    assert len(kept) == 40


async def test_an_ask_for_a_frame_on_its_way_waits_for_it_and_reads_nothing(
    tmp_path: Path,
) -> None:
    store = CountedStore(tmp_path)
    frames = await _stored(store, 20)
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME)

    store.hold = asyncio.Event()  # the stream waits until both asks are in
    await kept.read("site/obj", frames, 5, ahead=True)
    assert kept._fetches  # still streaming when the next asks come
    both = asyncio.gather(
        kept.read("site/obj", frames, 6, ahead=True), kept.read("site/obj", frames, 13)
    )
    await asyncio.sleep(0.05)
    assert not both.done()  # waiting for the stream, not reading on their own
    store.hold.set()
    assert await both == [_frame_bytes(6), _frame_bytes(13)]
    assert store.ranges == 1  # frame 5's own read only
    await _settled(kept)
    assert store.streams[0] == (HEADER + 5 * FRAME, 8 * FRAME)  # frames 6-13


async def test_without_ahead_or_with_none_allowed_only_the_frame_is_read(tmp_path: Path) -> None:
    store = CountedStore(tmp_path)
    frames = await _stored(store, 20)
    for kept, ahead in (
        (KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME), False),
        (KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=0), True),
        # an eighth of the memory holds a single frame: nothing to read ahead
        (KeptFrames(store, memory_bytes=8 * FRAME, ahead_bytes=8 * FRAME), True),
    ):
        assert await kept.read("site/obj", frames, 3, ahead=ahead) == _frame_bytes(3)
        assert not kept._fetches and kept.fetched_ahead == 0
    assert store.streams == []


async def test_the_stream_stays_ahead_and_a_single_frame_is_left_to_its_ask(
    tmp_path: Path,
) -> None:
    store = CountedStore(tmp_path)
    frames = await _stored(store, 11)
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=4 * FRAME)

    await kept.read("site/obj", frames, 11, ahead=True)  # the last frame: nothing after it
    assert not kept._fetches
    await kept.read("site/obj", frames, 1, ahead=True)
    await _settled(kept)
    assert store.streams == [(HEADER + FRAME, 4 * FRAME)]  # frames 2-5
    await kept.read("site/obj", frames, 3, ahead=True)  # frames 4-7 in reach: 6-9 streamed
    await _settled(kept)
    assert store.streams[1:] == [(HEADER + 5 * FRAME, 4 * FRAME)]
    # Frame 7's reach is 8-11: only frame 10 is not kept, and one frame is its ask's to read.
    await kept.read("site/obj", frames, 7, ahead=True)
    assert not kept._fetches
    assert await kept.read("site/obj", frames, 10, ahead=True) == _frame_bytes(10)
    assert len(store.streams) == 2
    assert store.ranges == 3  # frames 11, 1 and 10, each read once


async def test_a_read_ahead_that_ends_short_leaves_each_ask_to_read_its_own(
    tmp_path: Path,
) -> None:
    store = CountedStore(tmp_path)
    frames = await _stored(store, 10)
    # The index says 14 frames; the object holds 10 (cut short): frames 11-14 never arrive.
    claimed = [*frames, *(FrameSpans(((HEADER + n * FRAME, FRAME),)) for n in range(10, 14))]
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=16 * FRAME)

    await kept.read("site/obj", claimed, 1, ahead=True)
    with pytest.raises(NotFoundError):
        await kept.read("site/obj", claimed, 12)  # waits for the stream, then reads: short
    await _settled(kept)
    assert await kept.read("site/obj", claimed, 10) == _frame_bytes(10)  # kept by the stream
    assert kept.fetched_ahead == 9


@pytest.mark.parametrize("pieces", [None, 1, 7, 23, 1000])
async def test_frames_of_several_fragments_are_joined_as_stored(
    tmp_path: Path, pieces: int | None
) -> None:
    """Encapsulated frames: each frame two fragments, an 8-byte item header before each; the
    stream arriving whole or cut into pieces across fragments, headers and frames."""
    store = CountedStore(tmp_path, pieces=pieces)
    pieces, frames, offset = [], [], HEADER
    for number in range(1, 9):
        spans = []
        for half in (b"a", b"b"):
            fragment = bytes([number]) * 10 + half * 5
            pieces += [b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little"), fragment]
            spans.append((offset + 8, len(fragment)))
            offset += 8 + len(fragment)
        frames.append(FrameSpans(tuple(spans)))
    await store.put("site/enc", _one(b"H" * HEADER + b"".join(pieces)))
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=1000)

    await kept.read("site/enc", frames, 1, ahead=True)
    await _settled(kept)
    assert kept.fetched_ahead == 7
    for number in range(1, 9):
        expected = (bytes([number]) * 10 + b"a" * 5) + (bytes([number]) * 10 + b"b" * 5)
        assert await kept.read("site/enc", frames, number) == expected
    assert store.ranges == 2  # frame 1's two fragments; the rest came in one stream
    assert len(store.streams) == 1


async def test_a_stream_covers_only_frames_in_the_object_s_order(tmp_path: Path) -> None:
    """A frame table that goes back in the object (never written by our ingest, but an index
    is data) ends the stretch there: no frame is cut from the wrong bytes."""
    store = CountedStore(tmp_path)
    frames = await _stored(store, 10)
    shuffled = [*frames[:4], frames[1], *frames[5:]]  # frame 5 points at frame 2's bytes
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME)

    await kept.read("site/obj", shuffled, 1, ahead=True)
    await _settled(kept)
    assert store.streams == [(HEADER + FRAME, 3 * FRAME)]  # frames 2-4, then the table turns
    for number in range(1, 11):
        expected = _frame_bytes(2 if number == 5 else number)
        assert await kept.read("site/obj", shuffled, number) == expected


async def test_a_stream_that_breaks_is_logged_and_each_ask_reads_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CountedStore(tmp_path, break_after=2500)
    frames = await _stored(store, 10)
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME)

    await kept.read("site/obj", frames, 1, ahead=True)
    assert await kept.read("site/obj", frames, 9) == _frame_bytes(9)  # waited, then read
    await _settled(kept)
    assert "frame read-ahead of site/obj failed" in caplog.text
    assert store.ranges == 2
    assert kept.fetched_ahead == 2  # frames 2 and 3 came whole before the break
    for number in range(2, 11):  # what came before the break is kept, the rest is read
        assert await kept.read("site/obj", frames, number) == _frame_bytes(number)


async def test_closing_stops_the_read_aheads(tmp_path: Path) -> None:
    store = CountedStore(tmp_path)
    frames = await _stored(store, 20)
    kept = KeptFrames(store, memory_bytes=1 << 20, ahead_bytes=8 * FRAME)
    await kept.read("site/obj", frames, 1, ahead=True)
    await kept.aclose()
    assert not kept._fetches
    # An ask for a frame the stopped read would have brought reads it itself.
    assert await kept.read("site/obj", frames, 2) == _frame_bytes(2)
