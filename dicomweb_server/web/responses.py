"""Responses whose bodies hold file regions: the ASGI zero-copy send extension, and ours.

A whole study is mostly stored files sent as they are. Where the server offers the ASGI
"Zero Copy Send" extension (a message of type `http.response.zerocopy` with `file`, `offset`,
`count` and `more_body`) and our regions extension (several body pieces, bytes and file
regions, in one message), the kernel sends the files (serve/zerocopy.py). Anywhere else
(tests over httpx, other ASGI servers, a middleware that must see the bytes) a region is
sent as a mapped view, byte for byte the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from dicomweb_server.services.bodies import FileRegion, map_view

__all__ = ["REGIONS", "ZEROCOPY", "PiecesResponse", "RegionStreamingResponse", "as_body_message"]

ZEROCOPY = "http.response.zerocopy"
# Our own extension: several body pieces (bytes, and file regions sent by the kernel) in one
# message, {"type": REGIONS, "items": [...], "more_body": bool}. A study of small files sent
# as one message per piece spent more CPU in Python per instance than the kernel did.
REGIONS = "dicomweb.response.regions"


def as_body_message(message: Message) -> Message:
    """A zero-copy message as the equivalent body message (the region mapped, not copied); a
    regions message as one body (its pieces joined: a copy, for middlewares that must see the
    bytes)."""
    if message["type"] == REGIONS:
        pieces = [
            item.view() if isinstance(item, FileRegion) else item for item in message["items"]
        ]
        body: bytes | memoryview = b"".join(pieces)
    elif message["type"] == ZEROCOPY:
        count = int(message["count"])
        body = map_view(message["file"], int(message.get("offset", 0)), count) if count else b""
    else:
        return message
    return {
        "type": "http.response.body",
        "body": body,
        "more_body": message.get("more_body", False),
    }


class RegionStreamingResponse(StreamingResponse):
    """A streaming response whose body may hold `FileRegion`s, and lists of pieces (bytes and
    regions): sent as zero-copy and regions messages when the server offers the extensions,
    else piece by piece, regions as mapped views."""

    _zerocopy = False
    _regions = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        self._zerocopy = ZEROCOPY in extensions
        self._regions = REGIONS in extensions
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            if not isinstance(chunk, list):
                await self._send_piece(send, chunk)
            elif self._regions:
                await send({"type": REGIONS, "items": chunk, "more_body": True})
            else:
                for piece in chunk:
                    await self._send_piece(send, piece)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_piece(self, send: Send, chunk: Any) -> None:
        if isinstance(chunk, FileRegion) and self._zerocopy:
            with chunk.open() as file:
                await send(
                    {
                        "type": ZEROCOPY,
                        "file": file,
                        "offset": chunk.offset,
                        "count": chunk.count,
                        "more_body": True,
                    }
                )
            return
        if isinstance(chunk, FileRegion):
            body: bytes | memoryview = chunk.view()
        else:
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": body, "more_body": True})


class PiecesResponse(Response):
    """A whole body already in memory as a few pieces (bytes and views, such as a frame between
    its multipart framing), with its Content-Length: one regions message where the server
    takes them (the pieces are written as they are), else one body (joined, a copy). Unlike a
    streaming response it needs no task to watch for a disconnect: nothing is left to wait for.
    """

    def __init__(
        self,
        pieces: Sequence[bytes | memoryview],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.pieces = list(pieces)
        super().__init__(None, 200, dict(headers or {}), media_type)
        self.headers["content-length"] = str(sum(len(piece) for piece in self.pieces))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if REGIONS in (scope.get("extensions") or {}):
            await send({"type": REGIONS, "items": self.pieces, "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"".join(self.pieces)})
