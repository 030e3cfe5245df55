"""Responses of one body (video, documents): single part or one part of multipart/related.

PS3.18 8.7.3.3.2 (Table 8.7.3-5 Note 5: video bulk data is a single part holding all frames)
and 8.6.1.1: a single-part media type, `*/*` or no Accept gets the body alone, with no
transfer-syntax parameter (8.7.4, 10.5.1); `multipart/related; type=...` gets a multipart body
of one part. Either way the length is known, so a Range header (RFC 9110 14.2) selects bytes:
`206` with Content-Range (a single part: the bytes alone, as browsers expect when they seek
video), `416` when unsatisfiable; If-Range with another entity tag, several ranges or a unit
other than bytes get the whole body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.services.media import MediaBody, choose_media
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.multipart import (
    iter_multipart,
    multipart_content_type,
    multipart_framing,
    new_boundary,
)
from dicomweb_server.web.negotiation import WantedMedia

__all__ = ["byte_range", "if_none_match", "logged_stream", "media_response", "single_byte_range"]

_Chunk = TypeVar("_Chunk", bound=bytes | memoryview)
log = logging.getLogger("dicomweb_server.retrieve")
_RANGE_RE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")


def single_byte_range(header: str | None) -> str | None:
    """The Range header when it asks for one range of bytes, else None: the whole body is sent
    (RFC 9110 14.2: a range unit the server does not know is ignored, and a server may answer
    several ranges with the whole representation)."""
    if header is None:
        return None
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    return header


def byte_range(header: str, total: int) -> tuple[int, int] | None:
    """RFC 9110 14.1.2: one `bytes=first-last` or `bytes=-suffix` range → (start, length).

    None when the header cannot be satisfied; several ranges are not supported (also None).
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0 or total == 0:
            return None
        length = min(int(last), total)
        return total - length, length
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or end < start:
        return None
    return start, end - start + 1


def if_none_match(header: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison against each listed tag, or `*`."""
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == wanted:
            return True
    return False


def _if_range_holds(header: str | None, etag: str) -> bool:
    """RFC 9110 13.1.5: no If-Range, or one naming our (strong) entity tag; a date never
    matches (we send no Last-Modified)."""
    return header is None or header.strip() == etag


def media_response(
    request: Request, body: MediaBody, wanted: Sequence[WantedMedia], cache_control: str
) -> Response:
    """The body alone, or as one part when the Accept entry it answers is multipart."""
    matched = next(
        (w for w in wanted if choose_media([body.media_type], [w.media_type]) is not None), None
    )
    multipart = matched is not None and matched.multipart
    headers = {
        "ETag": body.etag,
        "Cache-Control": cache_control,
        "Accept-Ranges": "bytes",
        "Vary": "Accept",
    }
    if if_none_match(request.headers.get("if-none-match"), body.etag):
        return Response(status_code=304, headers=headers)
    start, length, status = 0, body.length, 200
    range_header = single_byte_range(request.headers.get("range"))
    if range_header is not None and _if_range_holds(request.headers.get("if-range"), body.etag):
        selected = byte_range(range_header, body.length)
        if selected is None:
            return error_response(
                416,
                f"range {range_header[:40]!r} cannot be satisfied: the body has {body.length}"
                " bytes",
                {"Content-Range": f"bytes */{body.length}", **headers},
            )
        start, length = selected
        status = 206
    content_range = f"bytes {start}-{start + length - 1}/{body.length}"
    if not multipart:
        headers["Content-Type"] = body.media_type  # as is: no charset appended to text/xml
        headers["Content-Length"] = str(length)
        if status == 206:
            headers["Content-Range"] = content_range
        return StreamingResponse(
            logged_stream(body.iter_bytes(start, length)), status_code=status, headers=headers
        )
    part = {"Content-Type": body.media_type}
    if body.transfer_syntax_uid is not None:
        part["Content-Type"] += f"; transfer-syntax={body.transfer_syntax_uid}"
    if status == 206:  # one range: said for the response too (RFC 9110 15.3.7.1)
        part["Content-Range"] = headers["Content-Range"] = content_range
    boundary = new_boundary()
    framing = multipart_framing([part], boundary)
    headers["Content-Length"] = str(sum(map(len, framing)) + length)
    headers["Content-Type"] = multipart_content_type(body.media_type, boundary)

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield part, body.iter_bytes(start, length)

    return StreamingResponse(
        logged_stream(iter_multipart(parts(), boundary)), status_code=status, headers=headers
    )


async def logged_stream(stream: AsyncIterator[_Chunk]) -> AsyncIterator[_Chunk]:
    """Once a stream has started its status is sent: log a failure, then abort the body."""
    try:
        async for chunk in stream:
            yield chunk
    except Exception:
        log.exception("response stream aborted")
        raise
