"""What a browser-based viewer needs besides DICOMweb itself: CORS, entity tags, compression.

Three ASGI middlewares, outermost first (`add_browser_middleware` installs them):

- `CorsMiddleware`: answers preflights (any requested header unless configured otherwise:
  viewers send Accept, Authorization, Range) and labels responses for allowed origins (with
  a list of them, every response says `Vary: Origin`).
  Reads (GET, HEAD, OPTIONS) and writes (POST, ...) have separate origin lists, so by default
  a viewer on any host can read while only configured origins may store. A write a browser
  sends from any other origin is refused with a 403 before it runs: a page may send a POST
  without credentials and without a preflight (a form, `sendBeacon`), and on a server without
  access control that alone would reject studies.
- `EntityTagMiddleware`: metadata and frames get a weak ETag (a hash of the body, the
  multipart boundary left out), Cache-Control, and a 304 for a matching If-None-Match.
  Bodies above a bound are streamed through without a tag. Any response whose handler
  negotiated on Accept (web/params.py `accept_of`) gets `Vary: Accept`, its 304s too
  (`label_vary_accept`, called where every response start passes: web/observe.py).
- `CompressionMiddleware`: JSON bodies (QIDO, metadata, capabilities) as br or gzip when
  the client accepts it, streamed chunk by chunk. Multipart and images are never touched.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.config import Settings
from dicomweb_server.services.memory_cache import MemoryCache
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.rendered import if_none_match
from dicomweb_server.web.responses import as_body_message

__all__ = [
    "CompressionMiddleware",
    "CorsMiddleware",
    "EntityTagMiddleware",
    "add_browser_middleware",
    "choose_encoding",
    "weak_etag",
]

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WRITE_METHODS = ("POST", "PUT", "DELETE")
# Response headers a script may read (RFC 9110 names beyond the CORS-safelisted ones).
_EXPOSED = (
    "ETag, Content-Location, Content-Range, Accept-Ranges, Warning, Location, X-Request-ID,"
    " Content-Disposition"  # a zip download's file name, for a viewer that fetches it
)
_TAGGED_PATHS = re.compile(r"/(metadata|instances/[^/]+/frames/[^/]+)$")
_INSTANCE_PATH = re.compile(r"/instances/[^/]+/")
_ETAG_MAX_BYTES = 16 << 20  # bodies above this stream through untagged
_COMPRESSIBLE = ("application/json", "application/dicom+json", "application/vnd.sun.wadl+xml")
_GZIP_LEVEL = 5
_BROTLI_QUALITY = 4  # fast: JSON shrinks about as much as gzip -9 at a fraction of the time


def _origins(text: str) -> frozenset[str] | None:
    """`*` → None (any origin); otherwise the listed origins (an empty set: none)."""
    items = {item.strip().rstrip("/").lower() for item in text.split(",") if item.strip()}
    return None if "*" in items else frozenset(items)


_DEFAULT_PORTS = {"http": 80, "https": 443}
# Sec-Fetch-Site values of a request some other origin's page made (Fetch Metadata)
_OTHER_SITE = frozenset({"cross-site", "same-site"})


def _origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL or an Origin header, lowercased, the scheme's default
    port left out (as browsers serialize an origin); None when it has no host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def _request_origin(scope: Scope, headers: Headers) -> str | None:
    """The origin a page served by this server, at the address this request names, has."""
    host = headers.get("host")
    if not host:
        return None
    return _origin_of(f"{scope.get('scheme', 'http')}://{host}")


def _append_vary(headers: MutableHeaders, *names: str) -> None:
    """Merge `names` into one Vary header (every Vary line the response has), each once."""
    present: list[str] = []
    for value in [*headers.getlist("vary"), *names]:
        for name in value.split(","):
            name = name.strip()
            if name and name.lower() not in (v.lower() for v in present):
                present.append(name)
    headers["Vary"] = ", ".join(present)


class CorsMiddleware:
    """Cross-origin resource sharing (Fetch standard, CORS protocol) for DICOMweb viewers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        read_origins: str = "*",
        write_origins: str = "",
        allow_headers: str = "",
        max_age: int = 600,
        base_url: str = "",
    ) -> None:
        self.app = app
        self.read = _origins(read_origins)
        self.write = _origins(write_origins)
        # Listed read origins: whether an answer is labelled depends on Origin, so every
        # answer says so, or a cache could hand one fetched without Origin (an <img>) to a
        # later CORS fetch, which would fail for want of Access-Control-Allow-Origin.
        self.vary_origin = bool(self.read)
        # The server's own origin as browsers see it behind a proxy (DICOMWEB_BASE_URL)
        self.public_origin = _origin_of(base_url) if base_url else None
        self.allow_headers = frozenset(
            h.strip().lower() for h in allow_headers.split(",") if h.strip()
        )
        self.max_age = max_age

    def _allowed(self, origin: str, method: str) -> bool:
        origins = self.read if method in _READ_METHODS else self.write
        return origins is None or origin.rstrip("/").lower() in origins

    def _any_origin(self, method: str) -> bool:
        return (self.read if method in _READ_METHODS else self.write) is None

    def _write_refusal(self, scope: Scope, headers: Headers, origin: str | None) -> str | None:
        """Why a browser's write from another origin may not run; None when it may.

        Without an Origin header the request is a tool's (curl, a PACS), unless Fetch
        Metadata says a page of another site sent it. `Origin: null` (a sandboxed frame, a
        redirect across origins) names no origin that could be trusted. The server's own
        origin (the viewer at /viewer/) may write, as may the listed write origins.
        """
        if origin is None:
            if headers.get("sec-fetch-site", "").strip().lower() in _OTHER_SITE:
                return (
                    "a page of another site may not write here; list its origin in"
                    " DICOMWEB_CORS_WRITE_ORIGINS"
                )
            return None
        if origin.strip().lower() == "null":
            return (
                "a request with Origin: null (a sandboxed frame or a redirected request) may not"
                " write here; serve the page from an origin listed in DICOMWEB_CORS_WRITE_ORIGINS"
            )
        if self._allowed(origin, "POST"):
            return None
        named = _origin_of(origin)
        if named is not None and named in (self.public_origin, _request_origin(scope, headers)):
            return None
        return (
            f"origin {origin[:100]!r} may not write here: a browser may write from this"
            " server's own origin or from one listed in DICOMWEB_CORS_WRITE_ORIGINS"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        method = scope.get("method", "GET")
        if method not in _READ_METHODS:
            refusal = self._write_refusal(scope, headers, origin)
            if refusal is not None:
                await error_response(403, refusal)(scope, receive, send)
                return
        if origin is None:
            await self.app(scope, receive, self._varied(send))
            return
        requested = headers.get("access-control-request-method")
        if method == "OPTIONS" and requested is not None:
            await self._preflight(origin, requested.strip().upper(), headers)(scope, receive, send)
            return
        if not self._allowed(origin, method):
            # no CORS headers: the browser hides it (a write here is from our own origin)
            await self.app(scope, receive, self._varied(send))
            return
        any_origin = self._any_origin(method)

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = "*" if any_origin else origin
                out["Access-Control-Expose-Headers"] = _EXPOSED
                if not any_origin or self.vary_origin:
                    _append_vary(out, "Origin")
            await send(message)

        await self.app(scope, receive, labelled)

    def _varied(self, send: Send) -> Send:
        """`send`, adding `Vary: Origin` to the response start when the labels depend on it."""
        if not self.vary_origin:
            return send

        async def varied(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                _append_vary(MutableHeaders(scope=message), "Origin")
            await send(message)

        return varied

    def _preflight(self, origin: str, method: str, headers: Headers) -> Response:
        asked = [
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        ]
        if not self._allowed(origin, method):
            return error_response(403, f"origin {origin[:100]!r} may not send {method[:16]}")
        if self.allow_headers and not set(asked) <= self.allow_headers:
            refused = sorted(set(asked) - self.allow_headers)
            return error_response(403, f"request headers not allowed: {', '.join(refused[:8])}")
        methods = sorted(_READ_METHODS)
        if any(self._allowed(origin, m) for m in _WRITE_METHODS):
            methods += list(_WRITE_METHODS)
        any_origin = self._any_origin(method)
        reply = Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": "*" if any_origin else origin,
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Max-Age": str(self.max_age),
            },
        )
        if asked:
            reply.headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        _append_vary(
            reply.headers,
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
        )
        return reply


class EntityTagMiddleware:
    """Weak ETags, Cache-Control and 304s for metadata and frames (RFC 9110 8.8.3, 13.1.2).

    The tag hashes the body (multipart boundaries left out, as they are random per response),
    so it changes exactly when the content does; a 304 saves the transfer, not the work.
    """

    def __init__(self, app: ASGIApp, *, max_age: int = 3600, max_bytes: int = _ETAG_MAX_BYTES):
        self.app = app
        self.max_age = max_age
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope.get("method") not in ("GET", "HEAD") or not _TAGGED_PATHS.search(path):
            await self.app(scope, receive, send)
            return
        immutable = bool(_INSTANCE_PATH.search(path))
        cache_control = f"private, max-age={self.max_age}" if immutable else "private, no-cache"
        condition = Headers(scope=scope).get("if-none-match")
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passing = False  # over the bound, not a 200, or tagged by the app: stream as it comes
        dropping = False  # a 304 for a body the app tagged: its body is not sent

        async def buffered(message: Message) -> None:
            nonlocal start, size, passing, dropping
            if dropping:
                return
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                if message["status"] != 200:
                    passing = True
                    await send(message)
                    return
                headers = MutableHeaders(scope=start)
                tag = headers.get("etag")
                if tag is not None:  # computed by the app once for the body it keeps
                    headers.setdefault("Cache-Control", cache_control)
                    if if_none_match(condition, tag):
                        _not_modified(start)
                        dropping = True
                        await send(start)
                        await send({"type": "http.response.body", "body": b""})
                        return
                    passing = True
                    await send(start)
                return
            message = as_body_message(message)  # a file region: its bytes are hashed
            if message["type"] != "http.response.body":
                await send(message)
                return
            assert start is not None
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            more = message.get("more_body", False)
            if more and size <= self.max_bytes:
                return
            headers = MutableHeaders(scope=start)
            headers.setdefault("Cache-Control", cache_control)
            if more:  # too big to tag: send what we have and stream the rest
                passing = True
                await send(start)
                await send(
                    {"type": "http.response.body", "body": b"".join(chunks), "more_body": True}
                )
                chunks.clear()
                return
            etag = _weak_etag(b"".join(chunks), headers.get("content-type", ""))
            headers["ETag"] = etag
            if if_none_match(condition, etag):
                _not_modified(start)
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                return
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks)})

        await self.app(scope, receive, buffered)


def label_vary_accept(scope: Scope, start: Message) -> None:
    """Label a response start `Vary: Accept` when its handler read what the client accepts
    (params.accept_of leaves `vary_accept` in the request state): its body, or its 406,
    depends on Accept, and a cache must not give it to another Accept (RFC 9110 12.5.5). A
    304 is labelled too: it stands for the 200 it revalidates. Called by the outermost
    request middleware (web/observe.py), which sees every response start anyway."""
    if scope["state"].get("vary_accept"):
        _append_vary(MutableHeaders(scope=start), "Accept")


def _weak_etag(body: bytes, content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match:
        body = body.replace(match.group(1).encode("latin-1", "replace"), b"")
    return weak_etag(hashlib.sha256(body).hexdigest())


def weak_etag(sha256_hex: str) -> str:
    """The weak entity tag of a body whose SHA-256 is `sha256_hex` (computed here or by the
    app, which may tag a body it keeps so that it is not hashed again per request)."""
    return 'W/"' + sha256_hex[:32] + '"'


def _not_modified(start: Message) -> None:
    """Turn a 200's start message into a 304's: no body headers."""
    headers = MutableHeaders(scope=start)
    for name in ("content-type", "content-length", "content-encoding"):
        if name in headers:
            del headers[name]
    start["status"] = 304


class _Encoder:
    """A streaming compressor: `compress(chunk)` then `finish()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.compress: Callable[[bytes], bytes]
        self.finish: Callable[[], bytes]
        if name == "br":
            brotli = importlib.import_module("brotli")
            compressor = brotli.Compressor(quality=_BROTLI_QUALITY)
            self.compress = compressor.process
            self.finish = compressor.finish
        else:
            gzip = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
            self.compress = gzip.compress
            self.finish = gzip.flush


def _brotli_available() -> bool:
    try:
        importlib.import_module("brotli")
    except ImportError:
        return False
    return True


def choose_encoding(accept_encoding: str | None, brotli: bool) -> str | None:
    """`br` or `gzip` by the client's q-values (br first on a tie), or None."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name.strip().lower()] = q
    star = weights.get("*", 0.0)
    candidates = (["br"] if brotli else []) + ["gzip"]
    best = max(candidates, key=lambda n: weights.get(n, star))
    return best if weights.get(best, star) > 0 else None


class CompressionMiddleware:
    """br or gzip for JSON responses of at least `min_bytes` when the client accepts it.

    A whole body the app tagged with an ETag of its content (study and series metadata) is
    compressed once per encoding and kept, up to `kept_bytes` per process: a viewer opening a
    series again gets the same compressed bytes without the compression work.
    """

    def __init__(self, app: ASGIApp, *, min_bytes: int = 1024, kept_bytes: int = 0) -> None:
        self.app = app
        self.min_bytes = min_bytes
        self.brotli = _brotli_available()
        self.kept = MemoryCache(kept_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
            return
        encoding = choose_encoding(Headers(scope=scope).get("accept-encoding"), self.brotli)
        if encoding is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        pending: list[bytes] = []
        pending_size = 0
        encoder: _Encoder | None = None
        passing = False
        kept_as: str | None = None  # the key a tagged whole body's compressed bytes go under

        async def compressing(message: Message) -> None:
            nonlocal start, pending_size, encoder, passing, kept_as
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                media = headers.get("content-type", "").split(";")[0].strip().lower()
                length = headers.get("content-length")
                if (
                    media not in _COMPRESSIBLE
                    or "content-encoding" in headers
                    or message["status"] in (204, 304)
                    or (length is not None and length.isdigit() and int(length) < self.min_bytes)
                ):
                    passing = True
                    await send(message)
                    return
                start = message
                tag = headers.get("etag")
                if tag is not None and self.kept.limit:
                    kept_as = f"{encoding} {tag} {scope.get('path', '')}"
                return
            message = as_body_message(message)  # a file region: its bytes are compressed
            if message["type"] != "http.response.body":
                await send(message)
                return
            assert start is not None
            body = message.get("body", b"")
            more = message.get("more_body", False)
            single = encoder is None and not pending and not more and len(body) >= self.min_bytes
            if kept_as is not None and single:  # a tagged whole body: compressed once, kept
                data = self._compressed(kept_as, encoding, body)
                await _send_kept(send, start, encoding, data)
                return
            if encoder is None:
                pending.append(body)
                pending_size += len(body)
                if more and pending_size < self.min_bytes:
                    return
                whole = b"".join(pending)
                pending.clear()
                if not more and len(whole) < self.min_bytes:
                    passing = True
                    await send(start)
                    await send({"type": "http.response.body", "body": whole})
                    return
                encoder = _Encoder(encoding)
                headers = MutableHeaders(scope=start)
                headers["Content-Encoding"] = encoding
                _append_vary(headers, "Accept-Encoding")
                if "content-length" in headers:
                    del headers["content-length"]
                await send(start)
                body = whole
            data = encoder.compress(body)
            if not more:
                data += encoder.finish()
            if data or not more:
                await send({"type": "http.response.body", "body": data, "more_body": more})

        await self.app(scope, receive, compressing)

    def _compressed(self, key: str, encoding: str, body: bytes) -> bytes:
        data = self.kept.get(key)
        if data is None:
            encoder = _Encoder(encoding)
            data = encoder.compress(body) + encoder.finish()
            self.kept.put(key, data)
        return data


async def _send_kept(send: Send, start: Message, encoding: str, data: bytes) -> None:
    headers = MutableHeaders(scope=start)
    headers["Content-Encoding"] = encoding
    _append_vary(headers, "Accept-Encoding")
    headers["Content-Length"] = str(len(data))
    await send(start)
    await send({"type": "http.response.body", "body": data})


def add_browser_middleware(app: Starlette, settings: Settings) -> None:
    """Install compression, entity tags and CORS (outermost last) on `app`.

    CORS is installed even with no origin listed: it is what refuses browsers' writes from
    other origins."""
    if settings.compress_json:
        app.add_middleware(
            CompressionMiddleware,
            min_bytes=settings.compress_min_bytes,
            kept_bytes=settings.compressed_memory_cache_bytes,
        )
    app.add_middleware(EntityTagMiddleware, max_age=settings.http_cache_max_age)
    app.add_middleware(
        CorsMiddleware,
        read_origins=settings.cors_origins,
        write_origins=settings.cors_write_origins,
        allow_headers=settings.cors_allow_headers,
        max_age=settings.cors_max_age,
        base_url=settings.base_url,
    )
