"""Request header limits uvicorn's httptools protocol lacks: bytes, count and a read deadline.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) but not a request's header
block: a client could stream hundreds of MiB of headers, or keep a connection open by sending
one header byte a minute (red-team findings, issue 23). uvicorn takes the HTTP protocol class
as configuration (`Config(http=...)`); this subclass of its httptools protocol counts header
bytes and header lines and sets a deadline from a request's first byte (or the connection's
opening) to the end of its headers: past a limit the client gets 431, past the deadline 408,
and the connection is closed. Between requests no deadline runs: an idle kept-alive
connection is uvicorn's, closed after DICOMWEB_KEEP_ALIVE_TIMEOUT, and a response being sent
is never cut by the next request's deadline (a pipelined request whose headers stall during
it only stops the connection from being kept alive after it). Past DICOMWEB_MAX_CONNECTIONS
(uvicorn's `limit_concurrency`, tested as uvicorn does) the 503 is ours too: JSON with a reason
and Retry-After. It relies on httptools' parser
callbacks (`on_message_begin`, `on_header`, `on_headers_complete`, `on_message_complete`)
and on uvicorn's `send_400_response`, which `protocol_problem` checks before it is used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderLimits", "LimitedHttpToolsProtocol", "limit_headers", "protocol_problem"]

log = logging.getLogger("dicomweb_server.serve")

_STATUS_TEXT = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_RETRY_AFTER = 1  # seconds a client refused for DICOMWEB_MAX_CONNECTIONS is told to wait


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
        "on_message_complete",
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

    # What the connection waits for: "request" (no byte of the next request yet), "headers"
    # (a request has begun, its headers have not ended) or None (a body, or a response)
    _awaiting: str | None = "request"
    _header_bytes = 0
    _tail = b""  # the last bytes seen, for a header end split across chunks
    _header_count = 0
    _refusal: tuple[int, str] | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte is closed after the header deadline too:
        # uvicorn's keep-alive timer only runs after a response.
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting == "request" and data:
            self._begin_headers()  # the next request's first byte: its deadline starts now
        if self._awaiting == "headers":
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
        if self._awaiting != "headers":  # a pipelined request begun inside a chunk
            self._begin_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_count:
            self._refusal = (431, f"a request may carry at most {self.limits.max_count} headers")
            raise _HeaderLimitError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting = None
        self._stop_deadline()
        if self._over_connection_limit():
            # uvicorn's own answer would be a text/plain 503 without a reason or Retry-After
            self._refusal = (503, "the server is at DICOMWEB_MAX_CONNECTIONS; try again shortly")
            raise _HeaderLimitError
        super().on_headers_complete()

    def _over_connection_limit(self) -> bool:
        """uvicorn's own test for `limit_concurrency`, made first so the 503 is ours."""
        limit = self.config.limit_concurrency
        state = self.server_state
        return limit is not None and (len(state.connections) >= limit or len(state.tasks) >= limit)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever arrives next begins another request; until it does, the connection is
        # idle and uvicorn's keep-alive timeout, not the header deadline, bounds it.
        self._awaiting = "request"

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is not None:
            self._refuse(*refusal)
        else:
            super().send_400_response(msg)

    def _begin_headers(self) -> None:
        self._awaiting = "headers"
        self._header_bytes = 0
        self._tail = b""
        self._header_count = 0
        if self._deadline is None:  # a new connection's deadline runs from its opening
            self._start_deadline()

    def _start_deadline(self) -> None:
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
        if self._awaiting is None or self.transport.is_closing():
            return
        if self._awaiting == "request":  # a new connection that never sent a byte: close it
            self.transport.close()
            return
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not getattr(cycle, "response_complete", True):
            # A pipelined request stalled while an earlier response is sent: that response
            # finishes, then the connection closes instead of waiting for the rest.
            log.info("closing a connection after its response: request headers stalled")
            cycle.keep_alive = False
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
        retry = b"retry-after: %d\r\n" % _RETRY_AFTER if status == 503 else b""
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n%s"
            b"content-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _STATUS_TEXT[status], retry, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def limit_headers(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """Bound this process's request headers by `limits`; the protocol class to give uvicorn."""
    LimitedHttpToolsProtocol.limits = limits
    return LimitedHttpToolsProtocol
