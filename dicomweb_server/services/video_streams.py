"""Where a stored video stream lies in its object: the spans of its Pixel Data fragments.

Video Pixel Data (PS3.5 8.2.5-8.2.11) is one stream in one fragment, or several for the
fragmentable syntaxes; ingest records no frames for it (fragments are not frames). The item
headers are walked once per stored object (the caller remembers the result), read in
`_BLOCK`s: one ranged read for the usual single fragment, on any store. The stream's first
bytes tell its container; the pad byte an odd-length stream got is left out where the
container tells it from data.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from dicomweb_server.codecs.registry import CodecError
from dicomweb_server.codecs.video import Container, sniff_container
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.storage.base import BlobStore

__all__ = ["Span", "VideoStream", "iter_spans", "read_video_stream"]

Span = tuple[int, int]  # (offset in the stored object, length)
_ITEM = 0xE000FFFE
_SEQUENCE_DELIMITER = 0xE0DDFFFE
_UNDEFINED = 0xFFFFFFFF
_BLOCK = 64 << 10  # bytes read at once while walking item headers (and the stream's start)
_HEAD = 512  # bytes of the stream that tell its container
_TS_PACKET = 188
_MP4_BOXES = 64  # top-level boxes walked to find an MP4's own length (fragmented MP4: more)


@dataclass(frozen=True, slots=True)
class VideoStream:
    """A stored video stream: its spans in the object, its container and its length."""

    spans: tuple[Span, ...]
    container: Container
    length: int


async def read_video_stream(blobs: BlobStore, instance: StoredInstance) -> VideoStream:
    """The layout of an instance's encapsulated video; CodecError when it is malformed."""
    spans, head = await _fragments(blobs, instance)
    container = sniff_container(head)
    spans = await _without_pad_byte(blobs, instance.blob_key, spans, container)
    return VideoStream(tuple(spans), container, sum(n for _, n in spans))


async def _fragments(blobs: BlobStore, instance: StoredInstance) -> tuple[list[Span], bytes]:
    """The fragments' spans (Basic Offset Table skipped, PS3.5 A.4) and the stream's first
    bytes, read in `_BLOCK`s: one read when the stream is one fragment, as usual."""
    pixel = instance.pixel
    assert pixel is not None
    key = instance.blob_key
    end = (
        instance.size
        if pixel.value_length == _UNDEFINED
        else pixel.value_offset + pixel.value_length
    )
    block_start, block = pixel.value_offset, b""

    async def read(at: int, count: int) -> bytes:
        nonlocal block_start, block
        if not (block_start <= at and at + count <= block_start + len(block)):
            block_start = at
            block = await blobs.read_range(key, at, max(count, min(_BLOCK, end - at)))
        return block[at - block_start : at - block_start + count]

    spans: list[Span] = []
    position, first = pixel.value_offset, True
    # The last 8 bytes of a recorded value are the sequence delimiter ingest checked.
    while position + 8 < end:
        tag, length = struct.unpack("<II", await read(position, 8))
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED or position + 8 + length > end:
            raise CodecError("encapsulated Pixel Data has a malformed item")
        if not first and length:
            spans.append((position + 8, length))
        first = False
        position += 8 + length
    if not spans:
        raise CodecError("encapsulated Pixel Data holds no stream")
    head = b""
    for offset, length in spans:
        head += await read(offset, min(length, _HEAD - len(head)))
        if len(head) >= _HEAD:
            break
    return spans, head


async def _without_pad_byte(
    blobs: BlobStore, blob_key: str, spans: list[Span], container: Container
) -> list[Span]:
    """The spans less the pad byte an odd-length stream got (PS3.5 A.4), where the
    container tells: transport streams are 188-byte packets, MP4 a sequence of boxes.
    Elementary and program streams keep it: trailing zero bytes are valid in them."""
    total = sum(n for _, n in spans)
    if total % 2 or not total:
        return spans
    if container == "ts":
        padded = total % _TS_PACKET == 1
    elif container == "mp4":
        padded = await _mp4_length(blobs, blob_key, spans, total) == total - 1
    else:
        padded = False
    if not padded:
        return spans
    offset, length = spans[-1]
    return [*spans[:-1], (offset, length - 1)] if length > 1 else spans[:-1]


async def _mp4_length(blobs: BlobStore, blob_key: str, spans: list[Span], total: int) -> int | None:
    """Where the last top-level box of an MP4 ends (ISO 14496-12 4.2), or None when that
    takes more than `_MP4_BOXES` boxes or a box runs to the end."""
    position = 0
    for _ in range(_MP4_BOXES):
        if position + 8 > total:
            return position
        count = min(16, total - position)
        header = b"".join([c async for c in iter_spans(blobs, blob_key, spans, position, count)])
        size = struct.unpack(">I", header[:4])[0]
        if size == 1 and len(header) == 16:
            size = struct.unpack(">Q", header[8:16])[0]
        if size < 8:
            return None
        position += size
    return None


async def iter_spans(
    blobs: BlobStore, blob_key: str, spans: Sequence[Span], start: int, count: int
) -> AsyncIterator[bytes]:
    """`count` bytes from `start` of the spans joined, as ranged reads of the object."""
    end, position = start + count, 0
    for offset, length in spans:
        low, high = max(start, position), min(end, position + length)
        if low < high:
            async for chunk in blobs.iter_get(blob_key, offset + low - position, high - low):
                yield chunk
        position += length
        if position >= end:
            return
