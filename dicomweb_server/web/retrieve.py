"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.index.base import StoredInstance
from dicomweb_server.services.retrieve import OCTET_STREAM_MEDIA_TYPE, media_type_of
from dicomweb_server.storage.base import FileRegion
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.multipart import (
    iter_multipart,
    multipart_content_type,
    multipart_framing,
    new_boundary,
)
from dicomweb_server.web.negotiation import accept_frames, accept_instances, accept_json
from dicomweb_server.web.params import frame_numbers, instance_key, series_key, study_key
from dicomweb_server.web.state import AppState
from dicomweb_server.web.zerocopy import REGIONS, RegionStreamingResponse

__all__ = [
    "retrieve_bulkdata",
    "retrieve_instance",
    "retrieve_instance_frames",
    "retrieve_instance_metadata",
    "retrieve_series",
    "retrieve_series_metadata",
    "retrieve_study",
    "retrieve_study_metadata",
]

log = logging.getLogger("dicomweb_server.retrieve")
_DICOM_JSON = "application/dicom+json"


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.dicomweb
    return state


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _instances_response(
    request: Request, state: AppState, instances: AsyncIterator[StoredInstance]
) -> StreamingResponse:
    """Multipart application/dicom, one instance at a time (PS3.18 10.4.1.1.1-3).

    The next objects are read while one is sent (Settings.wado_read_ahead_*). The first
    instance is prepared before the status is sent, so a transfer syntax we cannot produce is
    a 406; a later instance that fails aborts the stream (and is logged). When every instance
    is sent as stored and the listing is short, the response carries a Content-Length, and
    where the objects are local files the server can send, it sends them in batches
    (`_batches`).
    """
    settings = state.settings
    wanted = accept_instances(request.headers.get("accept"))
    listed, more = await _list_some(instances, settings.wado_sized_max_instances)
    boundary = new_boundary()
    root = settings.root_url

    def headers(instance: StoredInstance, syntax: str) -> dict[str, str]:
        key = instance.key
        return {
            "Content-Type": f"application/dicom; transfer-syntax={syntax}",
            "Content-Location": (
                f"{root}/studies/{key.study_instance_uid}/series/{key.series_instance_uid}"
                f"/instances/{key.sop_instance_uid}"
            ),
        }

    content_type = multipart_content_type("application/dicom", boundary)
    length: dict[str, str] = {}
    if more is None and all(state.retrieve.serves_as_stored(i, wanted) for i in listed):
        framing = multipart_framing([headers(i, i.transfer_syntax_uid) for i in listed], boundary)
        length["Content-Length"] = str(sum(map(len, framing)) + sum(i.size for i in listed))
        regions = _local_regions(state, listed)
        if regions and REGIONS in (request.scope.get("extensions") or {}):
            # A missing object is an error before the status, as on the other path.
            await state.blobs.read_sendable(listed[0].blob_key, 0, listed[0].size)
            batches = _batches(framing, regions, settings.wado_read_ahead_objects)
            return RegionStreamingResponse(
                cast(AsyncIterator[bytes], batches),  # lists of pieces: see the class
                headers=length,
                media_type=content_type,
            )
    opened = state.retrieve.iter_opened_instances(
        _chain(listed, more),
        wanted,
        read_ahead_objects=settings.wado_read_ahead_objects,
        read_ahead_bytes=settings.wado_read_ahead_bytes,
    )
    try:
        first = await anext(opened)
    except BaseException:
        await opened.aclose()
        raise

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        try:
            instance, (syntax, body) = first
            yield headers(instance, syntax), body
            async for instance, (syntax, body) in opened:
                yield headers(instance, syntax), body
        finally:
            await opened.aclose()

    return RegionStreamingResponse(
        _logged(iter_multipart(parts(), boundary)), headers=length, media_type=content_type
    )


def _local_regions(state: AppState, listed: list[StoredInstance]) -> list[FileRegion] | None:
    """Each instance's object as a region of a local file, or None if the store has none."""
    regions = []
    for instance in listed:
        region = state.blobs.local_region(instance.blob_key, 0, instance.size)
        if region is None:
            return None
        regions.append(region)
    return regions


async def _batches(
    framing: list[bytes], regions: Sequence[FileRegion], per_batch: int
) -> AsyncIterator[list[bytes | FileRegion]]:
    """The multipart body as lists of pieces, `per_batch` objects each: the server opens a
    batch's files and reads them ahead together, then sends the batch in one go."""
    batch: list[bytes | FileRegion] = []
    for piece, region in zip(framing, regions, strict=False):  # framing ends with the close
        batch += (piece, region)
        if len(batch) >= 2 * per_batch:
            yield batch
            batch = []
    batch.append(framing[-1])
    yield batch


async def _list_some(
    instances: AsyncIterator[StoredInstance], limit: int
) -> tuple[list[StoredInstance], AsyncIterator[StoredInstance] | None]:
    """Up to `limit` instances, and the iterator if it holds more (None when exhausted)."""
    listed: list[StoredInstance] = []
    async for instance in instances:
        listed.append(instance)
        if len(listed) > limit:
            return listed, instances
    return listed, None


async def _chain(
    listed: list[StoredInstance], more: AsyncIterator[StoredInstance] | None
) -> AsyncIterator[StoredInstance]:
    for instance in listed:
        yield instance
    if more is not None:
        async for instance in more:
            yield instance


async def _logged(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once a stream has started its status is sent: log a failure, then abort the body."""
    try:
        async for chunk in stream:
            yield chunk
    except Exception:
        log.exception("response stream aborted")
        raise


async def retrieve_study(request: Request) -> Response:
    """GET /studies/{study}."""
    state = _state(request)
    accept_instances(request.headers.get("accept"))
    instances = await state.retrieve.iter_instances(study_key(request))
    return await _instances_response(request, state, instances)


async def retrieve_series(request: Request) -> Response:
    """GET /studies/{study}/series/{series}."""
    state = _state(request)
    accept_instances(request.headers.get("accept"))
    key = series_key(request)
    instances = await state.retrieve.iter_instances(key.study, key.series_instance_uid)
    return await _instances_response(request, state, instances)


async def retrieve_instance(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances/{instance}."""
    state = _state(request)
    accept_instances(request.headers.get("accept"))
    instance = await state.retrieve.get_instance(instance_key(request))

    async def single() -> AsyncIterator[StoredInstance]:
        yield instance

    return await _instances_response(request, state, single())


async def retrieve_study_metadata(request: Request) -> Response:
    """GET /studies/{study}/metadata."""
    state = _state(request)
    accept_json(request.headers.get("accept"))
    body = await state.retrieve.iter_metadata(study_key(request), None, state.settings.root_url)
    return StreamingResponse(body, media_type=_DICOM_JSON)


async def retrieve_series_metadata(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/metadata: stored JSON, never re-parsed DICOM."""
    state = _state(request)
    accept_json(request.headers.get("accept"))
    key = series_key(request)
    body = await state.retrieve.iter_metadata(
        key.study, key.series_instance_uid, state.settings.root_url
    )
    return StreamingResponse(body, media_type=_DICOM_JSON)


async def retrieve_instance_metadata(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances/{instance}/metadata."""
    state = _state(request)
    accept_json(request.headers.get("accept"))
    body = await state.retrieve.instance_metadata(instance_key(request), state.settings.root_url)
    return Response(body, media_type=_DICOM_JSON)


async def retrieve_instance_frames(request: Request) -> Response:
    """GET .../instances/{instance}/frames/{frames} (PS3.18 10.4.1.1.4): native or compressed
    frames, each part's Content-Type naming its media type and exact transfer syntax."""
    state = _state(request)
    key = instance_key(request)
    numbers = frame_numbers(request.path_params["frames"])
    wanted = accept_frames(request.headers.get("accept"))
    instance = await state.retrieve.get_instance(key)
    fmt, frames = await state.retrieve.retrieve_frames(instance, numbers, wanted)
    boundary = new_boundary()
    content_type = f"{fmt.media_type}; transfer-syntax={fmt.transfer_syntax}"
    base = (
        f"{state.settings.root_url}/studies/{key.study_instance_uid}/series/"
        f"{key.series_instance_uid}/instances/{key.sop_instance_uid}/frames/"
    )

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for number, data in zip(numbers, frames, strict=True):
            yield {"Content-Type": content_type, "Content-Location": f"{base}{number}"}, _one(data)

    return StreamingResponse(
        iter_multipart(parts(), boundary),
        media_type=multipart_content_type(fmt.media_type, boundary, fmt.transfer_syntax),
    )


_RANGE_RE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")


def _byte_range(header: str, total: int) -> tuple[int, int] | None:
    """RFC 9110 14.1.2: one `bytes=first-last` or `bytes=-suffix` range → (start, length).

    None when the header cannot be satisfied; several ranges are not supported (also None).
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        length = min(int(last), total)
        return total - length, length
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or end < start:
        return None
    return start, end - start + 1


async def retrieve_bulkdata(request: Request) -> Response:
    """GET .../instances/{instance}/bulkdata/{path}: values behind BulkDataURIs.

    A Range header (RFC 9110 14.2) selects bytes of one value: 206 with one part.
    Frames of encapsulated Pixel Data are labelled with their stored media type.
    """
    state = _state(request)
    key = instance_key(request)
    path = request.path_params["path"]
    boundary = new_boundary()
    range_header = request.headers.get("range")
    if range_header is not None:
        instance, offset, length = await state.retrieve.bulk_span(key, path)
        selected = _byte_range(range_header, length)
        if selected is None:
            return error_response(
                416,
                f"range {range_header[:40]!r} cannot be satisfied: the value has {length} bytes",
                {"Content-Range": f"bytes */{length}"},
            )
        start, size = selected
        content_range = f"bytes {start}-{start + size - 1}/{length}"

        async def ranged() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
            yield (
                {"Content-Type": OCTET_STREAM_MEDIA_TYPE, "Content-Range": content_range},
                state.retrieve.iter_range(instance, offset + start, size),
            )

        return StreamingResponse(
            _logged(iter_multipart(ranged(), boundary)),
            status_code=206,
            media_type=multipart_content_type(OCTET_STREAM_MEDIA_TYPE, boundary),
        )
    instance, values = await state.retrieve.read_bulk(key, path)
    syntax = instance.transfer_syntax_uid
    media_type = OCTET_STREAM_MEDIA_TYPE
    pixel = instance.pixel
    if path == "7FE00010" and pixel is not None and pixel.encapsulated:
        media_type = media_type_of(syntax) or OCTET_STREAM_MEDIA_TYPE

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for value in values:
            yield ({"Content-Type": f"{media_type}; transfer-syntax={syntax}"}, _one(value))

    return StreamingResponse(
        iter_multipart(parts(), boundary),
        media_type=multipart_content_type(media_type, boundary),
    )
