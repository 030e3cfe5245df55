"""The measuring client: aiohttp over keep-alive connections, on uvloop.

Every request reads its whole body (counted, not kept, unless asked) so that a time covers
the full response; URLs are sent exactly as built (`encoded=True`), which lets the ceiling
replay the very requests it recorded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

__all__ = [
    "Req",
    "Result",
    "fetch",
    "multipart_body",
    "new_session",
    "run_parallel",
    "run_serial",
    "stow",
    "stow_requests",
]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Req:
    """A GET (or a POST with `body`) relative to a server's DICOMweb root."""

    path: str
    accept: str | None = None
    body: bytes | None = None
    content_type: str | None = None

    @property
    def method(self) -> str:
        return "GET" if self.body is None else "POST"


@dataclass(slots=True)
class Result:
    """Status, bytes received and seconds taken by one request; `error` on failure."""

    status: int
    size: int
    seconds: float
    error: str = ""
    body: bytes | None = field(default=None, repr=False)
    content_type: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and 200 <= self.status < 300


def new_session(connections: int = 64) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=300, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=900, sock_read=300),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


# Headers every request to a root carries (the bench's API key for the server with auth on)
ROOT_HEADERS: dict[str, dict[str, str]] = {}


async def fetch(
    session: aiohttp.ClientSession, root: str, req: Req, *, keep: bool = False
) -> Result:
    """One request, timed from send to the last body byte."""
    headers = dict(ROOT_HEADERS.get(root, {}))
    if req.accept is not None:
        headers["Accept"] = req.accept
    if req.content_type is not None:
        headers["Content-Type"] = req.content_type
    url = URL(root + req.path, encoded=True)
    started = time.perf_counter()
    try:
        async with session.request(req.method, url, headers=headers, data=req.body) as response:
            if keep:
                body = await response.read()
                size = len(body)
            else:
                body = None
                size = 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
            elapsed = time.perf_counter() - started
            return Result(
                response.status,
                size,
                elapsed,
                body=body,
                content_type=response.headers.get("Content-Type", ""),
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Result(0, 0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")


async def run_serial(
    session: aiohttp.ClientSession, root: str, reqs: Iterable[Req]
) -> list[Result]:
    """One request at a time (latency)."""
    return [await fetch(session, root, req) for req in reqs]


async def run_parallel(
    session: aiohttp.ClientSession, root: str, reqs: Sequence[Req], concurrency: int
) -> tuple[float, list[Result]]:
    """`concurrency` requests in flight until all are done; returns (wall seconds, results)."""
    queue = list(reversed(reqs))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            results.append(await fetch(session, root, queue.pop()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, results


def multipart_body(files: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS body of application/dicom parts and its Content-Type."""
    boundary = uuid.uuid4().hex
    pieces = []
    for data in files:
        pieces.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        pieces.append(data)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_requests(files: Sequence[bytes], per_request: int) -> list[Req]:
    """The files split into STOW-RS requests of `per_request` instances."""
    reqs = []
    for start in range(0, len(files), per_request):
        body, content_type = multipart_body(files[start : start + per_request])
        reqs.append(Req("/studies", "application/dicom+json", body, content_type))
    return reqs


async def stow(
    session: aiohttp.ClientSession, root: str, reqs: Sequence[Req], concurrency: int
) -> tuple[float, list[Result]]:
    """Send prepared STOW-RS requests with `concurrency` in flight."""
    return await run_parallel(session, root, reqs, concurrency)
