"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.index.base import StoredInstance
from dicomweb_server.web.multipart import iter_multipart, multipart_content_type, new_boundary
from dicomweb_server.web.negotiation import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    accept_frames,
    accept_instances,
    accept_json,
)
from dicomweb_server.web.params import frame_numbers, instance_key, series_key, study_key
from dicomweb_server.web.state import AppState

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


def _instances_response(
    state: AppState, instances: AsyncIterator[StoredInstance]
) -> StreamingResponse:
    boundary = new_boundary()

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        async for instance in instances:
            syntax = instance.transfer_syntax_uid
            headers = {
                "Content-Type": f"application/dicom; transfer-syntax={syntax}",
                "Content-Location": (
                    f"{state.settings.root_url}/studies/{instance.key.study_instance_uid}"
                    f"/series/{instance.key.series_instance_uid}"
                    f"/instances/{instance.key.sop_instance_uid}"
                ),
            }
            yield headers, state.retrieve.iter_object(instance)

    return StreamingResponse(
        _logged(iter_multipart(parts(), boundary)),
        media_type=multipart_content_type("application/dicom", boundary),
    )


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
    accept_instances(request.headers.get("accept"), None)
    instances = await state.retrieve.iter_instances(study_key(request))
    return _instances_response(state, instances)


async def retrieve_series(request: Request) -> Response:
    """GET /studies/{study}/series/{series}."""
    state = _state(request)
    accept_instances(request.headers.get("accept"), None)
    key = series_key(request)
    instances = await state.retrieve.iter_instances(key.study, key.series_instance_uid)
    return _instances_response(state, instances)


async def retrieve_instance(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances/{instance}."""
    state = _state(request)
    instance = await state.retrieve.get_instance(instance_key(request))
    accept_instances(request.headers.get("accept"), instance.transfer_syntax_uid)

    async def single() -> AsyncIterator[StoredInstance]:
        yield instance

    return _instances_response(state, single())


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
    """GET .../instances/{instance}/frames/{frames}: native frames (PS3.18 10.4.1.1.4)."""
    state = _state(request)
    key = instance_key(request)
    numbers = frame_numbers(request.path_params["frames"])
    accept_frames(request.headers.get("accept"))
    instance = await state.retrieve.get_instance(key)
    frames = await state.retrieve.read_native_frames(instance, numbers)
    boundary = new_boundary()
    content_type = f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    base = (
        f"{state.settings.root_url}/studies/{key.study_instance_uid}/series/"
        f"{key.series_instance_uid}/instances/{key.sop_instance_uid}/frames/"
    )

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for number, data in zip(numbers, frames, strict=True):
            yield {"Content-Type": content_type, "Content-Location": f"{base}{number}"}, _one(data)

    return StreamingResponse(
        iter_multipart(parts(), boundary),
        media_type=multipart_content_type(
            "application/octet-stream", boundary, EXPLICIT_VR_LITTLE_ENDIAN
        ),
    )


async def retrieve_bulkdata(request: Request) -> Response:
    """GET .../instances/{instance}/bulkdata/{path}: values behind BulkDataURIs."""
    state = _state(request)
    key = instance_key(request)
    instance, values = await state.retrieve.read_bulk(key, request.path_params["path"])
    boundary = new_boundary()
    syntax = instance.transfer_syntax_uid

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for value in values:
            yield (
                {"Content-Type": f"application/octet-stream; transfer-syntax={syntax}"},
                _one(value),
            )

    return StreamingResponse(
        iter_multipart(parts(), boundary),
        media_type=multipart_content_type("application/octet-stream", boundary),
    )
