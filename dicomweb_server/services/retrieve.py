"""Retrieve (WADO-RS): instances, metadata, frames and bulk data, transcoded on request.

Codec work runs in a thread pool sized to the cores, one frame (or one instance) per task.
Frames served as stored are ranged reads of the recorded spans; transcoded frames are cached
in the blob store and a transcode requested by many clients at once runs once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

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
    transcode_instance,
)
from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.part10 import PIXEL_DATA
from dicomweb_server.errors import (
    BadRequestError,
    DicomwebError,
    NotAcceptableError,
    NotFoundError,
)
from dicomweb_server.index.base import InstanceIndex, StoredInstance
from dicomweb_server.services.frame_formats import (
    RANGED_NATIVE,
    FrameFormat,
    WantedFrames,
    default_syntax,
    frame_cache_key,
    frame_formats,
    why_not,
)
from dicomweb_server.services.read_ahead import iter_read_ahead
from dicomweb_server.services.single_flight import SingleFlight
from dicomweb_server.services.streams import (
    chain,
    iter_spool,
    one_chunk,
    one_view,
    opened,
)
from dicomweb_server.storage.base import BlobStore

__all__ = [
    "FRAME_MEDIA_TYPES",
    "NATIVE_SYNTAXES",
    "OCTET_STREAM_MEDIA_TYPE",
    "FrameFormat",
    "RetrieveService",
    "WantedFrames",
    "canonical_media_type",
    "media_type_of",
]

log = logging.getLogger("dicomweb_server.retrieve")
OCTET_STREAM_MEDIA_TYPE = OCTET_STREAM
_SPOOL_MEMORY = 8 << 20  # a stored or transcoded instance above this spools to disk
# Chunk size of a stored object streamed rather than read whole: fewer reads, fewer sends.
_STREAM_CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(slots=True)
class RetrieveService:
    """WADO-RS reads; every method raises NotFoundError for what does not exist."""

    index: InstanceIndex
    blobs: BlobStore
    codec_workers: int = 1  # 0: one per core (see Settings.codec_workers)
    cache_frames: bool = True
    _executor: ThreadPoolExecutor | None = field(default=None, init=False)
    _inflight: SingleFlight = field(default_factory=SingleFlight, init=False)

    # -- instances -------------------------------------------------------------------------

    async def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        """Instances of a study or series; NotFoundError before the first byte if none."""
        iterator = aiter(self.index.iter_instances(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(_not_found(study, series_instance_uid))
        return chain(first, iterator)

    async def get_instance(self, key: InstanceKey) -> StoredInstance:
        """One instance, or NotFoundError."""
        found = await self.index.get_instance(key)
        if found is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return found

    def iter_object(self, instance: StoredInstance) -> AsyncIterator[bytes]:
        """The stored Part 10 bytes, streamed."""
        return self.blobs.iter_get(instance.blob_key, chunk_size=_STREAM_CHUNK)

    def serves_as_stored(self, instance: StoredInstance, wanted: Sequence[str | None]) -> bool:
        """True when `open_instance` would send the stored bytes (its size is known ahead)."""
        stored = instance.transfer_syntax_uid
        for syntax in wanted:
            target = default_syntax(stored) if syntax is None else syntax
            if target in ("*", stored):
                return True
            if why_not(stored, target) is None:
                return False  # transcoded (or refused: then no size matters)
        return False

    def iter_opened_instances(
        self,
        instances: AsyncIterator[StoredInstance],
        wanted: Sequence[str | None],
        *,
        read_ahead_objects: int,
        read_ahead_bytes: int,
    ) -> AsyncGenerator[tuple[StoredInstance, tuple[str, AsyncIterator[bytes]]]]:
        """Each instance opened as by `open_instance`, in order, the next ones fetched while
        the current one is sent (at most `read_ahead_objects` objects and `read_ahead_bytes`).

        An object served as stored that fits in `read_ahead_bytes` is read whole, in one ranged
        read; a larger one is opened ahead and streamed; a transcode runs at its turn, alone.
        """

        def whole(instance: StoredInstance) -> bool:
            return instance.size <= read_ahead_bytes and self.serves_as_stored(instance, wanted)

        def cost(instance: StoredInstance) -> int:
            if whole(instance):
                return instance.size
            if self.serves_as_stored(instance, wanted):
                return _STREAM_CHUNK  # its first chunk, read when opened
            return read_ahead_bytes  # a transcode spools the object: let it run alone

        async def fetch(instance: StoredInstance) -> tuple[str, AsyncIterator[bytes]]:
            if whole(instance):
                data = await self.blobs.read_sendable(instance.blob_key, 0, instance.size)
                return instance.transfer_syntax_uid, one_view(data)
            return await self.open_instance(instance, wanted)

        return iter_read_ahead(
            instances, fetch, cost, max_items=read_ahead_objects, max_bytes=read_ahead_bytes
        )

    async def open_instance(
        self, instance: StoredInstance, wanted: Sequence[str | None]
    ) -> tuple[str, AsyncIterator[bytes]]:
        """The instance in the first acceptable syntax we can produce: (syntax, bytes).

        `wanted` items are UIDs, "*" (as stored) or None (PS3.18 8.7.3.4 default: explicit VR
        little endian, unless the stored data is lossy-compressed: then as stored).
        """
        stored = instance.transfer_syntax_uid
        reasons: list[str] = []
        for syntax in wanted:
            target = default_syntax(stored) if syntax is None else syntax
            if target in ("*", stored):
                # Read the first chunk now: a store that is down is a 503, not a cut-off 200.
                return stored, await opened(self.iter_object(instance))
            reason = why_not(stored, target)
            if reason is None:
                try:
                    written, spool = await self._transcode_instance(instance, target)
                except CodecError as exc:
                    reason = str(exc)
                else:
                    return written, iter_spool(spool)
            reasons.append(f"{target}: {reason}")
        raise NotAcceptableError(
            f"instance {instance.key.sop_instance_uid} (stored as {stored}) cannot be served"
            " in any accepted transfer syntax: " + "; ".join(reasons[:4])
        )

    async def _transcode_instance(
        self, instance: StoredInstance, target: str
    ) -> tuple[str, IO[bytes]]:
        source = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - closed below
        try:
            async for chunk in self.blobs.iter_get(instance.blob_key):
                await asyncio.to_thread(source.write, chunk)
            out = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - caller closes
            try:
                written = await self._run(transcode_instance, source, target, out)
            except BaseException:
                out.close()
                raise
        finally:
            source.close()
        out.seek(0)
        return written, out

    # -- metadata --------------------------------------------------------------------------

    async def iter_metadata(
        self, study: StudyKey, series_instance_uid: str | None, root_url: str
    ) -> AsyncIterator[bytes]:
        """A JSON array of stored instance metadata, streamed without re-parsing DICOM."""
        iterator = aiter(self.index.iter_metadata(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(_not_found(study, series_instance_uid))

        async def generate() -> AsyncIterator[bytes]:
            yield b"[" + absolute_bulk_uris(first, root_url)
            async for metadata in iterator:
                yield b"," + absolute_bulk_uris(metadata, root_url)
            yield b"]"

        return generate()

    async def instance_metadata(self, key: InstanceKey, root_url: str) -> bytes:
        """One instance's metadata as a JSON array of one object."""
        metadata = await self.index.get_metadata(key)
        if metadata is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return b"[" + absolute_bulk_uris(metadata, root_url) + b"]"

    # -- frames ----------------------------------------------------------------------------

    async def read_native_frames(self, instance: StoredInstance, numbers: list[int]) -> list[bytes]:
        """Frames as native little-endian pixels (PS3.18 8.7.3.5.2)."""
        _, frames = await self.retrieve_frames(
            instance, numbers, [WantedFrames(OCTET_STREAM, None)]
        )
        return frames

    async def retrieve_frames(
        self, instance: StoredInstance, numbers: list[int], wanted: Sequence[WantedFrames]
    ) -> tuple[FrameFormat, list[bytes]]:
        """Frames in the first acceptable representation we can produce (PS3.18 10.4.1.1.4)."""
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
                try:
                    return fmt, await self._produce_frames(instance, frame_info, numbers, fmt)
                except CodecError as exc:
                    reasons.append(f"{fmt.media_type} {fmt.transfer_syntax}: {exc}")
        raise NotAcceptableError(
            f"frames stored as {instance.transfer_syntax_uid} cannot be served in any accepted"
            " representation: " + "; ".join(reasons[:4])
        )

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

    async def _produce_frames(
        self,
        instance: StoredInstance,
        frame_info: Callable[[], Awaitable[FrameInfo | None]],
        numbers: list[int],
        fmt: FrameFormat,
    ) -> list[bytes]:
        pixel = instance.pixel
        spans = pixel.frames if pixel is not None else ()
        stored = instance.transfer_syntax_uid
        native_copy = fmt.transfer_syntax in NATIVE_SYNTAXES and stored in RANGED_NATIVE
        if fmt.as_stored or (native_copy and spans):
            if not spans:
                raise CodecError("the stored frames could not be mapped to byte ranges")
            return list(await asyncio.gather(*(self._read_span(instance, n) for n in numbers)))
        info = await frame_info()
        if info is None:
            raise CodecError("the instance has no Image Pixel attributes")
        if not spans or stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN or not can_decode(stored):
            # pydicom reads what no frame codec does (deflated, big endian, odd fragments)
            return await self._frames_from_object(instance, info, numbers, fmt.transfer_syntax)
        return list(
            await asyncio.gather(
                *(self._transcoded_frame(instance, info, n, fmt.transfer_syntax) for n in numbers)
            )
        )

    async def read_stored_frame(self, instance: StoredInstance, number: int) -> bytes | None:
        """One frame as stored (fragments joined), or None when its bytes were not mapped
        at ingest; for callers that decode frames themselves (rendering)."""
        self._check_frames(instance, [number])
        if instance.pixel is None or not instance.pixel.frames:
            return None
        return await self._read_span(instance, number)

    async def run_codec(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run synchronous codec work (decoding, rendering) in the shared codec pool."""
        return await self._run(function, *args)

    async def _read_span(self, instance: StoredInstance, number: int) -> bytes:
        assert instance.pixel is not None
        fragments = instance.pixel.frames[number - 1].fragments
        pieces = [await self.blobs.read_range(instance.blob_key, *span) for span in fragments]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _transcoded_frame(
        self, instance: StoredInstance, info: FrameInfo, number: int, target: str
    ) -> bytes:
        """One frame in `target`: from the cache, or transcoded once however many ask."""
        key = frame_cache_key(instance, number, target)
        if self.cache_frames:
            cached = await self._cache_get(key)
            if cached is not None:
                return cached

        async def transcode() -> bytes:
            source = await self._read_span(instance, number)
            encoded = await self._run(
                transcode_frame, source, instance.transfer_syntax_uid, target, info
            )
            return encoded.data

        data, produced = await self._inflight.run(key, transcode)
        if produced and self.cache_frames:
            await self._cache_put(key, data)
        return data

    async def _frames_from_object(
        self, instance: StoredInstance, info: FrameInfo, numbers: list[int], target: str
    ) -> list[bytes]:
        """Frames whose byte ranges were not recorded (deflated, unmappable fragments)."""
        spool = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - closed below
        try:
            async for chunk in self.blobs.iter_get(instance.blob_key):
                await asyncio.to_thread(spool.write, chunk)

            def work() -> list[bytes]:
                return [
                    encode_frame(pixels, target, info).data
                    for pixels in pixels_from_file(spool, numbers)  # type: ignore[arg-type]
                ]

            return await self._run(work)
        finally:
            spool.close()

    async def _cache_get(self, key: str) -> bytes | None:
        try:
            return b"".join([chunk async for chunk in self.blobs.iter_get(key)])
        except NotFoundError:
            return None
        except DicomwebError as exc:
            log.warning("frame cache read failed: %s", exc.reason)
            return None

    async def _cache_put(self, key: str, data: bytes) -> None:
        try:
            await self.blobs.put(key, one_chunk(data))
        except DicomwebError as exc:  # the cache is an optimisation: serve regardless
            log.warning("frame cache write failed: %s", exc.reason)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run codec work in the pool. A cancelled caller still waits for its worker: the
        buffers and spool files it handed over must outlive the native code reading them."""
        if self._executor is None:
            workers = self.codec_workers or os.cpu_count() or 1
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="codec")
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})
            raise

    def close(self) -> None:
        """Stop the codec workers (after the last request)."""
        if self._executor is not None:
            # Queued work is dropped; running work finishes before the pool's threads exit.
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

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


def _not_found(study: StudyKey, series_instance_uid: str | None) -> str:
    if series_instance_uid is None:
        return f"study {study.study_instance_uid} not found"
    return f"series {series_instance_uid} not found in study {study.study_instance_uid}"
