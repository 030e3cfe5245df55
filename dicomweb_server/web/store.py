"""STOW-RS (PS3.18 10.5): stream a multipart/related body into the store service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server import telemetry
from dicomweb_server.config import Settings
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.domain.stow_result import CANNOT_UNDERSTAND, PROCESSING_FAILURE, StowResult
from dicomweb_server.errors import (
    DicomwebError,
    MalformedRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from dicomweb_server.services.spool import Spool
from dicomweb_server.services.store import StoreRequest
from dicomweb_server.web.auth import principal_of
from dicomweb_server.web.multipart import iter_parts, parse_media_type
from dicomweb_server.web.params import root_url_of, store_site
from dicomweb_server.web.state import AppState

__all__ = ["store_instances"]

log = logging.getLogger("dicomweb_server.store")
_MAX_WARNINGS = 20


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def store_instances(request: Request) -> Response:
    """POST /studies[/{study}]: store each application/dicom part; report per instance.

    PS3.18 10.5: a multipart/related body of application/dicom parts (any boundary up to
    DICOMWEB_MAX_BOUNDARY_LENGTH, the `type` parameter optional: parts say what they are),
    or, as Microsoft's, Google's and AWS's services accept, a single application/dicom body.
    A body that breaks off (malformed, over a limit, stalled) after some instances were
    stored is answered 202 with those instances and a failure for the rest; before any was
    stored it is the 4xx of the error, and nothing from the request stays. So is a backend
    fault (the index or the object store down): 202 with the instances committed before it
    and 0x0110 Processing failure for every other part received (PS3.18 10.5.3), or 503 when
    none was committed.
    """
    state: AppState = request.app.state.dicomweb
    settings = state.settings
    study = request.path_params.get("study")
    if study is not None:
        validate_uid(study, "StudyInstanceUID")
    header = request.headers.get("content-type", "").strip()
    if not header:
        raise UnsupportedMediaTypeError(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"'
            " (or application/dicom for a single instance)"
        )
    media_type, params = parse_media_type(header)
    if media_type not in ("multipart/related", "application/dicom"):
        raise UnsupportedMediaTypeError(
            'STOW-RS takes multipart/related; type="application/dicom" or application/dicom,'
            f" not {media_type or 'a request without Content-Type'}"
        )
    part_type = params.get("type", "").lower()
    if media_type == "multipart/related" and part_type not in ("", "application/dicom"):
        raise UnsupportedMediaTypeError(
            f"multipart/related type {part_type!r} is not supported; send"
            ' type="application/dicom" (metadata and bulk data parts are not stored here)'
        )
    boundary = params.get("boundary")
    if media_type == "multipart/related" and not boundary:
        raise MalformedRequestError("multipart/related Content-Type has no boundary parameter")
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise UnsupportedMediaTypeError("Content-Encoding is not supported for STOW-RS bodies")
    single = media_type == "application/dicom"
    limit = settings.max_part_bytes if single else settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit}")

    result = StowResult()
    site = store_site(request)
    store = state.store.request(
        site,
        study,
        result,
        depth=settings.store_pipeline_depth,
        batch=settings.store_index_batch,
        principal=principal_of(request),  # a rejection note needs its `delete` grant
    )
    body = _limited(request.stream(), limit)
    broke_off: DicomwebError | None = None
    received = False
    try:
        async with store:
            try:
                if single:
                    await store.add(await _spooled(body, settings.spool_memory_bytes))
                else:
                    assert boundary is not None
                    await _add_parts(store, body, boundary, settings, part_type or None)
                received = True
            except _BODY_ERRORS as exc:
                broke_off = exc  # what came before it is stored as the context ends
    except DicomwebError as exc:
        if not result.stored:
            raise
        # Committed instances stay visible: report them, and the parts that failed with them
        log.warning("STOW stopped by a backend fault after %d stored: %s", len(result.stored), exc)
        if not received and broke_off is None:
            result.add_failed(
                "",
                "",
                PROCESSING_FAILURE,
                f"the request stopped ({exc.reason}); the instances listed as stored are"
                " stored, the rest of the body was not read",
            )
    if broke_off is not None:
        if not result.stored:
            raise broke_off
        result.add_failed(
            "",
            "",
            CANNOT_UNDERSTAND,
            f"the request body broke off ({broke_off.reason}); the instances before it are"
            " stored, the rest was not received",
        )

    request.state.audit_studies = sorted({stored[2] for stored in result.stored})  # web/audit.py
    telemetry.record_stow(site, len(result.stored), [f.reason for f in result.failed])
    payload = orjson.dumps(result.to_json(root_url_of(request), study))
    response = Response(payload, status_code=result.status, media_type="application/dicom+json")
    for text in result.failure_texts[:_MAX_WARNINGS]:
        response.headers.append("Warning", f'299 dicomweb-server "{_header_safe(text)}"')
    if result.failed:
        log.info("STOW stored %d, failed %d", len(result.stored), len(result.failed))
    return response


# Errors of the request body itself: instances stored before one are still reported.
_BODY_ERRORS = (MalformedRequestError, PayloadTooLargeError, RequestTimeoutError)


async def _add_parts(
    store: StoreRequest,
    body: AsyncIterator[bytes],
    boundary: str,
    settings: Settings,
    declared_type: str | None,
) -> None:
    """Store each part; one without Content-Type is of the request's `type` when it has one
    (RFC 2387 3.1: `type` names the parts' media type; Microsoft's server stores such parts)."""
    parts = iter_parts(
        body,
        boundary,
        max_part_size=settings.max_part_bytes,
        max_parts=settings.max_parts,
        spool_memory=settings.spool_memory_bytes,
        max_boundary_length=settings.max_boundary_length,
    )
    async for part in parts:
        reason = _unsupported_part(part.content_type or declared_type)
        if reason is None:
            await store.add(part.file)  # the pipeline closes the part
        else:
            part.close()
            store.add_failed(CANNOT_UNDERSTAND, reason)


async def _spooled(body: AsyncIterator[bytes], memory_limit: int) -> Spool:
    """A single-part body as a spool, as a multipart part would be."""
    spool = Spool(memory_limit)
    try:
        async for chunk in body:
            spool.write(chunk)
        if not spool.size:
            raise MalformedRequestError("the request body is empty: send one Part 10 instance")
    except BaseException:
        spool.close()
        raise
    return spool


def _unsupported_part(content_type: str | None) -> str | None:
    """Why a part cannot be stored as an instance, or None for application/dicom."""
    if content_type is None:
        return 'a part has no Content-Type (and the request no type="application/dicom")'
    try:
        part_media, _ = parse_media_type(content_type)
    except MalformedRequestError as exc:
        return exc.reason
    if part_media != "application/dicom":
        return f"a part has Content-Type {part_media!r}, not application/dicom"
    return None


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "'" if c == '"' else "?" for c in text)
