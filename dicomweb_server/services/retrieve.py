"""Retrieve (WADO-RS): instances, metadata, frames and bulk data, transcoded on request.

Video and encapsulated documents are single bodies (services/media.py), opened from here.

Codec work runs in the shared codec pool, one frame (or one instance) per task. Frames served
as stored are ranged reads of the recorded spans; transcoded frames are kept in the derived
data cache and a transcode requested by many clients at once runs once. Study, series and
instance answers are planned before their first byte (services/bodies.py).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, TypeVar, overload

import orjson

from dicomweb_server.codecs.media_types import (
    FRAME_MEDIA_TYPES,
    OCTET_STREAM,
    canonical_media_type,
    media_type_of,
)
from dicomweb_server.codecs.registry import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    CodecError,
    FrameInfo,
    can_decode,
)
from dicomweb_server.codecs.transcode import (
    encode_frame,
    pixels_from_file,
    transcode_frame,
)
from dicomweb_server.domain.blob_keys import frame_cache_key
from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.part10 import PIXEL_DATA
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.errors import (
    BadRequestError,
    NotAcceptableError,
    NotFoundError,
)
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.bodies import InstancesPlan
from dicomweb_server.services.codec_pool import CodecPool
from dicomweb_server.services.derived_cache import DerivedCache
from dicomweb_server.services.frame_formats import (
    RANGED_NATIVE,
    FrameFormat,
    WantedFrames,
    frame_formats,
)
from dicomweb_server.services.frame_read_ahead import KeptFrames, read_frame
from dicomweb_server.services.instance_answers import InstanceAnswers, ReadAhead, not_found
from dicomweb_server.services.media import MediaBody, MediaService
from dicomweb_server.services.metadata_documents import MetadataDocument, MetadataDocuments
from dicomweb_server.services.read_ahead import iter_read_ahead
from dicomweb_server.services.single_flight import SingleFlight
from dicomweb_server.services.streams import chain
from dicomweb_server.storage.base import BlobStore, local_region, read_if_cached

__all__ = [
    "FRAME_MEDIA_TYPES",
    "NATIVE_SYNTAXES",
    "OCTET_STREAM_MEDIA_TYPE",
    "FrameFormat",
    "MediaBody",
    "ReadAhead",
    "RetrieveService",
    "WantedFrames",
    "canonical_media_type",
    "media_type_of",
]

log = logging.getLogger("dicomweb_server.retrieve")
OCTET_STREAM_MEDIA_TYPE = OCTET_STREAM
_SPOOL_MEMORY = 8 << 20  # a stored object above this spools to disk
_OBJECT_BATCH = 16  # frames decoded per pass when the whole object must be parsed
# Chunk size of a stored object streamed rather than read whole: fewer reads, fewer sends.
_STREAM_CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(slots=True)
class RetrieveService:
    """WADO-RS reads; every method raises NotFoundError for what does not exist."""

    index: InstanceIndex
    blobs: BlobStore
    codecs: CodecPool
    frame_cache: DerivedCache | None = None  # None: transcoded frames, remuxed video not kept
    read_ahead: ReadAhead = field(default_factory=ReadAhead)
    # Stored frames kept in memory when the store is remote (S3); a local folder has the page
    # cache. Objects never change under their keys (the key holds the content's digest), so
    # an entry is never stale, and a deleted instance's frames are unreachable (no row).
    frame_memory_bytes: int = 0
    # Of those, bytes past a frame that a frames request streams in (services/frame_read_ahead)
    frame_read_ahead_bytes: int = 0
    # Study and series metadata documents kept in memory per process, by content
    metadata_memory_bytes: int = 0
    _inflight: SingleFlight = field(default_factory=SingleFlight, init=False)
    _answers: InstanceAnswers = field(init=False)
    _media: MediaService = field(init=False)
    _frames_kept: KeptFrames | None = field(default=None, init=False)
    _documents: MetadataDocuments = field(init=False)

    def __post_init__(self) -> None:
        self._answers = InstanceAnswers(self.index, self.blobs, self.codecs, self.read_ahead)
        self._media = MediaService(self.index, self.blobs, self.codecs, self.frame_cache)
        self._documents = MetadataDocuments(self.index, self.metadata_memory_bytes)
        if self.frame_memory_bytes > 0:
            self._frames_kept = KeptFrames(
                self.blobs, self.frame_memory_bytes, self.frame_read_ahead_bytes
            )

    async def aclose(self) -> None:
        """Stop background reads (frames read ahead)."""
        if self._frames_kept is not None:
            await self._frames_kept.aclose()

    # -- instances -------------------------------------------------------------------------

    async def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        """Instances of a study or series; NotFoundError before the first byte if none."""
        iterator = aiter(self.index.iter_instances(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(not_found(study, series_instance_uid))
        return chain(first, iterator)

    async def get_instance(self, key: InstanceKey) -> StoredInstance:
        """One instance, or NotFoundError."""
        found = await self.index.get_instance(key)
        if found is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return found

    def iter_object(self, instance: StoredInstance) -> AsyncIterator[bytes]:
        """The stored Part 10 bytes, streamed."""
        return self._answers.iter_object(instance)

    async def spool_object(self, instance: StoredInstance) -> IO[bytes]:
        """The stored object in a spooled temporary file (memory, then disk), for decoders
        that need the whole file; the caller closes it."""
        spool = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - caller closes
        try:
            async for chunk in self.iter_object(instance):
                await asyncio.to_thread(spool.write, chunk)
        except BaseException:
            spool.close()
            raise
        return spool

    async def plan_instances(
        self,
        study: StudyKey,
        series_instance_uid: str | None,
        wanted: Sequence[str | None],
        *,
        regions: bool,
    ) -> InstancesPlan:
        """A study or series answer, every instance decided before the first byte."""
        return await self._answers.plan_instances(
            study, series_instance_uid, wanted, regions=regions
        )

    async def plan_instance(
        self, key: InstanceKey, wanted: Sequence[str | None], *, regions: bool
    ) -> InstancesPlan:
        """One instance's answer, decided before the first byte."""
        instance = await self.get_instance(key)
        return await self._answers.plan_instance(instance, wanted, regions=regions)

    # -- metadata --------------------------------------------------------------------------

    async def study_metadata(
        self, study: StudyKey, series_instance_uid: str | None, root_url: str
    ) -> MetadataDocument | AsyncIterator[bytes]:
        """A study's (or series') metadata: a JSON array of the stored instance metadata, never
        re-parsed DICOM; one document kept by content when small, streamed when large."""
        return await self._documents.answer(study, series_instance_uid, root_url)

    async def get_metadata(self, key: InstanceKey) -> bytes:
        """One instance's stored DICOM JSON (BulkDataURIs relative), or NotFoundError."""
        metadata = await self.index.get_metadata(key)
        if metadata is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return metadata

    async def instance_metadata(self, key: InstanceKey, root_url: str) -> bytes:
        """One instance's metadata as a JSON array of one object."""
        metadata = await self.index.get_metadata(key)
        if metadata is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return b"[" + absolute_bulk_uris(metadata, root_url) + b"]"

    # -- frames ----------------------------------------------------------------------------

    async def retrieve_frames(
        self, instance: StoredInstance, numbers: list[int], wanted: Sequence[WantedFrames]
    ) -> tuple[FrameFormat, AsyncGenerator[bytes | memoryview, None]]:
        """Frames in the first acceptable representation we can produce (PS3.18 10.4.1.1.4),
        streamed: the first is produced before this returns (a representation that fails on
        it is skipped), the next ones are read or transcoded ahead within ReadAhead bounds."""
        self._check_frames(instance, numbers)
        known: list[FrameInfo | None] = []

        async def frame_info() -> FrameInfo | None:
            # Only decoding needs the Image Pixel attributes: a ranged copy skips this query.
            if not known:
                known.append(await self._frame_info(instance))
            return known[0]

        reasons: list[str] = []
        for item in wanted:
            for fmt in frame_formats(item, instance.transfer_syntax_uid, reasons):
                producer = await self._frame_producer(instance, frame_info, numbers, fmt)
                try:
                    first = await producer.frame(numbers[0])
                except CodecError as exc:
                    producer.close()
                    reasons.append(f"{fmt.media_type} {fmt.transfer_syntax}: {exc}")
                    continue
                return fmt, self._iter_frames(producer, numbers, first)
        raise NotAcceptableError(
            f"frames stored as {instance.transfer_syntax_uid} cannot be served in any accepted"
            " representation: " + "; ".join(reasons[:4])
        )

    async def _iter_frames(
        self, producer: _Frames, numbers: list[int], first: bytes | memoryview
    ) -> AsyncGenerator[bytes | memoryview, None]:
        try:
            yield first

            async def numbered() -> AsyncIterator[int]:
                for number in numbers[1:]:
                    yield number

            ahead = iter_read_ahead(
                numbered(),
                producer.frame,
                lambda _: len(first),  # frames of one instance are about the same size
                max_items=self.read_ahead.objects,
                max_bytes=self.read_ahead.bytes,
            )
            try:
                async for _, data in ahead:
                    yield data
            finally:
                await ahead.aclose()
        finally:
            producer.close()

    @staticmethod
    def _check_frames(instance: StoredInstance, numbers: list[int]) -> None:
        if instance.number_of_frames == 0:
            raise NotFoundError(f"instance {instance.key.sop_instance_uid} has no pixel data")
        for n in numbers:
            if n < 1:
                raise BadRequestError(f"frame number {n} is invalid: frames are numbered from 1")
            if n > instance.number_of_frames:
                raise NotFoundError(
                    f"frame {n} does not exist: the instance has {instance.number_of_frames}"
                )

    async def _frame_info(self, instance: StoredInstance) -> FrameInfo | None:
        metadata = await self.index.get_metadata(instance.key)
        if metadata is None:
            return None
        model = orjson.loads(metadata)
        return FrameInfo.from_json(model) if isinstance(model, dict) else None

    async def _frame_producer(
        self,
        instance: StoredInstance,
        frame_info: Callable[[], Awaitable[FrameInfo | None]],
        numbers: list[int],
        fmt: FrameFormat,
    ) -> _Frames:
        """How frames of `instance` become `fmt`: ranged reads, frame transcodes, or a decode
        of the whole object (deflated, big endian, fragments not mapped to frames)."""
        pixel = instance.pixel
        spans = pixel.frames if pixel is not None else ()
        stored = instance.transfer_syntax_uid
        native_copy = fmt.transfer_syntax in NATIVE_SYNTAXES and stored in RANGED_NATIVE
        if fmt.as_stored or (native_copy and spans):
            if not spans:
                return _Failing("the stored frames could not be mapped to byte ranges")
            return _Frames(lambda n: self._read_span(instance, n, view=True, ahead=True))
        info = await frame_info()
        if info is None:
            return _Failing("the instance has no Image Pixel attributes")
        if not spans or stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN or not can_decode(stored):
            # pydicom reads what no frame codec does (deflated, big endian, odd fragments)
            return _ObjectFrames(self, instance, info, numbers, fmt.transfer_syntax)
        return _Frames(lambda n: self._transcoded_frame(instance, info, n, fmt.transfer_syntax))

    async def read_stored_frame(self, instance: StoredInstance, number: int) -> bytes | None:
        """One frame as stored (fragments joined), or None when its bytes were not mapped
        at ingest; for callers that decode frames themselves (rendering)."""
        self._check_frames(instance, [number])
        if instance.pixel is None or not instance.pixel.frames:
            return None
        return await self._read_span(instance, number)

    @overload
    async def _read_span(
        self,
        instance: StoredInstance,
        number: int,
        *,
        view: Literal[False] = False,
        ahead: bool = False,
    ) -> bytes: ...

    @overload
    async def _read_span(
        self, instance: StoredInstance, number: int, *, view: bool, ahead: bool = False
    ) -> bytes | memoryview: ...

    async def _read_span(
        self, instance: StoredInstance, number: int, *, view: bool = False, ahead: bool = False
    ) -> bytes | memoryview:
        """One stored frame's bytes (fragments joined). With `view`, a frame of a local file
        that is all in the page cache is read on the event loop, with no thread hop
        (`read_if_cached`), into a view: for answers that only send it. With `ahead` (a
        frames request), a remote object's next frames are streamed in behind it."""
        assert instance.pixel is not None
        kept = self._frames_kept
        if kept is not None and local_region(self.blobs, instance.blob_key, 0, 0) is None:
            return await kept.read(instance.blob_key, instance.pixel.frames, number, ahead=ahead)
        frame = instance.pixel.frames[number - 1]
        if view and len(frame.fragments) == 1:  # None unless a local file, all in memory
            cached = read_if_cached(self.blobs, instance.blob_key, *frame.fragments[0])
            if cached is not None:
                return cached
        return await read_frame(self.blobs, instance.blob_key, frame)

    async def _transcoded_frame(
        self, instance: StoredInstance, info: FrameInfo, number: int, target: str
    ) -> bytes:
        """One frame in `target`: from the cache, or transcoded once however many ask."""
        key = frame_cache_key(instance.key, instance.digest, number, target)
        cache = self.frame_cache
        if cache is not None:
            cached = await cache.get(key)
            if cached is not None:
                return cached

        async def transcode() -> bytes:
            source = await self._read_span(instance, number, ahead=True)
            encoded = await self.codecs.run(
                transcode_frame,
                source,
                instance.transfer_syntax_uid,
                target,
                info,
                self.codecs.max_decoded_bytes,
                kind="transcode",
            )
            return encoded.data

        data, produced = await self._inflight.run(key, transcode)
        if produced and cache is not None:
            cache.put_later(key, data)
        return data

    # -- video and documents ---------------------------------------------------------------

    def is_video(self, instance: StoredInstance) -> bool:
        """Pixel Data in a video syntax: bulk data and rendered are one video body."""
        return self._media.is_video(instance)

    def is_document(self, instance: StoredInstance) -> bool:
        """An Encapsulated Document: rendered is the document itself."""
        return self._media.is_document(instance)

    async def video_media_types(self, instance: StoredInstance, *, rendered: bool) -> list[str]:
        """The media types the stored video can be served as, our preference first."""
        offers = await self._media.video_offers(instance, rendered=rendered)
        return [offer.media_type for offer in offers]

    async def open_video(
        self, instance: StoredInstance, accepted: Sequence[str], *, rendered: bool = False
    ) -> MediaBody:
        """The video as the first acceptable media type (`type`, `type/*`, `*/*`, in the
        client's order): the stored bytes, or remuxed into MP4 (cached); else 406."""
        return await self._media.open_video(instance, accepted, rendered=rendered)

    async def open_document(
        self, instance: StoredInstance, accepted: Sequence[str], *, rendered: bool = False
    ) -> MediaBody:
        """The encapsulated document, pad byte removed, in its own media type; else 406."""
        return await self._media.open_document(instance, accepted, rendered=rendered)

    async def video_frames(self, instance: StoredInstance, numbers: Sequence[int]) -> list[Any]:
        """Frames of a video as RGB arrays, for rendering (CodecError when they cannot be)."""
        return await self._media.video_frames(instance, numbers)

    # -- bulk data -------------------------------------------------------------------------

    async def read_bulk(self, key: InstanceKey, path: str) -> tuple[StoredInstance, list[bytes]]:
        """A bulk data value: one span, or the frames of encapsulated Pixel Data as stored."""
        instance = await self.get_instance(key)
        if path == f"{PIXEL_DATA:08X}":
            pixel = instance.pixel
            if pixel is None:
                raise NotFoundError("the instance has no pixel data")
            if not pixel.encapsulated:
                return instance, [
                    await self.blobs.read_range(
                        instance.blob_key, pixel.value_offset, pixel.value_length
                    )
                ]
            if pixel.frames:
                numbers = range(1, len(pixel.frames) + 1)
                return instance, [await self._read_span(instance, n) for n in numbers]
            raise NotAcceptableError("this Pixel Data's fragments cannot be mapped to frames")
        span = await self.index.get_bulk_span(key, path)
        if span is None:
            raise NotFoundError(f"no bulk data at {path[:80]!r} for this instance")
        return instance, [await self.blobs.read_range(instance.blob_key, *span)]

    async def bulk_span(self, key: InstanceKey, path: str) -> tuple[StoredInstance, int, int]:
        """(instance, offset, length) of a single-valued bulk data value, for Range requests."""
        instance = await self.get_instance(key)
        if path == f"{PIXEL_DATA:08X}":
            pixel = instance.pixel
            if pixel is None:
                raise NotFoundError("the instance has no pixel data")
            if pixel.encapsulated:
                raise NotAcceptableError(
                    "byte ranges of encapsulated Pixel Data are not served: ask for its frames"
                )
            return instance, pixel.value_offset, pixel.value_length
        span = await self.index.get_bulk_span(key, path)
        if span is None:
            raise NotFoundError(f"no bulk data at {path[:80]!r} for this instance")
        return instance, span[0], span[1]

    def iter_range(self, instance: StoredInstance, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes of the stored object from `start`, streamed."""
        return self.blobs.iter_get(instance.blob_key, start, length)


class _Frames:
    """Produces one frame's bytes by number; `close` releases what it holds."""

    def __init__(self, produce: Callable[[int], Awaitable[bytes | memoryview]]) -> None:
        self._produce = produce

    async def frame(self, number: int) -> bytes | memoryview:
        return await self._produce(number)

    def close(self) -> None:
        return None


class _Failing(_Frames):
    """A representation that cannot be produced for this instance."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def frame(self, number: int) -> bytes:
        raise CodecError(self._reason)


class _ObjectFrames(_Frames):
    """Frames decoded from the whole stored object by pydicom, `_OBJECT_BATCH` requested
    frames per decode: the object is spooled once, at most one batch is held."""

    def __init__(
        self,
        service: RetrieveService,
        instance: StoredInstance,
        info: FrameInfo,
        numbers: list[int],
        target: str,
    ) -> None:
        self._service = service
        self._instance = instance
        self._info = info
        self._numbers = numbers
        self._target = target
        self._spool: IO[bytes] | None = None
        self._batch: dict[int, bytes] = {}

    async def frame(self, number: int) -> bytes:
        found = self._batch.get(number)
        if found is not None:
            return found
        service = self._service
        if self._spool is None:
            self._spool = await service.spool_object(self._instance)
        start = self._numbers.index(number)
        batch = self._numbers[start : start + _OBJECT_BATCH]
        spool, info, target = self._spool, self._info, self._target
        limit = service.codecs.max_decoded_bytes

        def work() -> dict[int, bytes]:
            decoded = pixels_from_file(spool, batch, limit)  # type: ignore[arg-type]
            encoded = (encode_frame(pixels, target, info).data for pixels in decoded)
            return dict(zip(batch, encoded, strict=True))

        self._batch = await service.codecs.run(work, kind="transcode")
        return self._batch[number]

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._batch = {}
