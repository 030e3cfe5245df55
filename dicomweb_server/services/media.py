"""Video and encapsulated documents as single bodies (PS3.18 8.7.3.3.2, 8.7.4, 10.4.1.1.3).

A video instance's Pixel Data (MPEG-2, H.264, HEVC: codecs/video.py) is one stream in one or
more fragments; an Encapsulated Document's value (0042,0011) is one file. Each is served as
one body whose media type, length and entity tag are known before the first byte, so
Content-Length and byte ranges (RFC 9110 14) work: browsers need both to play video.

- As stored: the stream's spans in the stored object (services/video_streams.py),
  remembered per stored object; ranged reads.
- Remuxed into MP4 (an H.264 or HEVC elementary, transport or program stream asked for as
  `video/mp4`): once however many ask at once (SingleFlight), in the codec pool, into the
  derived-data cache, behind a 16-byte header that records its length; then served by ranged
  reads of the cache. Without a cache, or when writing it fails, each request remuxes into a
  private temporary file that goes when its body does.
- A document: the value's span less its pad byte (`EncapsulatedDocument.content_length`), or
  its inline bytes.
- Video frames for rendered images and thumbnails are decoded by PyAV from the start of the
  stream: a local stored file is read in place; otherwise the stream is spooled to a
  temporary file (for the first frame only its first `_FIRST_FRAME_BYTES`, then all of it).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import struct
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO, cast

import orjson

from dicomweb_server.codecs.media_types import OCTET_STREAM
from dicomweb_server.codecs.registry import CodecError
from dicomweb_server.codecs.video import (
    Container,
    FragmentReader,
    Mp4Result,
    VideoOffer,
    decode_frames,
    remux_to_mp4,
    video_codec,
    video_offers,
)
from dicomweb_server.domain.blob_keys import video_cache_key
from dicomweb_server.domain.documents import (
    DOCUMENT_CLASSES,
    document_media_types,
    encapsulated_document,
    video_timing,
)
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.errors import NotAcceptableError, NotFoundError
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.codec_pool import CodecPool
from dicomweb_server.services.derived_cache import DerivedCache
from dicomweb_server.services.single_flight import SingleFlight
from dicomweb_server.services.video_streams import (
    Span,
    VideoStream,
    iter_spans,
    read_video_stream,
)
from dicomweb_server.storage.base import BlobStore, local_region

__all__ = ["MediaBody", "MediaService", "choose_media"]

_VERSION = "m1"  # part of entity tags and cache keys: bump when served bytes change
_STREAM_MEMO = 1024  # stored objects whose fragment spans are remembered
_FIRST_FRAME_BYTES = 8 << 20  # spooled to decode a first frame before spooling everything
_CHUNK = 1 << 20  # bytes per read of a temporary file
_CACHE_HEADER = struct.Struct("<8sQ")  # magic, length of the MP4 that follows
_CACHE_MAGIC = b"dwmp4v1\x00"
_RENDERED_EXCLUDED = frozenset({"video/mpeg2"})  # the bulk data name (Table 8.7.3-5) only


def choose_media(offered: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first offered media type the first possible `wanted` entry (a type, `type/*` or
    `*/*`, in the client's order) accepts; media types compare without case."""
    for pattern in wanted:
        pattern = pattern.lower()
        for media in offered:
            lowered = media.lower()
            if pattern in ("*/*", lowered):
                return media
            if pattern.endswith("/*") and lowered.startswith(pattern[:-1]):
                return media
    return None


class MediaBody:
    """A single body: media type, length and entity tag known before the first byte."""

    def __init__(
        self,
        media_type: str,
        length: int,
        etag: str,
        read: Callable[[int, int], AsyncIterator[bytes]],
        transfer_syntax_uid: str | None = None,
    ) -> None:
        self.media_type = media_type
        self.length = length
        self.etag = etag
        self.transfer_syntax_uid = transfer_syntax_uid  # video: the stored syntax
        self._read = read

    async def iter_bytes(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """`length` bytes from `start` (default: to the end), streamed; the body (and a
        temporary file behind it) lives at least as long as this iteration."""
        count = self.length - start if length is None else length
        async for chunk in self._read(start, count):
            yield chunk


@dataclass(slots=True)
class MediaService:
    """Opens video and document bodies; NotAcceptableError names what can be served."""

    index: InstanceIndex
    blobs: BlobStore
    codecs: CodecPool
    cache: DerivedCache | None = None  # None: remuxed video is not kept
    _inflight: SingleFlight = field(default_factory=SingleFlight, init=False)
    _streams: OrderedDict[str, VideoStream] = field(default_factory=OrderedDict, init=False)

    # -- what an instance is ---------------------------------------------------------------

    @staticmethod
    def is_video(instance: StoredInstance) -> bool:
        """Encapsulated Pixel Data in a video transfer syntax."""
        pixel = instance.pixel
        return (
            pixel is not None
            and pixel.encapsulated
            and video_codec(instance.transfer_syntax_uid) is not None
        )

    @staticmethod
    def is_document(instance: StoredInstance) -> bool:
        """An Encapsulated Document (PDF, CDA, STL, OBJ, MTL) storage instance."""
        return instance.number_of_frames == 0 and instance.sop_class_uid in DOCUMENT_CLASSES

    # -- video -----------------------------------------------------------------------------

    async def video_offers(
        self, instance: StoredInstance, *, rendered: bool
    ) -> tuple[VideoOffer, ...]:
        """What the stored stream can be served as, in our order of preference."""
        stream = await self._stream(instance)
        offers = video_offers(instance.transfer_syntax_uid, stream.container)
        if rendered:
            offers = tuple(o for o in offers if o.media_type not in _RENDERED_EXCLUDED)
        return offers

    async def open_video(
        self, instance: StoredInstance, wanted: Sequence[str], *, rendered: bool = False
    ) -> MediaBody:
        """The video as the first offer `wanted` accepts: the stored bytes, or remuxed."""
        stream = await self._stream(instance)
        offers = await self.video_offers(instance, rendered=rendered)
        chosen = choose_media([o.media_type for o in offers], wanted)
        if chosen is None:
            named = ", ".join(o.media_type for o in offers) or "nothing (not remuxable here)"
            raise NotAcceptableError(
                f"this video (stored as {instance.transfer_syntax_uid} in a {stream.container}"
                f" stream) is served as {named}; not as {', '.join(wanted[:4]) or 'that'}"
            )
        offer = next(o for o in offers if o.media_type == chosen)
        syntax = instance.transfer_syntax_uid
        if not offer.remux:
            etag = _etag(instance.blob_key, chosen)
            blob_key, spans = instance.blob_key, stream.spans
            return MediaBody(
                chosen,
                stream.length,
                etag,
                lambda start, count: iter_spans(self.blobs, blob_key, spans, start, count),
                syntax,
            )
        return await self._remuxed(instance, stream)

    async def video_frames(self, instance: StoredInstance, numbers: Sequence[int]) -> list[Any]:
        """Frames of a video as RGB arrays, decoded from the start (CodecError if not)."""
        stream = await self._stream(instance)
        local = local_region(self.blobs, instance.blob_key, 0, instance.size) is not None
        if not local and max(numbers) == 1 and stream.length > _FIRST_FRAME_BYTES:
            try:
                return await self._decode(instance, stream, numbers, _FIRST_FRAME_BYTES)
            except CodecError:
                pass  # the first frame needs more than the prefix: decode from everything
        return await self._decode(instance, stream, numbers, None)

    async def _decode(
        self,
        instance: StoredInstance,
        stream: VideoStream,
        numbers: Sequence[int],
        limit: int | None,
    ) -> list[Any]:
        async with self._source(instance, stream, limit) as (path, spans):
            frames: list[Any] = await self.codecs.run(
                _decode_file,
                path,
                spans,
                instance.transfer_syntax_uid,
                stream.container,
                list(numbers),
                self.codecs.max_decoded_bytes,
            )
            return frames

    async def _stream(self, instance: StoredInstance) -> VideoStream:
        """The stored stream's layout: remembered per stored object (objects never change)."""
        found = self._streams.get(instance.blob_key)
        if found is not None:
            self._streams.move_to_end(instance.blob_key)
            return found
        if not self.is_video(instance):
            raise NotFoundError(f"instance {instance.key.sop_instance_uid} holds no video")
        try:
            stream = await read_video_stream(self.blobs, instance)
        except CodecError as exc:
            raise NotAcceptableError(f"the stored video cannot be read: {exc}") from exc
        self._streams[instance.blob_key] = stream
        while len(self._streams) > _STREAM_MEMO:
            self._streams.popitem(last=False)
        return stream

    @asynccontextmanager
    async def _source(
        self, instance: StoredInstance, stream: VideoStream, limit: int | None = None
    ) -> AsyncIterator[tuple[str, tuple[Span, ...]]]:
        """A local file and the spans of the stream in it: the stored object itself when the
        store keeps files, else a temporary copy of the stream (its first `limit` bytes)."""
        region = local_region(self.blobs, instance.blob_key, 0, instance.size)
        if region is not None:
            yield region.path, stream.spans
            return
        size = stream.length if limit is None else min(limit, stream.length)
        path = await asyncio.to_thread(_temporary, ".video")
        try:
            with open(path, "wb") as out:  # noqa: ASYNC230 - writes go to a thread below
                async for chunk in iter_spans(self.blobs, instance.blob_key, stream.spans, 0, size):
                    await asyncio.to_thread(out.write, chunk)
            yield path, ((0, size),)
        finally:
            await asyncio.to_thread(_unlink, path)

    async def _remuxed(self, instance: StoredInstance, stream: VideoStream) -> MediaBody:
        """The MP4: from the cache, remuxed into it once however many ask, or privately."""
        etag = _etag(instance.blob_key, "video/mp4", _remux_token())
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        if cache is not None:
            key = video_cache_key(instance.key, instance.digest, _remux_token())
            body = await _cached_body(cache, key, etag, instance.transfer_syntax_uid)
            if body is None:
                stored, _ = await self._inflight.run(
                    key, lambda: self._remux_into_cache(instance, stream, cache, key)
                )
                if stored:
                    body = await _cached_body(cache, key, etag, instance.transfer_syntax_uid)
            if body is not None:
                return body
        path = await self._remux_to_file(instance, stream)
        size = await asyncio.to_thread(os.path.getsize, path)
        body = MediaBody(
            "video/mp4",
            size,
            etag,
            lambda start, count: _iter_file(path, start, count),
            instance.transfer_syntax_uid,
        )
        weakref.finalize(body, _unlink, path)
        return body

    async def _remux_into_cache(
        self, instance: StoredInstance, stream: VideoStream, cache: DerivedCache, key: str
    ) -> bool:
        path = await self._remux_to_file(instance, stream)
        try:
            size = await asyncio.to_thread(os.path.getsize, path)
            header = _CACHE_HEADER.pack(_CACHE_MAGIC, size)
            return await cache.put_stream(key, _iter_file(path, 0, size, header))
        finally:
            await asyncio.to_thread(_unlink, path)

    async def _remux_to_file(self, instance: StoredInstance, stream: VideoStream) -> str:
        """Remux into a new temporary file (the caller removes it); 406 when it cannot be."""
        metadata = await self.index.get_metadata(instance.key)
        model = orjson.loads(metadata) if metadata is not None else None
        rate = video_timing(model).frame_rate if isinstance(model, dict) else None
        path = await asyncio.to_thread(_temporary, ".mp4")
        try:
            async with self._source(instance, stream) as (source, spans):
                await self.codecs.run(
                    _remux_file,
                    source,
                    spans,
                    path,
                    instance.transfer_syntax_uid,
                    stream.container,
                    rate,
                )
        except CodecError as exc:
            await asyncio.to_thread(_unlink, path)
            raise NotAcceptableError(
                f"the stored video cannot be served as video/mp4: {exc}"
            ) from exc
        except BaseException:
            await asyncio.to_thread(_unlink, path)
            raise
        return path

    # -- documents -------------------------------------------------------------------------

    async def open_document(
        self, instance: StoredInstance, wanted: Sequence[str], *, rendered: bool = False
    ) -> MediaBody:
        """The encapsulated document in its own media type (or, as bulk data, octet-stream)."""
        metadata = await self.index.get_metadata(instance.key)
        model = orjson.loads(metadata) if metadata is not None else None
        document = encapsulated_document(model) if isinstance(model, dict) else None
        if document is None:
            raise NotFoundError(f"instance {instance.key.sop_instance_uid} holds no document")
        offers = document_media_types(document.mime_type)
        if not rendered:
            offers += (OCTET_STREAM,)
        chosen = choose_media(offers, wanted)
        if chosen is None:
            raise NotAcceptableError(
                f"this document is served as {', '.join(offers) or 'nothing'};"
                f" not as {', '.join(wanted[:4]) or 'that'}"
            )
        etag = _etag(instance.blob_key, chosen)
        content = document.content()
        if content is not None:
            inline = content
            return MediaBody(
                chosen, len(inline), etag, lambda start, count: _one(inline[start : start + count])
            )
        assert document.bulk_path is not None
        span = await self.index.get_bulk_span(instance.key, document.bulk_path)
        if span is None:
            raise NotFoundError("the document's bulk data was not recorded")
        offset, stored = span
        blob_key = instance.blob_key
        return MediaBody(
            chosen,
            document.content_length(stored),
            etag,
            lambda start, count: self.blobs.iter_get(blob_key, offset + start, count),
        )


async def _cached_body(cache: DerivedCache, key: str, etag: str, syntax: str) -> MediaBody | None:
    """The cached MP4 behind its header, or None when it is not there (or not ours)."""
    header = await cache.read(key, 0, _CACHE_HEADER.size)
    if header is None:
        return None
    magic, size = _CACHE_HEADER.unpack(header)
    if magic != _CACHE_MAGIC:
        return None
    skip = _CACHE_HEADER.size
    return MediaBody(
        "video/mp4",
        size,
        etag,
        lambda start, count: cache.iter_range(key, skip + start, count),
        syntax,
    )


def _etag(blob_key: str, media_type: str, token: str = "") -> str:
    """A strong entity tag: the same stored object served as the same media type."""
    text = f"{_VERSION}|{blob_key}|{media_type}|{token}"
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


@functools.cache
def _remux_token() -> str:
    """Names the remuxer (our version and ffmpeg's libavformat) in cache keys and tags."""
    try:
        import av

        version = ".".join(map(str, av.library_versions["libavformat"]))
    except (ImportError, KeyError):
        version = "none"
    return f"{_VERSION}-{version}"


def _remux_file(
    source: str,
    spans: Sequence[Span],
    out_path: str,
    syntax: str,
    container: Container,
    rate: Fraction | None,
) -> Mp4Result:
    try:
        with open(source, "rb") as fp:
            reader = cast(BinaryIO, FragmentReader(fp, spans))
            return remux_to_mp4(reader, out_path, syntax, container, rate)
    except OSError as exc:
        raise CodecError(f"the stored object cannot be read: {exc.strerror}") from exc


def _decode_file(
    source: str,
    spans: Sequence[Span],
    syntax: str,
    container: Container,
    numbers: list[int],
    max_decoded_bytes: int,
) -> list[Any]:
    try:
        with open(source, "rb") as fp:
            reader = cast(BinaryIO, FragmentReader(fp, spans))
            return decode_frames(reader, syntax, container, numbers, max_decoded_bytes)
    except OSError as exc:
        raise CodecError(f"the stored object cannot be read: {exc.strerror}") from exc


def _temporary(suffix: str) -> str:
    descriptor, path = tempfile.mkstemp(suffix=suffix, prefix="dicomweb-")
    os.close(descriptor)
    return path


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


async def _iter_file(
    path: str, start: int, count: int, header: bytes = b""
) -> AsyncIterator[bytes]:
    """`count` bytes of a local file from `start` (after `header`), read in a thread."""
    if header:
        yield header
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(handle.seek, start)
        while count > 0:
            chunk = await asyncio.to_thread(handle.read, min(_CHUNK, count))
            if not chunk:
                raise NotFoundError(f"temporary file {path} ended early")
            count -= len(chunk)
            yield chunk
    finally:
        handle.close()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
