"""Stored objects sent by the kernel: the ASGI zero-copy send extension on uvicorn's httptools.

Only `dicomweb-server serve` installs this, and only on a uvicorn it was tested with
(serve/compat.py checks the version and every private attribute it relies on first).

A whole study is mostly stored files sent as they are. Written through the event loop each
byte is copied from the page cache into the socket by a `write` (a mapped file avoids only the
read copy), and that copy was the largest single cost of a study retrieve. With `sendfile` the
kernel sends the pages themselves.

uvicorn does not implement the extension (ASGI spec, "Zero Copy Send": a message of type
`http.response.zerocopy` with `file`, `offset`, `count` and `more_body`), so `install()` gives
its httptools protocol a request cycle that does, and advertises it in each request's scope
(never on a TLS connection: the kernel would send plaintext into it). Responses use it only
when the scope says so (web/responses.py).
"""

from __future__ import annotations

import asyncio
import os
import select
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import Message

from dicomweb_server.serve import compat
from dicomweb_server.storage.base import FileRegion, check_and_read_ahead
from dicomweb_server.web.responses import REGIONS, ZEROCOPY, as_body_message

__all__ = ["install", "install_problem", "sent_by_kernel"]

_POLL_SLICE_MS = 200  # a wait for a full socket returns to the loop this often
_POLL_THREADS = 8  # threads waiting for full sockets, per process (separate from codec work)
_MAX_IOV = 512  # buffers per writev (Linux takes 1024)
_executor: ThreadPoolExecutor | None = None
_sent_by_kernel = 0  # bytes this process sent with sendfile (for tests and diagnostics)


def sent_by_kernel() -> int:
    """Bytes sent with sendfile by this process since it started."""
    return _sent_by_kernel


class _BodyChunks:
    """Where uvicorn's protocol puts request body bytes (`body += data`, `len(body)`): the
    chunks themselves. uvicorn appends each to a bytearray and copies that into a new bytes
    object per receive, two copies of every byte a STOW-RS request uploads; `bytes()` of this
    returns a lone chunk as it is and joins several (one copy)."""

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def __iadd__(self, data: bytes) -> _BodyChunks:
        if data:
            self._chunks.append(data)
            self._size += len(data)
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        if len(self._chunks) == 1:
            return self._chunks[0]
        return b"".join(self._chunks)


def install_problem() -> str | None:
    """Why the request cycle cannot be installed, or None (compat.py has the details)."""
    if not hasattr(os, "sendfile") or not hasattr(select, "poll"):  # pragma: no cover
        return "this platform has no sendfile or poll"
    return compat.zerocopy_problem()


def install(*, send_files: bool = True) -> bool:
    """Give uvicorn's httptools protocol our request cycle (idempotent); False if unusable.

    The cycle always receives request bodies without uvicorn's two copies; with `send_files`
    it also offers the zero-copy send extension to the application.
    """
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # uvicorn[standard] brings httptools; without it there is nothing to do
        return False
    base = httptools_impl.RequestResponseCycle
    if getattr(base, "_dicomweb_zerocopy", False):
        base._send_files = send_files  # type: ignore[attr-defined]
        return True
    if not hasattr(os, "sendfile") or not hasattr(select, "poll"):  # pragma: no cover
        return False

    class ZeroCopyCycle(base):  # type: ignore[misc, valid-type]
        """uvicorn's cycle, plus `http.response.zerocopy` and a request body kept as chunks.

        From a response's first region on, its body goes straight to the socket (sendfile for
        regions, write for the bytes between them), provided nothing is queued in the transport
        then; a full socket is waited for in a poller thread. Otherwise, or for a response
        without a Content-Length, regions are mapped and written through the transport.
        """

        _dicomweb_zerocopy = True
        _send_files = send_files
        _direct: bool | None = None  # decided at the response's first region

        def __init__(self, scope: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(scope, *args, **kwargs)
            self.body = _BodyChunks()
            # Never under TLS: bytes written to the raw socket would bypass the encryption.
            if self._send_files and scope.get("scheme") != "https":
                extensions = scope.setdefault("extensions", {})
                extensions[ZEROCOPY] = {}
                extensions[REGIONS] = {}

        async def receive(self) -> Any:
            message = await super().receive()  # bytes(self.body), then a new bytearray...
            self.body = _BodyChunks()  # ...replaced before the protocol can append to it
            return message

        async def send(self, message: Any) -> None:
            kind = message["type"]
            if kind in (ZEROCOPY, REGIONS) and self._direct is None:
                self._direct = self._can_write_directly()
            if self._direct and kind in (ZEROCOPY, REGIONS, "http.response.body"):
                await _send_direct(self, message)
                return
            if kind == REGIONS:  # piece by piece, regions mapped (as_body_message would copy)
                for item in message["items"]:
                    body = item.view() if isinstance(item, FileRegion) else item
                    await super().send(
                        {"type": "http.response.body", "body": body, "more_body": True}
                    )
                if not message.get("more_body", False):
                    await super().send({"type": "http.response.body", "body": b""})
                return
            await super().send(as_body_message(message))

        def _can_write_directly(self) -> bool:
            socket = self.transport.get_extra_info("socket")
            return (
                socket is not None
                and self.transport.get_extra_info("sslcontext") is None
                and self.scope.get("scheme") != "https"
                and self.response_started
                and not self.response_complete
                and self.chunked_encoding is False  # a Content-Length: no chunk framing
                and self.scope["method"] != "HEAD"
                and self.transport.get_write_buffer_size() == 0
                and not self.flow.write_paused
            )

    httptools_impl.RequestResponseCycle = ZeroCopyCycle  # type: ignore[misc]
    return True


async def _send_direct(cycle: Any, message: Message) -> None:
    """Write a body, zero-copy or regions message to the cycle's socket, waiting while it is
    full."""
    if cycle.disconnected:
        return
    kind = message["type"]
    if kind == ZEROCOPY:
        count = int(message["count"])
    elif kind == REGIONS:
        count = sum(len(item) for item in message["items"])
    else:
        body = memoryview(message.get("body", b""))
        count = len(body)
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    cycle.expected_content_length -= count
    fd = cycle.transport.get_extra_info("socket").fileno()
    if kind == ZEROCOPY:
        sent = await _send_file(
            cycle, fd, message["file"].fileno(), int(message.get("offset", 0)), count
        )
    elif kind == REGIONS:
        sent = await _send_items(cycle, fd, message["items"])
    else:
        sent = await _write_all(cycle, fd, [body])
    if not sent:
        return  # the client is gone
    if not message.get("more_body", False):
        if cycle.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


async def _send_items(cycle: Any, fd: int, items: list[bytes | FileRegion]) -> bool:
    """Bytes written, regions sent by the kernel, in order; False once the client is gone.

    Every region's file is opened and its span read ahead (posix_fadvise) before the first
    byte is sent, so the disk reads of a batch overlap its sending.
    """
    files: list[int] = []
    try:
        for item in items:
            if isinstance(item, FileRegion):
                files.append(_open_region(item))
        opened = iter(files)
        pending: list[memoryview] = []  # bytes between regions, written together
        for item in items:
            if not isinstance(item, FileRegion):
                pending.append(memoryview(item))
                continue
            if pending and not await _write_all(cycle, fd, pending):
                return False
            pending = []
            if not await _send_file(cycle, fd, next(opened), item.offset, item.count):
                return False
        return not pending or await _write_all(cycle, fd, pending)
    finally:
        for file in files:
            os.close(file)


def _open_region(region: FileRegion) -> int:
    """A region's file, checked to hold the region, its span read ahead."""
    file = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check_and_read_ahead(file, region.offset, region.count)
    except EOFError:
        os.close(file)
        raise RuntimeError(f"{region.path} ends before its region: the object is short") from None
    except BaseException:
        os.close(file)
        raise
    return file


async def _send_file(cycle: Any, fd: int, file: int, offset: int, count: int) -> bool:
    """sendfile `count` bytes of `file` from `offset`; False if the client went away."""
    global _sent_by_kernel
    sent = 0
    while sent < count:
        try:
            written = os.sendfile(fd, file, offset + sent, count - sent)
        except BlockingIOError:
            await _writable(fd)
            if cycle.disconnected:
                return False
            continue
        except (BrokenPipeError, ConnectionResetError):
            cycle.transport.close()  # the client is gone; uvicorn marks the cycle disconnected
            return False
        if written == 0:
            raise RuntimeError("a file region ends before its count: the object is short")
        _sent_by_kernel += written
        sent += written
    return True


async def _write_all(cycle: Any, fd: int, views: list[memoryview]) -> bool:
    """write all of `views` with as few system calls as the socket takes (writev, up to
    _MAX_IOV buffers each); False if the client went away."""
    views = [view for view in views if len(view)]
    while views:
        try:
            written = os.writev(fd, views[:_MAX_IOV])
        except BlockingIOError:
            await _writable(fd)
            if cycle.disconnected:
                return False
            continue
        except (BrokenPipeError, ConnectionResetError):
            cycle.transport.close()
            return False
        done = 0
        while done < len(views) and written >= len(views[done]):
            written -= len(views[done])
            done += 1
        views = views[done:]
        if written:
            views[0] = views[0][written:]
    return True


async def _writable(fd: int) -> None:
    """Return once the socket takes more bytes, or after a short while (to notice a client that
    went away). The event loop owns the descriptor's events, so a poller thread waits."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_poller(), _poll_out, fd)


def _poll_out(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(_POLL_SLICE_MS)


def _poller() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(_POLL_THREADS, thread_name_prefix="dicomweb-sendfile-wait")
    return _executor
