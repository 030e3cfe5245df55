"""Browser citizenship: CORS, entity tags on metadata and frames, JSON compression."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from test_wado import _store

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.web.browser import choose_encoding

BASE = "http://testserver/dicomweb"
VIEWER = "http://viewer.example:3000"


@pytest.fixture
def backend() -> str:
    """Middleware behaviour does not depend on the backends: the embedded pair suffices."""
    return "embedded"


@pytest.fixture
async def series(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    study, series_uid = uid(), uid()
    datasets = [ct_dataset(study, series_uid, instance_number=n, seed=n, frames=2) for n in (1, 2)]
    await _store(client, [to_part10(ds) for ds in datasets])
    return study, series_uid, datasets


async def _client_with(settings: Settings, **changes: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.replace(**changes))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http


async def test_preflight_for_the_headers_viewers_send(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization, range",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"accept", "authorization", "range"} <= allowed
    assert "GET" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) > 0


async def test_plain_options_is_still_retrieve_capabilities(client: httpx.AsyncClient) -> None:
    """Without Access-Control-Request-Method, OPTIONS is PS3.18 8.9, with CORS labels."""
    response = await client.options("/", headers={"Origin": VIEWER, "Accept": "application/json"})
    assert response.status_code == 200
    assert response.json()["resources"]
    assert response.headers["access-control-allow-origin"] == "*"


async def test_reads_from_any_origin_are_labelled(client: httpx.AsyncClient, series) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies", headers={"Origin": VIEWER})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "ETag" in response.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in (await client.get("/studies")).headers


async def test_stores_from_other_origins_are_refused_unless_configured(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    preflight = {"Origin": VIEWER, "Access-Control-Request-Method": "POST"}
    refused = await client.options("/studies", headers=preflight)
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    async for http in _client_with(settings, cors_write_origins=VIEWER, cors_origins=VIEWER):
        allowed = await http.options("/studies", headers=preflight)
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == VIEWER
        assert "Origin" in allowed.headers["vary"]
        body, content_type = multipart_body([to_part10(ct_dataset())])
        stored = await http.post(
            "/studies", content=body, headers={"Content-Type": content_type, "Origin": VIEWER}
        )
        assert stored.status_code == 200
        assert stored.headers["access-control-allow-origin"] == VIEWER
        other = await http.get("/studies", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


EVIL = "https://evil.example"


async def _rejected(http: httpx.AsyncClient, study: str, headers: dict[str, str]) -> httpx.Response:
    """The simple POST a page's form or navigator.sendBeacon sends: no preflight, no body."""
    return await http.post(f"/studies/{study}/reject/113001%5EDCM", headers=headers, content=b"")


async def test_writes_from_other_origins_are_refused_before_they_run(
    client: httpx.AsyncClient, series, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """A page on any site could otherwise hide studies of a server left at its defaults (no
    access control on loopback, no write origins): browsers send such a POST unpreflighted."""
    study, series_uid, _ = series
    for headers in (
        {"Origin": EVIL, "Content-Type": "text/plain"},  # an empty text/plain form
        {"Origin": EVIL},  # sendBeacon(url)
        {"Origin": "null"},  # a sandboxed frame
        {"Origin": "null", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site"},  # a browser that sent no Origin
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "https://testserver"},  # another scheme is another origin
    ):
        refused = await _rejected(client, study, headers)
        assert refused.status_code == 403, headers
        assert refused.json()["status"] == 403
        assert "DICOMWEB_CORS_WRITE_ORIGINS" in refused.json()["reason"], headers
        assert "access-control-allow-origin" not in refused.headers
    assert (await client.delete(f"/studies/{study}", headers={"Origin": EVIL})).status_code == 403
    body, content_type = multipart_body([to_part10(ct_dataset())])
    stow = {"Content-Type": content_type, "Origin": EVIL}
    assert (await client.post("/studies", content=body, headers=stow)).status_code == 403
    assert (await client.get(f"/studies/{study}/series/{series_uid}/metadata")).status_code == 200
    # A tool sends no Origin; a browser on this server's own origin (/viewer/) may write.
    assert (await _rejected(client, study, {"Sec-Fetch-Site": "same-origin"})).status_code == 200
    async for http in _client_with(settings, cors_origins=""):  # no CORS at all: still refused
        assert (await _rejected(http, study, {"Origin": EVIL})).status_code == 403


async def test_writes_from_the_servers_own_origin_are_allowed(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Same origin is the request's own scheme and Host, or DICOMWEB_BASE_URL's origin (the
    address browsers use through a proxy)."""
    stored = []
    for _ in range(3):
        study, series_uid = uid(), uid()
        await _store(client, [to_part10(ct_dataset(study, series_uid))])
        stored.append(study)
    async for http in _client_with(settings, base_url=""):
        answer = await _rejected(http, stored[0], {"Origin": "http://testserver"})
        assert answer.status_code == 200, answer.text
        assert "access-control-allow-origin" not in answer.headers
        assert (await _rejected(http, stored[1], {"Origin": EVIL})).status_code == 403
    async for http in _client_with(settings, base_url="https://PACS.example.org:443/dicomweb"):
        origin = {"Origin": "https://pacs.example.org"}
        assert (await _rejected(http, stored[1], origin)).status_code == 200
    async for http in _client_with(settings, cors_write_origins=EVIL):
        assert (await _rejected(http, stored[2], {"Origin": EVIL})).status_code == 200


async def test_listed_read_origins_make_every_answer_vary_by_origin(
    client: httpx.AsyncClient, series, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """With a list of origins the labels depend on Origin, so an answer to a request without
    one (an <img> thumbnail, cached for an hour) must not be reused for a CORS fetch."""
    study, series_uid, datasets = series
    instance = f"/studies/{study}/series/{series_uid}/instances/{datasets[0].SOPInstanceUID}"
    allowed = "http://a.example"
    async for http in _client_with(settings, cors_origins=f"{allowed},http://w.example"):
        for path in (instance + "/thumbnail", instance + "/metadata", "/studies", "/nowhere"):
            for origin in (None, allowed, "http://elsewhere.example"):
                headers = {} if origin is None else {"Origin": origin}
                answer = await http.get(path, headers=headers)
                vary = [
                    v.strip().lower() for v in ",".join(answer.headers.get_list("vary")).split(",")
                ]
                assert vary.count("origin") == 1, (path, origin, vary)
                if path.endswith("/thumbnail"):
                    assert "accept" in vary, (path, origin, vary)  # merged, not overwritten
                    assert len(answer.headers.get_list("vary")) == 1
        tag = (await http.get(instance + "/metadata")).headers["etag"]
        revalidated = await http.get(instance + "/metadata", headers={"If-None-Match": tag})
        assert revalidated.status_code == 304 and "Origin" in revalidated.headers["vary"]
    vary = (await client.get(instance + "/thumbnail")).headers.get("vary", "")
    assert "origin" not in vary.lower()  # any origin: the same answer for every one


async def test_configured_request_headers_limit_preflights(settings: Settings) -> None:
    async for http in _client_with(settings, cors_allow_headers="Accept, Authorization"):
        headers = {"Origin": VIEWER, "Access-Control-Request-Method": "GET"}
        ok = await http.options(
            "/studies", headers={**headers, "Access-Control-Request-Headers": "Accept"}
        )
        assert ok.status_code == 204
        refused = await http.options(
            "/studies", headers={**headers, "Access-Control-Request-Headers": "X-Custom"}
        )
        assert refused.status_code == 403
        assert "x-custom" in refused.json()["reason"]


async def test_metadata_and_frames_have_etags_and_answer_304(
    client: httpx.AsyncClient, series
) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets = series
    ds = datasets[0]
    instance = f"/studies/{study}/series/{series_uid}/instances/{ds.SOPInstanceUID}"
    for path, immutable in (
        (f"/studies/{study}/metadata", False),
        (f"/studies/{study}/series/{series_uid}/metadata", False),
        (instance + "/metadata", True),
        (instance + "/frames/1,2", True),
    ):
        first = await client.get(path)
        assert first.status_code == 200, path
        etag = first.headers["etag"]
        assert etag.startswith('W/"'), path
        assert ("max-age" in first.headers["cache-control"]) is immutable, path
        again = await client.get(path)
        assert again.headers["etag"] == etag, path  # a fresh multipart boundary, same tag
        cached = await client.get(path, headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b"", path
        assert cached.headers["etag"] == etag
    # Frames are tagged by what they are made of (issue 22: never hashed per request): each
    # selection of frames of each instance has its own tag.
    frames = f"{instance}/frames/"
    tags = {(await client.get(frames + numbers)).headers["etag"] for numbers in ("1", "2", "1,2")}
    other = f"/studies/{study}/series/{series_uid}/instances/{datasets[1].SOPInstanceUID}"
    tags.add((await client.get(f"{other}/frames/1")).headers["etag"])
    assert len(tags) == 4
    await _store(client, [to_part10(ct_dataset(study, series_uid, instance_number=9, seed=9))])
    changed = await client.get(f"/studies/{study}/metadata", headers={"If-None-Match": etag})
    assert changed.status_code == 200


async def test_json_is_gzipped_when_accepted_and_multipart_never(
    client: httpx.AsyncClient, series
) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets = series
    for path in ("/instances?includefield=all", f"/studies/{study}/metadata"):
        plain = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        zipped = await client.get(path, headers={"Accept-Encoding": "gzip, deflate"})
        assert zipped.headers["content-encoding"] == "gzip", path
        assert "Accept-Encoding" in zipped.headers["vary"]
        assert zipped.json() == plain.json()  # httpx decodes it
    instance = f"/studies/{study}/series/{series_uid}/instances/{datasets[0].SOPInstanceUID}"
    for path in (instance, instance + "/frames/1", instance + "/rendered"):
        response = await client.get(path, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200
        assert "content-encoding" not in response.headers, path
    small = await client.get(f"/studies/{uid()}/metadata", headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 404 and "content-encoding" not in small.headers


async def _sent(middleware: Any) -> list[dict[str, object]]:
    """The messages `middleware` sends for a GET of / that accepts gzip."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message) -> None:  # type: ignore[no-untyped-def]
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"accept-encoding", b"gzip")],
    }
    await middleware(scope, receive, send)
    return sent


async def test_gzip_body_is_a_valid_stream() -> None:
    """Check the bytes on the wire, not httpx's decoding of them."""
    from dicomweb_server.web.browser import CompressionMiddleware

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/dicom+json")],
            }
        )
        for n in range(50):
            await send(
                {"type": "http.response.body", "body": b'{"n":%d},' % n * 20, "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    sent = await _sent(CompressionMiddleware(app))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert gzip.decompress(body) == b"".join(b'{"n":%d},' % n * 20 for n in range(50))


async def _through(middleware: object, tag: bytes | None, body: bytes, more: bool = False) -> bytes:
    """The bytes `middleware` sends for one response of `body` (tagged with `tag` if given;
    `more`: in two body messages, as a streamed answer)."""

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        headers = [(b"content-type", b"application/dicom+json")]
        if tag is not None:
            headers.append((b"etag", tag))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if more:
            await send({"type": "http.response.body", "body": body[:10], "more_body": True})
            body_rest = body[10:]
        else:
            body_rest = body
        await send({"type": "http.response.body", "body": body_rest})

    middleware.app = app  # type: ignore[attr-defined]
    sent = await _sent(middleware)
    start = sent[0]
    headers = dict(start["headers"])  # type: ignore[call-overload]
    data = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    assert headers[b"content-encoding"] == b"gzip"
    if b"content-length" in headers:
        assert int(headers[b"content-length"]) == len(data)
    return gzip.decompress(data)


async def test_issue22_a_tagged_whole_body_is_compressed_once_and_kept() -> None:
    """Study and series metadata carry a tag of their content: their compressed bytes are kept
    by tag and encoding; untagged or streamed bodies are compressed as they pass."""
    from dicomweb_server.web.browser import CompressionMiddleware

    middleware = CompressionMiddleware(None, kept_bytes=1 << 20)  # type: ignore[arg-type]
    body = b'[{"n":1}' + b',{"n":2}' * 500 + b"]"
    assert await _through(middleware, b'W/"a"', body) == body
    assert len(middleware.kept.entries) == 1
    assert await _through(middleware, b'W/"a"', body) == body  # from the kept bytes
    assert len(middleware.kept.entries) == 1
    other = body.replace(b"2", b"3")
    assert await _through(middleware, b'W/"b"', other) == other  # another tag: another entry
    assert len(middleware.kept.entries) == 2
    assert await _through(middleware, None, body) == body
    assert await _through(middleware, b'W/"c"', body, more=True) == body
    assert len(middleware.kept.entries) == 2
    none_kept = CompressionMiddleware(None)  # type: ignore[arg-type]
    assert await _through(none_kept, b'W/"a"', body) == body
    assert not none_kept.kept.entries


@pytest.mark.parametrize(
    ("header", "brotli", "chosen"),
    [
        ("gzip, deflate, br", True, "br"),
        ("gzip, deflate, br", False, "gzip"),
        ("br;q=0.5, gzip", True, "gzip"),
        ("identity", True, None),
        ("*", False, "gzip"),
        ("gzip;q=0", False, None),
        (None, True, None),
    ],
)
def test_choose_encoding(header: str | None, brotli: bool, chosen: str | None) -> None:
    assert choose_encoding(header, brotli) == chosen


@pytest.mark.skipif(importlib.util.find_spec("brotli") is None, reason="brotli is not installed")
async def test_brotli_when_installed(client: httpx.AsyncClient, series) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/instances?includefield=all", headers={"Accept-Encoding": "br"})
    assert response.headers["content-encoding"] == "br"
    assert response.json()
