"""Stored frames of a remote (S3) object kept in memory, and read ahead by one ranged GET.

A viewer shows a multi-frame object (an enhanced CT or MR, an XA run, an ultrasound cine) by
asking for its frames one request each, nearly in order. From S3 each of those asks is one
ranged GET, and the gateway's latency per GET is most of the answer's time. Here a frame
asked for and not kept is read on its own, and the frames after it, up to `ahead_bytes`, are
streamed in the background by one GET of their whole span: each is kept as soon as its last
byte arrives, so the next asks are answered from memory, and an ask for a frame still on its
way waits for that frame only, not for the whole span.

Only frames requests read ahead (`ahead=True`): a rendered image or a bulk data value reads
the one frame it needs. Frames are kept by the object's key, which holds its content's
digest, so an entry is never stale; a deleted instance's frames are unreachable, as its row
is read first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

from dicomweb_server.domain.records import FrameSpans
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.memory_cache import MemoryCache
from dicomweb_server.storage.base import BlobStore
from dicomweb_server.telemetry import FRAME_MEMORY_READS, FRAMES_READ_AHEAD

__all__ = ["KeptFrames", "read_frame"]

log = logging.getLogger("dicomweb_server.retrieve")
# Read-aheads running at once per process: past that, an ask reads only its own frame.
_MAX_FETCHES = 4
# Bytes taken from the stream at most at a time: a read returns what has arrived (a frame is
# kept as soon as its last byte is in), so this only bounds a piece; larger, fewer copies.
_FETCH_CHUNK = 1 << 20
# /metrics: where each frame asked for came from (an operator sizes the frame memory by it)
_FROM_MEMORY = FRAME_MEMORY_READS.labels("memory")
_WAITED = FRAME_MEMORY_READS.labels("waited")
_FROM_STORE = FRAME_MEMORY_READS.labels("store")


class KeptFrames:
    """Frames read from `blobs` by (object key, number), at most `memory_bytes` held; with
    `ahead_bytes`, a frames request streams up to that many bytes past its frame."""

    def __init__(self, blobs: BlobStore, memory_bytes: int, ahead_bytes: int = 0) -> None:
        self._blobs = blobs
        self._kept = MemoryCache(memory_bytes)
        # At most an eighth of the memory ahead: a read-ahead must not push out the frames it
        # is read for.
        self._ahead_bytes = min(ahead_bytes, memory_bytes // 8)
        self._coming: dict[str, asyncio.Future[None]] = {}  # "key#n": done once kept or not
        self._fetches: set[asyncio.Task[None]] = set()
        self.fetched_ahead = 0  # frames kept by read-ahead, for tests and figures

    def __len__(self) -> int:
        """Frames kept."""
        return len(self._kept.entries)

    async def read(
        self, key: str, frames: Sequence[FrameSpans], number: int, *, ahead: bool = False
    ) -> bytes:
        """Frame `number` (1-based) of the object `key`, whose frames lie at `frames`."""
        name = f"{key}#{number}"
        data = self._kept.get(name)
        source = _FROM_MEMORY
        if data is None and (coming := self._coming.get(name)) is not None:
            await asyncio.shield(coming)  # never fails: a frame not kept is read below
            data = self._kept.get(name)
            source = _WAITED
        if ahead and self._ahead_bytes > 0 and number < len(frames):
            self._read_on(key, frames, number)
        if data is None:
            data = await read_frame(self._blobs, key, frames[number - 1])
            self._kept.put(name, data)
            source = _FROM_STORE
        source.inc()
        return data

    async def aclose(self) -> None:
        """Stop the read-aheads still running; nothing waits for what they would keep."""
        for task in list(self._fetches):
            task.cancel()
        await asyncio.gather(*self._fetches, return_exceptions=True)

    def _read_on(self, key: str, frames: Sequence[FrameSpans], number: int) -> None:
        """Start streaming the first stretch of frames after `number` that are neither kept
        nor coming, when it starts within `ahead_bytes` of frame `number`'s end."""
        if len(self._fetches) >= _MAX_FETCHES:
            return
        reach = _end(frames[number - 1]) + self._ahead_bytes
        first = number  # 0-based: the frame after `number`
        while first < len(frames) and frames[first].fragments[0][0] < reach:
            name = f"{key}#{first + 1}"
            if name in self._coming:
                return  # a read-ahead is bringing this stretch already
            if name not in self._kept:
                break
            first += 1
        else:
            return  # kept up to the reach, or to the last frame
        start = frames[first].fragments[0][0]
        end = first + 1
        while (
            end < len(frames)
            and f"{key}#{end + 1}" not in self._coming
            and f"{key}#{end + 1}" not in self._kept
            and _end(frames[end]) - start <= self._ahead_bytes
            and frames[end].fragments[0][0] >= _end(frames[end - 1])  # in the object's order
        ):
            end += 1
        if end - first < 2:
            return  # one frame: its own ask reads it as soon
        loop = asyncio.get_running_loop()
        waiting = {f"{key}#{n + 1}": loop.create_future() for n in range(first, end)}
        self._coming.update(waiting)
        task = loop.create_task(self._fetch(key, frames, first, end, waiting))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(
        self,
        key: str,
        frames: Sequence[FrameSpans],
        first: int,
        end: int,
        waiting: dict[str, asyncio.Future[None]],
    ) -> None:
        """Stream frames[first:end] by one ranged read and keep each once it is whole.

        The stream's pieces are held as they arrive (no buffer of the whole span, which would
        copy every byte once more) and dropped once no frame still to come starts in them;
        a frame's bytes are copied out of them once, into the entry kept."""
        start = frames[first].fragments[0][0]
        pieces: list[tuple[int, bytes]] = []  # (where in the object, bytes) not yet passed
        received = start  # where the bytes received so far end in the object
        index = first
        stream = self._blobs.iter_get(
            key, start, _end(frames[end - 1]) - start, chunk_size=_FETCH_CHUNK
        )
        try:
            async for chunk in stream:
                pieces.append((received, chunk))
                received += len(chunk)
                while index < end and _end(frames[index]) <= received:
                    data = b"".join(  # the one copy of the frame's bytes
                        view
                        for offset, length in frames[index].fragments
                        for view in _views(pieces, offset, length)
                    )
                    name = f"{key}#{index + 1}"
                    self._kept.put(name, data)
                    self.fetched_ahead += 1
                    FRAMES_READ_AHEAD.inc()
                    self._settle(name, waiting)
                    index += 1
                    if index < end:  # pieces that end before the next frame are done with
                        _drop_before(pieces, frames[index].fragments[0][0])
        except DicomwebError as exc:  # each ask not yet answered reads its own frame
            log.info("frame read-ahead of %s failed: %s", key, exc.reason)
        except Exception:  # nobody awaits this task: say what broke, then the asks read
            log.exception("frame read-ahead of %s failed", key)
        finally:
            for name in list(waiting):
                self._settle(name, waiting)
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator

    def _settle(self, name: str, waiting: dict[str, asyncio.Future[None]]) -> None:
        future = waiting.pop(name)
        if self._coming.get(name) is future:
            del self._coming[name]
        if not future.done():
            future.set_result(None)


async def read_frame(blobs: BlobStore, key: str, frame: FrameSpans) -> bytes:
    """A stored frame's bytes: its fragments read from the object `key` and joined."""
    pieces = [await blobs.read_range(key, *span) for span in frame.fragments]
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _views(pieces: list[tuple[int, bytes]], offset: int, length: int) -> Iterator[memoryview]:
    """Views of `length` bytes from `offset` of the object, in the pieces that hold them."""
    stop = offset + length
    for at, piece in pieces:
        if at + len(piece) <= offset:
            continue
        if at >= stop:
            break
        yield memoryview(piece)[max(offset - at, 0) : min(stop - at, len(piece))]


def _drop_before(pieces: list[tuple[int, bytes]], offset: int) -> None:
    """Forget the pieces that end at or before `offset`."""
    drop = 0
    while drop < len(pieces) and pieces[drop][0] + len(pieces[drop][1]) <= offset:
        drop += 1
    del pieces[:drop]


def _end(frame: FrameSpans) -> int:
    """Where the frame's last fragment ends in the object."""
    return max(offset + length for offset, length in frame.fragments)
