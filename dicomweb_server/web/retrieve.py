"""WADO-RS (PS3.18 10.4): instances (multipart or a zip), metadata, frames and bulk data."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import TypeVar, cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.domain.documents import ENCAPSULATED_DOCUMENT
from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.errors import NotAcceptableError
from dicomweb_server.services.bodies import FileRegion, InstancesPlan, PlannedInstance
from dicomweb_server.services.metadata_documents import MetadataDocument
from dicomweb_server.services.retrieve import OCTET_STREAM_MEDIA_TYPE, media_type_of
from dicomweb_server.web.browser import weak_etag
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.media import (
    byte_range,
    logged_stream,
    media_response,
    single_byte_range,
)
from dicomweb_server.web.multipart import (
    iter_multipart,
    multipart_content_type,
    multipart_framing,
    new_boundary,
)
from dicomweb_server.web.negotiation import (
    ZIP,
    WantedFrames,
    accept_frames,
    accept_instances,
    accept_json,
    accept_media,
    accept_single_part,
    accept_zip,
)
from dicomweb_server.web.params import (
    accept_of,
    frame_numbers,
    instance_key,
    root_url_of,
    series_key,
    study_key,
)
from dicomweb_server.web.responses import REGIONS, PiecesResponse, RegionStreamingResponse
from dicomweb_server.web.state import AppState
from dicomweb_server.web.zip_stream import ZipEntry, iter_zip, zip_length

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

_Chunk = TypeVar("_Chunk", bound=bytes | memoryview)
_AS_STORED: tuple[str | None, ...] = ("*",)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.dicomweb
    return state


async def _one(data: _Chunk) -> AsyncIterator[_Chunk]:
    yield data


def _instance_headers(root: str, planned: PlannedInstance) -> dict[str, str]:
    key = planned.instance.key
    return {
        "Content-Type": f"application/dicom; transfer-syntax={planned.transfer_syntax_uid}",
        "Content-Location": (
            f"{root}/studies/{key.study_instance_uid}/series/{key.series_instance_uid}"
            f"/instances/{key.sop_instance_uid}"
        ),
    }


def _instances_response(request: Request, plan: InstancesPlan) -> Response:
    """Multipart application/dicom, one instance at a time (PS3.18 10.4.1.1.1-3).

    Every instance's syntax was decided before this (a 406 names one we cannot produce).
    When every instance is sent as stored and the listing is complete, the response carries
    a Content-Length; when they are local files the server can send, it sends them in batches
    of framing and file regions (`_batches`).
    """
    root = root_url_of(request)
    boundary = new_boundary()
    content_type = multipart_content_type("application/dicom", boundary)
    length: dict[str, str] = {}
    if plan.content_length_known:
        framing = multipart_framing(
            [_instance_headers(root, planned) for planned in plan.listed], boundary
        )
        total = sum(map(len, framing)) + sum(planned.instance.size for planned in plan.listed)
        length["Content-Length"] = str(total)
        if plan.regions is not None:
            per_batch = _state(request).settings.wado_read_ahead_objects
            return RegionStreamingResponse(
                cast(AsyncIterator[bytes], _batches(framing, plan.regions, per_batch)),
                headers=length,
                media_type=content_type,
            )
    bodies = plan.bodies
    assert bodies is not None  # a plan without regions streams its bodies

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        async for planned, body in bodies:
            yield _instance_headers(root, planned), body

    return RegionStreamingResponse(
        logged_stream(iter_multipart(parts(), boundary)), headers=length, media_type=content_type
    )


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


def _sends_regions(request: Request) -> bool:
    """True when the server takes our regions extension (serve/zerocopy.py)."""
    return REGIONS in (request.scope.get("extensions") or {})


def _negotiate_instances(request: Request) -> tuple[Sequence[str | None], bool]:
    """(transfer syntaxes, zip?): a zip holds the stored files; else 406 or multipart."""
    accept = accept_of(request)
    if accept_zip(accept):
        return _AS_STORED, True
    return accept_instances(accept), False


async def retrieve_study(request: Request) -> Response:
    """GET /studies/{study}: multipart application/dicom, or a zip."""
    state = _state(request)
    wanted, zipped = _negotiate_instances(request)
    key = await study_key(request)
    regions = not zipped and _sends_regions(request)
    plan = await state.retrieve.plan_instances(key, None, wanted, regions=regions)
    if zipped:
        return _zip_response(plan, key.study_instance_uid)
    return _instances_response(request, plan)


async def retrieve_series(request: Request) -> Response:
    """GET /studies/{study}/series/{series}: multipart application/dicom, or a zip."""
    state = _state(request)
    wanted, zipped = _negotiate_instances(request)
    key = await series_key(request)
    regions = not zipped and _sends_regions(request)
    plan = await state.retrieve.plan_instances(
        key.study, key.series_instance_uid, wanted, regions=regions
    )
    if zipped:
        return _zip_response(plan, key.series_instance_uid)
    return _instances_response(request, plan)


async def retrieve_instance(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances/{instance}: multipart, or a zip."""
    state = _state(request)
    wanted, zipped = _negotiate_instances(request)
    key = await instance_key(request)
    single = not zipped and accept_single_part(accept_of(request))
    regions = not zipped and not single and _sends_regions(request)
    plan = await state.retrieve.plan_instance(key, wanted, regions=regions)
    if zipped:
        return _zip_response(plan, key.sop_instance_uid)
    if single:
        return _single_part_response(request, plan)
    return _instances_response(request, plan)


def _single_part_response(request: Request, plan: InstancesPlan) -> Response:
    """One instance as its Part 10 body, `application/dicom; transfer-syntax=...`, decided
    before the first byte like a multipart answer (a length when sent as stored)."""
    (planned,) = plan.listed
    headers = _instance_headers(root_url_of(request), planned)
    media_type = headers.pop("Content-Type")
    if planned.as_stored:
        headers["Content-Length"] = str(planned.instance.size)
    bodies = plan.bodies
    assert bodies is not None  # planned without regions

    async def body() -> AsyncIterator[bytes]:
        async for _, chunks in bodies:
            async for chunk in chunks:
                yield chunk

    return RegionStreamingResponse(logged_stream(body()), headers=headers, media_type=media_type)


def _zip_name(key: InstanceKey) -> str:
    """An entry's name: validated UIDs only, never text of the request or of the data."""
    return f"{key.study_instance_uid}/{key.series_instance_uid}/{key.sop_instance_uid}.dcm"


def _zip_response(plan: InstancesPlan, uid: str) -> Response:
    """The planned instances' stored Part 10 files as one zip, streamed entry by entry
    (web/zip_stream.py), as dcm4chee-arc answers `application/zip`; `uid` names the file.

    Every instance was planned as stored, and the first one opened, before this: an unknown
    study is a 404 and a store that is down a 503. Once the 200 is sent, a failure cuts the
    body before the central directory, so no unzip takes a short archive for a whole one.
    """
    headers = {"Content-Disposition": f'attachment; filename="{uid}.zip"'}
    if plan.content_length_known:
        listed = ((_zip_name(p.instance.key), p.instance.size) for p in plan.listed)
        headers["Content-Length"] = str(zip_length(listed))
    bodies = plan.bodies
    assert bodies is not None  # planned without regions

    async def entries() -> AsyncIterator[ZipEntry]:
        async for planned, body in bodies:
            assert planned.as_stored  # "*": the stored bytes, whose size the index records
            yield ZipEntry(_zip_name(planned.instance.key), planned.instance.size, body)

    return RegionStreamingResponse(
        logged_stream(iter_zip(entries())), headers=headers, media_type=ZIP
    )


async def retrieve_study_metadata(request: Request) -> Response:
    """GET /studies/{study}/metadata."""
    state = _state(request)
    media_type = accept_json(accept_of(request))
    answer = await state.retrieve.study_metadata(
        await study_key(request), None, root_url_of(request)
    )
    return _metadata_response(answer, media_type)


async def retrieve_series_metadata(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/metadata: stored JSON, never re-parsed DICOM."""
    state = _state(request)
    media_type = accept_json(accept_of(request))
    key = await series_key(request)
    answer = await state.retrieve.study_metadata(
        key.study, key.series_instance_uid, root_url_of(request)
    )
    return _metadata_response(answer, media_type)


def _metadata_response(
    answer: MetadataDocument | AsyncIterator[bytes], media_type: str
) -> Response:
    """A whole document goes with the entity tag computed once for it; a streamed one is
    tagged (or not, when large) by EntityTagMiddleware."""
    if isinstance(answer, MetadataDocument):
        headers = {"ETag": weak_etag(answer.digest)}
        return Response(answer, media_type=media_type, headers=headers)
    return StreamingResponse(answer, media_type=media_type)


async def retrieve_instance_metadata(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances/{instance}/metadata."""
    state = _state(request)
    media_type = accept_json(accept_of(request))
    body = await state.retrieve.instance_metadata(await instance_key(request), root_url_of(request))
    return Response(body, media_type=media_type)


async def retrieve_instance_frames(request: Request) -> Response:
    """GET .../instances/{instance}/frames/{frames} (PS3.18 10.4.1.1.4): native or compressed
    frames, each part's Content-Type naming its media type and exact transfer syntax."""
    state = _state(request)
    key = await instance_key(request)
    numbers = frame_numbers(request.path_params["frames"])
    wanted = accept_frames(accept_of(request))
    instance = await state.retrieve.get_instance(key)
    fmt, frames = await state.retrieve.retrieve_frames(instance, numbers, wanted)
    boundary = new_boundary()
    content_type = f"{fmt.media_type}; transfer-syntax={fmt.transfer_syntax}"
    base = (
        f"{root_url_of(request)}/studies/{key.study_instance_uid}/series/"
        f"{key.series_instance_uid}/instances/{key.sop_instance_uid}/frames/"
    )

    media_type = multipart_content_type(fmt.media_type, boundary, fmt.transfer_syntax)
    headers = {"ETag": _frames_tag(instance.digest, numbers, content_type)}
    if len(numbers) == 1:  # produced already (retrieve_frames makes the first): one body
        async with aclosing(frames):
            data = await anext(frames)
        part = {"Content-Type": content_type, "Content-Location": f"{base}{numbers[0]}"}
        opening, closing = multipart_framing([part], boundary)
        return PiecesResponse([opening, data, closing], media_type=media_type, headers=headers)

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes | memoryview]]]:
        numbered = iter(numbers)
        async for data in frames:
            location = f"{base}{next(numbered)}"
            yield {"Content-Type": content_type, "Content-Location": location}, _one(data)

    return StreamingResponse(
        logged_stream(iter_multipart(parts(), boundary)), media_type=media_type, headers=headers
    )


def _frames_tag(digest: str, numbers: Sequence[int], content_type: str) -> str:
    """The weak entity tag of frames: what they are made of (the stored object's digest, the
    frame numbers, the media type and transfer syntax), so their bytes need no hashing."""
    made_of = f"{digest}\n{','.join(map(str, numbers))}\n{content_type}"
    return weak_etag(hashlib.sha256(made_of.encode()).hexdigest())


_PIXEL_DATA_PATH = "7FE00010"


async def retrieve_bulkdata(request: Request) -> Response:
    """GET .../instances/{instance}/bulkdata/{path}: values behind BulkDataURIs.

    A Range header (RFC 9110 14.2) of one range of bytes selects bytes of one value: 206 with
    one part and Content-Range; several ranges or another unit get the whole value.
    Frames of encapsulated Pixel Data are labelled with their stored media type. Video
    Pixel Data and an Encapsulated Document are one body each (`_media_bulkdata`).
    """
    state = _state(request)
    key = await instance_key(request)
    path = request.path_params["path"]
    if path in (_PIXEL_DATA_PATH, ENCAPSULATED_DOCUMENT):
        media = await _media_bulkdata(request, key, path)
        if media is not None:
            return media
    wanted = accept_frames(accept_of(request))
    boundary = new_boundary()
    range_header = single_byte_range(request.headers.get("range"))
    if request.headers.get("if-range") is not None:
        # Bulk data has no strong validator for If-Range to match (RFC 9110 13.1.5): a
        # client asking "the range only if unchanged" gets the whole value.
        range_header = None
    if range_header is not None:
        instance, offset, length = await state.retrieve.bulk_span(key, path)
        selected = byte_range(range_header, length)
        if selected is None:
            return error_response(
                416,
                f"range {range_header[:40]!r} cannot be satisfied: the value has {length} bytes",
                {"Content-Range": f"bytes */{length}"},
            )
        start, size = selected
        _bulk_part_type(wanted, OCTET_STREAM_MEDIA_TYPE, instance.transfer_syntax_uid)
        content_range = f"bytes {start}-{start + size - 1}/{length}"

        async def ranged() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
            yield (
                {"Content-Type": OCTET_STREAM_MEDIA_TYPE, "Content-Range": content_range},
                state.retrieve.iter_range(instance, offset + start, size),
            )

        # One range: the response says it too (RFC 9110 15.3.7.1), its body still the one part
        # PS3.18 frames bulk data in.
        return StreamingResponse(
            logged_stream(iter_multipart(ranged(), boundary)),
            status_code=206,
            media_type=multipart_content_type(OCTET_STREAM_MEDIA_TYPE, boundary),
            headers={"Content-Range": content_range, "Accept-Ranges": "bytes"},
        )
    instance, values = await state.retrieve.read_bulk(key, path)
    syntax = instance.transfer_syntax_uid
    stored_type = OCTET_STREAM_MEDIA_TYPE
    pixel = instance.pixel
    if path == "7FE00010" and pixel is not None and pixel.encapsulated:
        stored_type = media_type_of(syntax) or OCTET_STREAM_MEDIA_TYPE
    media_type = _bulk_part_type(wanted, stored_type, syntax)

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for value in values:
            yield ({"Content-Type": f"{media_type}; transfer-syntax={syntax}"}, _one(value))

    return StreamingResponse(
        iter_multipart(parts(), boundary),
        media_type=multipart_content_type(media_type, boundary),
        headers={"Accept-Ranges": "bytes"},  # RFC 9110 14.3: one range of one value is served
    )


def _bulk_part_type(wanted: Sequence[WantedFrames], stored_type: str, syntax: str) -> str:
    """The media type bulk data parts are labelled with (PS3.18 8.7.3.5): bulk data is sent
    as stored, so an Accept entry is met by the stored media type (encapsulated Pixel Data:
    image/jpeg, image/jp2, ...; anything else: octet-stream), or by octet-stream with no
    syntax, `*` or the stored one (compressed bytes, the part naming their syntax); else 406."""
    native = stored_type == OCTET_STREAM_MEDIA_TYPE
    for item in wanted:
        media = item.media_type
        same_syntax = item.transfer_syntax in (None, "*", syntax)
        if media in ("*/*", stored_type) or (media == "image/*" and not native):
            if native or same_syntax:  # native bytes are alike in any little-endian syntax
                return stored_type
        elif media == OCTET_STREAM_MEDIA_TYPE and same_syntax:
            return OCTET_STREAM_MEDIA_TYPE
    raise NotAcceptableError(
        f"bulk data is sent as stored: {stored_type}"
        + ("" if native else f" or {OCTET_STREAM_MEDIA_TYPE}")
        + f" with transfer-syntax={syntax}"
    )


async def _media_bulkdata(request: Request, key: InstanceKey, path: str) -> Response | None:
    """Video Pixel Data (PS3.18 Table 8.7.3-5 Note 5: one part holding all frames) or the
    Encapsulated Document: a single body in the media type asked for (the `accept` parameter
    wins over the header, 8.3.3.1); None for Pixel Data that is not video."""
    state = _state(request)
    instance = await state.retrieve.get_instance(key)
    wanted = accept_media(accept_of(request), OCTET_STREAM_MEDIA_TYPE)
    if path == _PIXEL_DATA_PATH:
        if not state.retrieve.is_video(instance):
            return None
        stored = instance.transfer_syntax_uid
        usable = [w for w in wanted if w.transfer_syntax in (None, "*", stored)]
        body = await state.retrieve.open_video(instance, [w.media_type for w in usable])
        wanted = usable
    else:
        body = await state.retrieve.open_document(instance, [w.media_type for w in wanted])
    cache_control = f"private, max-age={state.settings.http_cache_max_age}"
    return media_response(request, body, wanted, cache_control)
