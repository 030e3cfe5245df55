"""Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 9.4): plan, then produce once.

A request is first planned: the instance and frames are found and an entity tag computed
from the stored object's digest and the rendering options, so a conditional request is
answered without touching pixels. Producing decodes and renders in the shared codec pool:
one pool hop per image. Results are kept in a small in-memory LRU; thumbnails are also kept
in the derived-data cache, and the same rendering asked for by many clients at once runs once.

Renderings in flight share one pixel budget per process (`PixelBudget`): one rendering may
take all of DICOMWEB_MAX_RENDER_PIXELS, and all of them together no more, from before their
frames are read until their answer is sent. Past it a rendering waits, then gets a 503.

Video frames are decoded by PyAV from the start of the stream (a thumbnail shows the first
frame: the cheapest to reach); an encapsulated document's thumbnail is a page icon naming its
kind, as no document rasteriser is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO

import orjson

from dicomweb_server.codecs.document_icon import render_document_icon
from dicomweb_server.codecs.registry import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    CodecError,
    Pixels,
)
from dicomweb_server.codecs.rendering import (
    ImageAttributes,
    RenderBudgetError,
    RenderOptions,
    RenderParameterError,
    Viewport,
    bulk_paths,
    check_render_budget,
    render,
    render_pixel_count,
    render_pixels,
)
from dicomweb_server.domain.blob_keys import rendered_cache_key
from dicomweb_server.domain.documents import DOCUMENT_CLASSES
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.errors import (
    BadRequestError,
    DicomwebError,
    NotAcceptableError,
    NotFoundError,
)
from dicomweb_server.services.codec_pool import CodecPool
from dicomweb_server.services.derived_cache import DerivedCache
from dicomweb_server.services.memory_cache import MemoryCache
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.services.single_flight import SingleFlight
from dicomweb_server.services.streams import chain, close_stream

__all__ = ["PixelBudget", "RenderBusyError", "RenderService", "RenderedImage", "Rendering"]

log = logging.getLogger("dicomweb_server.render")
_VERSION = "r1"  # part of every entity tag and cache key: bump when output pixels change
_MAX_ANIMATED_FRAMES = 256  # frames decoded into one animated GIF (all held in memory)
_REPRESENTATIVES = 4096  # series and studies whose chosen instance is remembered
_SPOOL_MEMORY = 8 << 20
_ATTRIBUTES_MEMO = 1024  # instances whose rendering attributes are kept in memory
_RETRY_AFTER_SECONDS = 5  # what a rendering refused for the budget is told to wait


class RenderBusyError(DicomwebError):
    """The renderings in flight hold the pixel budget and none finished in time (503)."""

    status = 503

    def __init__(self, reason: str, retry_after: int = _RETRY_AFTER_SECONDS) -> None:
        super().__init__(reason)
        self.retry_after = retry_after  # seconds, for Retry-After


class PixelBudget:
    """Pixels of the renderings in flight, bounded: each holds about a few bytes per pixel
    (stored frames, presented images, the encoded answer until it is sent), so without a
    bound on their sum concurrent animated GIFs grew the process by 100 MB each.

    Waiters are served in arrival order, so a large rendering is not starved by small ones.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, pixels: int) -> Callable[[], None]:
        """Take `pixels` (at most the whole budget), waiting in line until they are free (a
        caller bounds the wait by cancelling it). Returns the release, safe to call twice."""
        pixels = min(pixels, self.capacity)
        if not self._waiters and self.held + pixels <= self.capacity:
            self.held += pixels
            return self._releaser(pixels)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (pixels, granted)
        self._waiters.append(waiter)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._releaser(pixels)()  # granted just as the wait ended
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()  # the next in line may fit where this one did not
            raise
        return self._releaser(pixels)

    def _releaser(self, pixels: int) -> Callable[[], None]:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held -= pixels
                self._wake()

        return release

    def _wake(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.capacity:
            pixels, granted = self._waiters.popleft()
            if not granted.done():
                self.held += pixels
                granted.set_result(None)


@dataclass(frozen=True, slots=True)
class RenderedImage:
    """A produced image and its hold on the pixel budget: call `release` once it is sent."""

    data: bytes
    release: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Rendering:
    """One image to produce; its entity tag is known before any pixel work."""

    instance: StoredInstance
    frames: tuple[int, ...]
    options: RenderOptions
    cache_key: str
    persistent: bool  # kept in the blob store (thumbnails)

    @property
    def etag(self) -> str:
        """A strong entity tag (RFC 9110 8.8.3): same object, frames and options."""
        return '"' + hashlib.sha256(self.cache_key.encode()).hexdigest()[:32] + '"'


@dataclass(slots=True)
class RenderService:
    """Rendered images and thumbnails, composed over the retrieve service."""

    retrieve: RetrieveService
    codecs: CodecPool
    thumbnail_cache: DerivedCache | None = None  # None: thumbnails are not kept
    thumbnail_size: int = 128
    memory_cache_bytes: int = 32 << 20
    # Seconds a rendering waits for the pixel budget before its answer is a 503: renderings
    # of the whole budget take seconds each, so a few may be ahead of it in line
    budget_wait_seconds: float = 30.0
    _memory: MemoryCache = field(init=False)
    _budget: PixelBudget = field(init=False)
    _inflight: SingleFlight = field(default_factory=SingleFlight, init=False)
    _representatives: dict[tuple[str, ...], tuple[int, StoredInstance]] = field(
        default_factory=dict, init=False
    )
    _attributes_memo: OrderedDict[str, ImageAttributes] = field(
        default_factory=OrderedDict, init=False
    )

    def __post_init__(self) -> None:
        self._memory = MemoryCache(self.memory_cache_bytes)
        self._budget = PixelBudget(self.codecs.max_render_pixels)

    # -- planning --------------------------------------------------------------------------

    async def plan_instance(
        self, key: InstanceKey, options: RenderOptions, frames: list[int] | None = None
    ) -> Rendering:
        """An instance (its first frame, or all of them as an animated GIF) or given frames."""
        instance = await self.retrieve.get_instance(key)
        return self._plan(instance, options, frames, persistent=False)

    def plan_for(
        self, instance: StoredInstance, options: RenderOptions, frames: list[int] | None = None
    ) -> Rendering:
        """`plan_instance` for an instance already looked up."""
        return self._plan(instance, options, frames, persistent=False)

    async def plan_thumbnail(
        self,
        study: StudyKey,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        frame: int | None = None,
        options: RenderOptions | None = None,
    ) -> Rendering:
        """A small representative image of a study, series, instance or frame."""
        options = self.thumbnail_options(options or RenderOptions())
        if sop_instance_uid is not None:
            assert series_instance_uid is not None
            instance = await self.retrieve.get_instance(
                InstanceKey(
                    study.site, study.study_instance_uid, series_instance_uid, sop_instance_uid
                )
            )
        else:
            instance = await self._representative(study, series_instance_uid)
        persistent = self.thumbnail_cache is not None
        if self.retrieve.is_document(instance) and frame is None:
            return self._plan_icon(instance, options, persistent=persistent)
        if frame is None and self.retrieve.is_video(instance):
            frame = 1  # decoded from the start of the stream: the first frame is cheapest
        elif frame is None:
            frame = (instance.number_of_frames + 1) // 2  # the middle of a multi-frame
        return self._plan(instance, options, [frame], persistent=persistent)

    def thumbnail_options(self, options: RenderOptions) -> RenderOptions:
        """Thumbnails: a small default viewport, never enlarged, no annotations."""
        viewport = options.viewport or Viewport(self.thumbnail_size, self.thumbnail_size)
        return replace(options, viewport=viewport, upscale=False, annotations=())

    def _plan_icon(
        self, instance: StoredInstance, options: RenderOptions, *, persistent: bool
    ) -> Rendering:
        """A document's thumbnail: a page icon naming its kind (no frames)."""
        extension = options.media_type.rsplit("/", 1)[-1]
        label = DOCUMENT_CLASSES[instance.sop_class_uid]
        token = hashlib.sha256(f"{_VERSION}|icon|{label}|{options.token}".encode()).hexdigest()
        cache_key = rendered_cache_key(instance.key, instance.digest, token[:32], extension)
        return Rendering(instance, (), options, cache_key, persistent)

    def _plan(
        self,
        instance: StoredInstance,
        options: RenderOptions,
        frames: list[int] | None,
        *,
        persistent: bool,
    ) -> Rendering:
        if instance.number_of_frames == 0:  # a structured report, a waveform: no image
            raise NotAcceptableError(
                f"instance {instance.key.sop_instance_uid} has no pixel data to render as"
                f" {options.media_type}"
            )
        if frames is None:
            animated = options.media_type == "image/gif" and instance.number_of_frames > 1
            frames = list(range(1, instance.number_of_frames + 1)) if animated else [1]
        if len(frames) > 1 and options.media_type != "image/gif":
            raise NotAcceptableError("several frames render as one animated image/gif only")
        if len(frames) > _MAX_ANIMATED_FRAMES:
            raise NotAcceptableError(
                f"an animated GIF holds at most {_MAX_ANIMATED_FRAMES} frames;"
                f" this asks for {len(frames)}: ask for fewer frames"
            )
        for number in frames:
            if number < 1:
                raise BadRequestError(f"frame number {number} is invalid: frames count from 1")
            if number > instance.number_of_frames:
                raise NotFoundError(
                    f"frame {number} does not exist: the instance has {instance.number_of_frames}"
                )
        extension = options.media_type.rsplit("/", 1)[-1]
        token = hashlib.sha256(f"{_VERSION}|{frames}|{options.token}".encode()).hexdigest()
        cache_key = rendered_cache_key(instance.key, instance.digest, token[:32], extension)
        return Rendering(instance, tuple(frames), options, cache_key, persistent)

    async def _representative(
        self, study: StudyKey, series_instance_uid: str | None
    ) -> StoredInstance:
        """The middle image of a series, or of a study's first series with images.

        Remembered by the study's version, which moves with every instance stored, deleted,
        rejected or restored in it, by this process or another: a cached thumbnail costs one
        point read, and a series that grows shows its new middle image at once (issue 18).
        """
        memo_key = (study.site, study.study_instance_uid, series_instance_uid or "")
        versions = await self.retrieve.index.study_versions((study.site,), study.study_instance_uid)
        version = versions.get(study.site)
        remembered = self._representatives.get(memo_key)
        if remembered is not None and version is not None and remembered[0] == version:
            return remembered[1]
        instances = await self.retrieve.iter_instances(study, series_instance_uid)
        images: list[StoredInstance] = []
        document: StoredInstance | None = None  # shown when there is no image at all
        try:
            async for instance in instances:
                if images and instance.key.series_instance_uid != images[0].key.series_instance_uid:
                    break  # ordered by series: the first series with images is complete
                if instance.number_of_frames > 0:
                    images.append(instance)
                elif document is None and self.retrieve.is_document(instance):
                    document = instance
        finally:
            await close_stream(instances)
        if not images and document is None:
            level = "series" if series_instance_uid else "study"
            raise NotFoundError(f"the {level} has no instance with pixel data or a document")
        chosen = images[(len(images) - 1) // 2] if images else document
        assert chosen is not None
        if version is not None:  # read before the instances: never newer than they are
            if len(self._representatives) >= _REPRESENTATIVES:
                self._representatives.clear()
            self._representatives[memo_key] = (version, chosen)
        return chosen

    # -- producing -------------------------------------------------------------------------

    async def produce(self, rendering: Rendering, *, bounded_wait: bool = True) -> RenderedImage:
        """The image: from memory, the blob store or rendered, once however many ask; with its
        share of the pixel budget held until the caller releases it (once the bytes are sent).

        `bounded_wait`: past `budget_wait_seconds` a RenderBusyError (503); False waits as long
        as it takes (a later part of a multipart answer, whose status is sent).
        """
        release = await self._hold_budget(rendering, bounded_wait)
        try:
            return RenderedImage(await self._produce(rendering), release)
        except BaseException:
            release()
            raise

    async def _produce(self, rendering: Rendering) -> bytes:
        key = rendering.cache_key
        cached = self._memory.get(key)
        if cached is not None:
            return cached
        data, produced = await self._inflight.run(key, lambda: self._load_or_render(rendering))
        if produced:
            self._memory.put(key, data)
        return data

    async def _hold_budget(self, rendering: Rendering, bounded_wait: bool) -> Callable[[], None]:
        """Wait for this rendering's pixels in the budget; a rendering over the per-request
        limit is refused first (400), never left waiting."""
        instance = rendering.instance
        if not rendering.frames:
            return _nothing_held  # a document's icon: a few kilobytes
        with _request_errors(instance):
            attrs = await self._attributes(instance)
            options, count = rendering.options, len(rendering.frames)
            check_render_budget(count, attrs.info, options, self.codecs.max_render_pixels)
        pixels = render_pixel_count(count, attrs.info, options)
        timeout = self.budget_wait_seconds if bounded_wait else None
        try:
            async with asyncio.timeout(timeout):
                return await self._budget.acquire(pixels)
        except TimeoutError:
            budget = self._budget
            log.warning(
                "rendering of %s (%d pixels) refused: renderings in flight held %d of %d pixels"
                " for %g s (DICOMWEB_MAX_RENDER_PIXELS)",
                instance.key.sop_instance_uid,
                pixels,
                budget.held,
                budget.capacity,
                self.budget_wait_seconds,
            )
            raise RenderBusyError(
                "the server is busy rendering other images (DICOMWEB_MAX_RENDER_PIXELS pixels"
                f" in flight); retry in {_RETRY_AFTER_SECONDS} s"
            ) from None

    async def _load_or_render(self, rendering: Rendering) -> bytes:
        cache = self.thumbnail_cache if rendering.persistent else None
        if cache is not None:
            cached = await cache.get(rendering.cache_key)
            if cached is not None:
                return cached
        data = await self._render(rendering)
        if cache is not None:  # written after the response: the client does not wait
            cache.put_later(rendering.cache_key, data)
        return data

    async def _render(self, rendering: Rendering) -> bytes:
        instance, options = rendering.instance, rendering.options
        syntax = instance.transfer_syntax_uid
        codecs = self.codecs
        if not rendering.frames:
            label = DOCUMENT_CLASSES.get(instance.sop_class_uid, "DOC")
            return await codecs.run(render_document_icon, label, options)
        with _request_errors(instance):
            attrs = await self._attributes(instance)
            # Before any frame is read or decoded: a rendering too large for the budget.
            check_render_budget(
                len(rendering.frames), attrs.info, options, codecs.max_render_pixels
            )
            if self.retrieve.is_video(instance):
                arrays = await self.retrieve.video_frames(instance, rendering.frames)
                pixels = [Pixels(array, "RGB") for array in arrays]
                return await codecs.run(render_pixels, pixels, attrs, options)
            stored = await self._stored_frames(instance, rendering.frames)
            if stored is not None:
                return await codecs.run(
                    render,
                    stored,
                    syntax,
                    attrs,
                    options,
                    codecs.max_decoded_bytes,
                    codecs.max_render_pixels,
                    kind="render",
                )
            # Frames not mapped at ingest (deflated, big endian, odd fragments): pydicom
            # reads them from the whole object.
            return await self._render_from_object(instance, rendering.frames, attrs, options)

    async def _stored_frames(
        self, instance: StoredInstance, frames: tuple[int, ...]
    ) -> list[bytes] | None:
        """The frames as stored, or None when their byte ranges were not recorded."""
        if instance.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return None
        found = await asyncio.gather(
            *(self.retrieve.read_stored_frame(instance, number) for number in frames)
        )
        stored = [data for data in found if data is not None]
        return stored if len(stored) == len(frames) else None

    async def _attributes(self, instance: StoredInstance) -> ImageAttributes:
        """Rendering attributes, remembered per stored object (viewers ask for many windows)."""
        remembered = self._attributes_memo.get(instance.blob_key)
        if remembered is not None:
            self._attributes_memo.move_to_end(instance.blob_key)
            return remembered
        attrs = await self._read_attributes(instance)
        self._attributes_memo[instance.blob_key] = attrs
        while len(self._attributes_memo) > _ATTRIBUTES_MEMO:
            self._attributes_memo.popitem(last=False)
        return attrs

    async def _read_attributes(self, instance: StoredInstance) -> ImageAttributes:
        """Rendering attributes from the stored metadata, with LUT bulk data fetched."""
        model = orjson.loads(await self.retrieve.get_metadata(instance.key))
        if not isinstance(model, dict):
            raise CodecError("the instance has no stored metadata")
        bulk: dict[str, bytes] = {}
        for path in bulk_paths(model):
            try:
                _, values = await self.retrieve.read_bulk(instance.key, path)
            except (NotFoundError, NotAcceptableError):
                return await self._attributes_from_object(instance)
            bulk[path] = b"".join(values)
        return ImageAttributes.from_json(model, bulk)

    async def _attributes_from_object(self, instance: StoredInstance) -> ImageAttributes:
        spool = await self.retrieve.spool_object(instance)
        try:
            return await self.codecs.run(_attributes_from_file, spool, kind="attributes")
        finally:
            spool.close()

    async def _render_from_object(
        self,
        instance: StoredInstance,
        frames: tuple[int, ...],
        attrs: ImageAttributes,
        options: RenderOptions,
    ) -> bytes:
        spool = await self.retrieve.spool_object(instance)
        try:
            return await self.codecs.run(
                _render_from_file,
                spool,
                list(frames),
                attrs,
                options,
                self.codecs.max_decoded_bytes,
                kind="render",
            )
        finally:
            spool.close()

    # -- study and series ------------------------------------------------------------------

    async def iter_images(
        self, study: StudyKey, series_instance_uid: str | None, options: RenderOptions
    ) -> AsyncGenerator[tuple[Rendering, RenderedImage]]:
        """Each instance with pixel data rendered, one at a time, each image's share of the
        budget released when the next is asked for (so once it is sent).

        Every decision is made before the instance's image is yielded, so a multipart answer
        is never cut: an instance that cannot be rendered as asked (undecodable, over the
        limit, gone) is left out with one warning. When none can be, the first refusal is
        raised (the 406 or 400 one instance gets) before anything is yielded. The first image
        waits for the budget `budget_wait_seconds` at most; later ones, whose answer has
        started, as long as it takes.
        """
        refusal: DicomwebError | None = None
        started = False
        renderings = await self.iter_renderings(study, series_instance_uid, options)
        try:
            async for rendering in renderings:
                try:
                    image = await self.produce(rendering, bounded_wait=not started)
                except (BadRequestError, NotAcceptableError, NotFoundError) as exc:
                    log.warning(
                        "rendered %s: instance %s left out: %s",
                        series_instance_uid or study.study_instance_uid,
                        rendering.instance.key.sop_instance_uid,
                        " ".join(exc.reason.split())[:300],
                    )
                    refusal = refusal or exc
                    continue
                started = True
                try:
                    yield rendering, image
                finally:
                    image.release()
        finally:
            await close_stream(renderings)
        if not started:
            assert refusal is not None  # iter_renderings yields at least one rendering
            raise refusal

    async def iter_renderings(
        self, study: StudyKey, series_instance_uid: str | None, options: RenderOptions
    ) -> AsyncIterator[Rendering]:
        """A rendering per instance with pixel data; NotFoundError when there is none."""
        instances = await self.retrieve.iter_instances(study, series_instance_uid)

        async def plans() -> AsyncIterator[Rendering]:
            try:
                async for instance in instances:
                    if instance.number_of_frames > 0:
                        yield self._plan(instance, options, None, persistent=False)
            finally:  # a listing left early lets go of its cursor now, not when collected
                await close_stream(instances)

        iterator = plans()
        first = await anext(iterator, None)
        if first is None:
            await close_stream(iterator)
            raise NotFoundError("no instance with pixel data to render")
        return chain(first, iterator)


@contextlib.contextmanager
def _request_errors(instance: StoredInstance) -> Iterator[None]:
    """Codec errors as what the client is told: its parameters (400) or the image (406)."""
    try:
        yield
    except RenderBudgetError as exc:
        raise BadRequestError(
            f"{exc}; ask for fewer frames or a smaller viewport (DICOMWEB_MAX_RENDER_PIXELS)"
        ) from exc
    except RenderParameterError as exc:
        raise BadRequestError(str(exc)) from exc
    except CodecError as exc:
        raise NotAcceptableError(
            f"instance {instance.key.sop_instance_uid} (stored as"
            f" {instance.transfer_syntax_uid}) cannot be rendered: {exc}"
        ) from exc


def _nothing_held() -> None:
    """The release of a rendering that takes nothing from the budget."""


def _attributes_from_file(src: IO[bytes]) -> ImageAttributes:
    from pydicom import dcmread

    src.seek(0)
    ds = dcmread(src, stop_before_pixels=True)
    return ImageAttributes.from_json(ds.to_json_dict(bulk_data_threshold=1 << 62))


def _render_from_file(
    src: IO[bytes],
    frames: list[int],
    attrs: ImageAttributes,
    options: RenderOptions,
    max_decoded_bytes: int,
) -> bytes:
    from dicomweb_server.codecs.transcode import pixels_from_file

    pixels = pixels_from_file(src, frames, max_decoded_bytes)  # type: ignore[arg-type]
    return render_pixels(pixels, attrs, options)
