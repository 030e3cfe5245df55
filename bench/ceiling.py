"""The do-nothing ceiling: replays recorded responses with sendfile, as fast as HTTP allows.

The harness records, once, the exact bytes our server answered to every GET it will time,
into a folder with a `manifest.json`; this server answers the same request (method, target,
Accept) with those bytes, and any POST with a recorded STOW response after reading and
discarding the body. It does no DICOM work at all, so its figures are what the machine, the
loopback and the client can do: the physical ceiling for each measurement.

Run as `python -m bench ceiling FOLDER PORT WORKERS`; workers are forked processes sharing one
listening socket, like uvicorn's. The event loop is asyncio's own (its sendfile is zero-copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Recorded", "load_manifest", "request_key", "save_manifest", "serve"]

_IN_MEMORY = 1 << 20  # bodies up to this size are kept in memory, larger ones sent by sendfile
_READ = 1 << 20


def request_key(method: str, target: str, accept: str | None) -> str:
    """How a request is looked up: POSTs by method and path only (bodies differ per round)."""
    if method == "POST":
        return "POST " + target.split("?", 1)[0]
    return f"{method} {target} {accept or ''}"


@dataclass(slots=True)
class Recorded:
    """One response: status, content type and where its body is."""

    status: int
    content_type: str
    file: str
    size: int


def save_manifest(folder: Path, entries: dict[str, Recorded]) -> None:
    data = {
        key: {"status": e.status, "content_type": e.content_type, "file": e.file, "size": e.size}
        for key, e in entries.items()
    }
    (folder / "manifest.json").write_text(json.dumps(data))


def load_manifest(folder: Path) -> dict[str, Recorded]:
    data = json.loads((folder / "manifest.json").read_text())
    return {key: Recorded(**value) for key, value in data.items()}


_REASONS = {200: "OK", 202: "Accepted", 404: "Not Found", 206: "Partial Content"}


class _Table:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.heads: dict[str, bytes] = {}
        self.bodies: dict[str, bytes | None] = {}
        self.files: dict[str, tuple[str, int]] = {}
        for key, entry in load_manifest(folder).items():
            reason = _REASONS.get(entry.status, "OK")
            self.heads[key] = (
                f"HTTP/1.1 {entry.status} {reason}\r\nContent-Type: {entry.content_type}\r\n"
                f"Content-Length: {entry.size}\r\n\r\n"
            ).encode("latin-1")
            path = str(folder / entry.file)
            if entry.size <= _IN_MEMORY:
                self.bodies[key] = Path(path).read_bytes()
            else:
                self.bodies[key] = None
                self.files[key] = (path, entry.size)


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


async def _handle(
    table: _Table, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    loop = asyncio.get_running_loop()
    sock = writer.get_extra_info("socket")
    if sock is not None:  # no Nagle: a small response must not wait for the client's ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            remaining = int(headers.get("content-length", "0") or 0)
            while remaining:
                chunk = await reader.read(min(remaining, _READ))
                if not chunk:
                    return
                remaining -= len(chunk)
            key = request_key(method, target, headers.get("accept"))
            head_bytes = table.heads.get(key)
            if head_bytes is None:
                writer.write(_NOT_FOUND)
                await writer.drain()
                continue
            body = table.bodies[key]
            if body is not None:
                writer.write(head_bytes + body)  # one write, one segment train
                await writer.drain()
            else:
                path, size = table.files[key]
                writer.write(head_bytes)
                await writer.drain()
                with open(path, "rb") as file:  # noqa: ASYNC230 - a local open is instant
                    await loop.sendfile(writer.transport, file, 0, size)
    except (ConnectionError, OSError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _worker(table: _Table, sock: socket.socket) -> None:
    server = await asyncio.start_server(
        lambda r, w: _handle(table, r, w), sock=sock, limit=1 << 16, backlog=512
    )
    async with server:
        await server.serve_forever()


def serve(folder: Path, port: int, workers: int) -> None:
    """Listen on 127.0.0.1:port and serve the recorded responses in `workers` processes."""
    table = _Table(folder)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    sock.setblocking(False)
    children = []
    for _ in range(max(1, workers) - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(_worker(table, sock))
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ceiling: serving {len(table.heads)} responses on 127.0.0.1:{port}", flush=True)
    asyncio.run(_worker(table, sock))
