"""Request header limits uvicorn's httptools protocol lacks: bytes, count and a read deadline.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) but not a request's header
block: a client could stream hundreds of MiB of headers, or keep a connection open by sending
one header byte a minute (red-team findings, issue 23). uvicorn takes the HTTP protocol class
as configuration (`Config(http=...)`); this subclass of its httptools protocol counts header
bytes and header lines and sets a deadline from a request's first byte (or the connection's
opening) to the end of its headers: past a limit the client gets 431, past the deadline 408,
and the connection is closed. It relies on httptools' parser callbacks (`on_message_begin`,
`on_header`, `on_headers_complete`) and on uvicorn's `send_400_response` and
`on_response_complete`, which compat.py checks before it is used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderLimits", "LimitedHttpToolsProtocol", "limit_headers", "protocol_problem"]

log = logging.getLogger("dicomweb_server.serve")

_STATUS_TEXT = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class HeaderLimits:
    """The bounds one connection's request headers must keep."""

    def __init__(self, max_bytes: int, max_count: int, timeout: float) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.timeout = timeout


class _HeaderLimitError(Exception):
    """Raised inside a parser callback to stop parsing; the protocol answers for it."""


def protocol_problem() -> str | None:
    """Why the limited protocol cannot be built on this uvicorn, or None."""
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_header",
        "on_headers_complete",
        "on_response_complete",
        "send_400_response",
    ):
        if not callable(getattr(HttpToolsProtocol, name, None)):
            return f"uvicorn's HttpToolsProtocol no longer has {name}()"
    return None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol, with header bytes, header count and a header deadline bounded.

    A module-level class, so uvicorn can hand it to worker processes; `limit_headers`
    sets its bounds in each process.
    """

    limits = HeaderLimits(64 << 10, 100, 15.0)

    _in_headers = True
    _header_bytes = 0
    _tail = b""  # the last bytes seen, for a header end split across chunks
    _header_count = 0
    _refusal: tuple[int, str] | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            # Only the bytes up to the blank line that ends the headers count: a chunk may
            # carry the start of the body too.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            self._tail = seen[-3:]
            if self._header_bytes > self.limits.max_bytes:
                self._refuse(431, f"request headers exceed {self.limits.max_bytes} bytes")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:
            self._start_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_count:
            self._refusal = (431, f"a request may carry at most {self.limits.max_count} headers")
            raise _HeaderLimitError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_headers()  # the next request's header block, on a kept-alive connection

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is not None:
            self._refuse(*refusal)
        else:
            super().send_400_response(msg)

    def _start_headers(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._tail = b""
        self._header_count = 0
        self._stop_deadline()
        self._deadline = asyncio.get_running_loop().call_later(
            self.limits.timeout, self._header_timeout
        )

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if not self._in_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0:  # no request begun: an idle connection, just close it
            self.transport.close()
            return
        self._refuse(408, f"request headers did not arrive within {self.limits.timeout:g} seconds")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with our JSON error body and close the connection."""
        self._stop_deadline()
        client = self.client or ("-", 0)
        log.info("refused a request from %s: %s", client[0], reason)
        if self.transport.is_closing():
            return
        body = orjson.dumps({"status": status, "reason": reason})
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _STATUS_TEXT[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def limit_headers(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """Bound this process's request headers by `limits`; the protocol class to give uvicorn."""
    LimitedHttpToolsProtocol.limits = limits
    return LimitedHttpToolsProtocol
