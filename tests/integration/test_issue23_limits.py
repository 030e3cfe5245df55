"""Hold under hostile load (issue 23): each finding of the red-team pass as a named limit with
a clear 4xx, one regression test per item, against the real app (and a real uvicorn for what
happens below the app)."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from live import serving
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless
from starlette.applications import Starlette

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

BASE = "http://testserver/dicomweb"
ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
NATIVE = "multipart/related; type=application/octet-stream"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, int]]:
    settings = Settings(
        data_dir=tmp_path / "live",
        port=_free_port(),
        header_timeout=2,
        max_request_header_bytes=16 << 10,
        max_request_headers=20,
    )
    with serving(settings):  # serve/'s own protocol class: the limits under test
        yield settings.root_url, settings.port


def _raw(port: int, data: bytes, *, read_for: float = 5.0) -> bytes:
    """Send raw bytes, then read until the server closes (or `read_for` seconds pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


async def _stow(client: httpx.AsyncClient, files: list[bytes]) -> httpx.Response:
    body, content_type = multipart_body(files)
    return await client.post("/studies", content=body, headers={"Content-Type": content_type})


# -- 1. header bytes, header count, header read deadline --------------------------------------


def test_issue23_1_header_block_over_the_limit_is_431(live: tuple[str, int]) -> None:
    _, port = live
    header = (
        b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (64 << 10) + b"\r\n\r\n"
    )
    answer = _raw(port, header)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"request headers exceed 16384 bytes" in answer


def test_issue23_1_too_many_headers_is_431(live: tuple[str, int]) -> None:
    _, port = live
    lines = b"".join(b"X-H%d: v\r\n" % n for n in range(30))
    answer = _raw(port, b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"at most 20 headers" in answer


def test_issue23_1_headers_that_never_finish_are_cut_off(live: tuple[str, int]) -> None:
    _, port = live
    started = time.monotonic()
    answer = _raw(port, b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Slow: ", read_for=10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 6  # the 2 s deadline, not the client's patience
    silent = time.monotonic()
    assert _raw(port, b"", read_for=10) == b""  # a connection that says nothing is closed
    assert time.monotonic() - silent < 6


def test_issue23_1_a_body_in_the_headers_chunk_does_not_count_as_headers(
    live: tuple[str, int],
) -> None:
    root, port = live
    data = to_part10(ct_dataset(rows=128, columns=128))  # 32 KB, over the 16 KB header limit
    body, content_type = multipart_body([data])
    request = (
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = _raw(port, request)  # one write: headers and body arrive together
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_issue23_1_headers_within_the_limits_are_served(live: tuple[str, int]) -> None:
    root, _ = live
    response = httpx.get(root + "/studies", headers={f"X-H{n}": "v" * 100 for n in range(10)})
    assert response.status_code == 200


def _response_end(data: bytes, start: int) -> int:
    """Where the HTTP/1.1 response at `start` of `data` ends (Content-Length or chunked)."""
    head_end = data.index(b"\r\n\r\n", start) + 4
    head = data[start:head_end].lower()
    if b"content-length:" in head:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        return head_end + length
    position = head_end
    while True:
        size_end = data.index(b"\r\n", position)
        size = int(data[position:size_end], 16)
        position = size_end + 2 + size + 2
        if size == 0:
            return position


def test_issue23_1_a_pipelined_response_is_not_cut_by_the_header_deadline(
    live: tuple[str, int],
) -> None:
    """Two requests in one write; the second's large answer is read for longer than the 2 s
    header deadline, which must not run while it is sent."""
    root, port = live
    ds = ct_dataset(rows=512, columns=512, frames=32)  # 16 MiB of pixels
    body, content_type = multipart_body([to_part10(ds)])
    assert httpx.post(
        root + "/studies", content=body, headers={"Content-Type": content_type}, timeout=60
    ).is_success
    path = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    requests = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + f"Accept: {ALL}\r\n\r\n".encode()
    )
    chunks = []
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(requests)
        time.sleep(3)  # the server's buffers fill; its second response waits on us
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    data = b"".join(chunks)
    assert data.startswith(b"HTTP/1.1 200 ")
    second = _response_end(data, 0)
    assert data[second:].startswith(b"HTTP/1.1 200 ")
    assert _response_end(data, second) == len(data)  # whole, not cut at 2 s
    assert len(data) > len(ds.PixelData)


def test_issue23_1_an_idle_kept_alive_connection_gets_the_keep_alive_timeout(
    live: tuple[str, int],
) -> None:
    """Between requests the keep-alive timeout (15 s) bounds a connection, not the 2 s header
    deadline; the next request's headers get theirs from its first byte."""
    _, port = live
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def answer_to(sock: socket.socket) -> bytes:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _response_end(data, 0):
            chunk = sock.recv(65536)
            if not chunk:
                break  # closed
            data += chunk
        return data

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert answer_to(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(3)  # idle longer than the header deadline
        assert answer_to(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(3)
        started = time.monotonic()
        for byte in request[:-2]:  # a header trickled a byte at a time is still cut off
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.25)
            if time.monotonic() - started > 6:
                break
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 5


def test_issue23_1_over_the_connection_limit_is_a_json_503_with_retry_after(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "live", port=_free_port(), max_connections=3)
    with serving(settings):
        idle = [socket.create_connection(("127.0.0.1", settings.port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            answer = _raw(settings.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        finally:
            for sock in idle:
                sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    assert b"retry-after: 1" in head.lower()
    assert b"application/json" in head
    assert "DICOMWEB_MAX_CONNECTIONS" in orjson.loads(body)["reason"]


# -- 2. a huge Accept header ------------------------------------------------------------------


async def test_issue23_2_a_huge_accept_header_is_a_quick_400(client: httpx.AsyncClient) -> None:
    ds = ct_dataset()
    await _stow(client, [to_part10(ds)])
    accept = ", ".join(["application/dicom; q=0.5"] * 400)
    response = await client.get(f"/studies/{ds.StudyInstanceUID}", headers={"Accept": accept})
    assert response.status_code == 400
    assert "Accept header" in response.json()["reason"]
    long = await client.get("/studies", headers={"Accept": "a" * 10_000})
    assert long.status_code == 400


# -- 3. repeated frame numbers ----------------------------------------------------------------


async def test_issue23_3_a_repeated_frame_is_answered_once(client: httpx.AsyncClient) -> None:
    ds = ct_dataset(rows=16, columns=16, frames=3)
    await _stow(client, [to_part10(ds)])
    url = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/"
    )
    response = await client.get(
        url + ",".join(["2"] * 1000 + ["1", "2"]), headers={"Accept": NATIVE}
    )
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [headers["content-location"].rsplit("/", 1)[1] for headers, _ in parts] == ["2", "1"]
    frame = 16 * 16 * 2
    assert [data for _, data in parts] == [ds.PixelData[frame : 2 * frame], ds.PixelData[:frame]]
    for bad in ("1,,2", "²", "1,٣", "-1", ""):
        refused = await client.get(url + bad, headers={"Accept": NATIVE})
        assert refused.status_code in (400, 404), bad
        if bad:
            assert refused.status_code == 400, bad


# -- 4. animated GIF budget; 5. decode bombs --------------------------------------------------


async def test_issue23_4_rendered_gif_over_the_pixel_budget_is_400(
    settings: Settings,
) -> None:
    app = create_app(settings.replace(max_render_pixels=64 * 64 * 8))
    ds = ct_dataset(rows=64, columns=64, frames=16)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            await _stow(client, [to_part10(ds)])
            url = (
                f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/rendered"
            )
            started = time.monotonic()
            response = await client.get(url, params={"accept": "image/gif", "viewport": "512,512"})
            assert response.status_code == 400
            assert "DICOMWEB_MAX_RENDER_PIXELS" in response.json()["reason"]
            assert time.monotonic() - started < 5
            small = await client.get(url, params={"accept": "image/gif", "viewport": "16,16"})
            assert small.status_code == 400  # 16 source frames of 64×64 are over it too
            one = await client.get(url, params={"viewport": "64,64"})
            assert one.status_code == 200  # one frame fits


def _jpeg_claiming(columns: int, rows: int) -> bytes:
    """A tiny baseline JPEG whose frame header claims `columns`×`rows`."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, rows, columns)
    return bytes(data)


async def test_issue23_5_a_decode_bomb_is_refused_at_ingest(client: httpx.AsyncClient) -> None:
    """A 7 KB JPEG Baseline instance whose SOF says 30000×30000 over a 16×16 DICOM header:
    refused when stored, so it can never be decoded."""
    ds = ct_dataset(rows=16, columns=16)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([_jpeg_claiming(30000, 30000)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    response = await _stow(client, [to_part10(ds)])
    assert response.status_code == 409
    assert "30000" in response.headers["warning"]
    assert (await client.get("/instances")).json() == []


# -- 6. slow STOW bodies ----------------------------------------------------------------------


async def test_issue23_6_a_dripping_stow_body_is_cut_off_by_the_rate_floor(
    settings: Settings,
) -> None:
    app = create_app(settings.replace(body_timeout=1, min_upload_rate=10_000))
    body, content_type = multipart_body([to_part10(ct_dataset(rows=64, columns=64))])

    async def drip():  # type: ignore[no-untyped-def]
        yield body[:100]
        for _ in range(40):
            await asyncio.sleep(0.1)
            yield body[100:101]

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            started = time.monotonic()
            response = await client.post(
                "/studies", content=drip(), headers={"Content-Type": content_type}
            )
            assert response.status_code == 408
            assert "DICOMWEB_MIN_UPLOAD_RATE" in response.json()["reason"]
            assert time.monotonic() - started < 4
            fast = await client.post(
                "/studies", content=body, headers={"Content-Type": content_type}
            )
            assert fast.status_code == 200


# -- 8. one bad instance never makes a study unretrievable --------------------------------------


def _rle_garbage(ds_seed: int, study: str, series: str) -> bytes:
    """An RLE instance whose segment data is garbage (its header is plausible)."""
    ds = ct_dataset(study, series, rows=16, columns=16, seed=ds_seed)
    header = struct.pack("<16I", 2, 64, 64 + 300, *([0] * 13))
    ds.PixelData = encapsulate([header + bytes(range(256)) * 3])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return to_part10(ds)


async def test_issue23_8_a_broken_instance_is_sent_as_stored_when_the_client_allows(
    client: httpx.AsyncClient,
) -> None:
    study, series = uid(), uid()
    bad = _rle_garbage(0, study, series)
    good = [to_part10(ct_dataset(study, series, instance_number=n, seed=n)) for n in range(2)]
    stored = await _stow(client, [bad, *good])
    if stored.status_code != 200:  # refused at ingest: as good, nothing can poison the study
        assert stored.status_code == 202
        return
    response = await client.get(f"/studies/{study}")  # default: explicit VR little endian
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 3
    syntaxes = sorted(h["content-type"].rsplit("=", 1)[1] for h, _ in parts)
    assert syntaxes == sorted(["1.2.840.10008.1.2.1"] * 2 + [RLELossless])
    explicit = await client.get(
        f"/studies/{study}/series/{series}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        },
    )
    sop = dcmread(io.BytesIO(bad)).SOPInstanceUID
    if explicit.status_code == 406:  # the broken one came first: named before any byte
        assert sop in explicit.json()["reason"]


# -- 10. smaller findings -----------------------------------------------------------------------


async def test_issue23_10_instance_number_out_of_range_is_stored_not_a_500(
    client: httpx.AsyncClient,
) -> None:
    ds = ct_dataset()
    ds.InstanceNumber = "10000000000000000000"
    response = await _stow(client, [to_part10(ds)])
    assert response.status_code == 200
    found = await client.get("/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
    assert len(found.json()) == 1


async def test_issue23_10_a_trailing_slash_is_served_never_redirected_by_host(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/studies/", headers={"Host": "evil.example"})
    assert response.status_code == 200
    assert "location" not in response.headers


async def test_issue23_10_several_byte_ranges_get_the_whole_value(
    client: httpx.AsyncClient,
) -> None:
    ds = ct_dataset(rows=16, columns=16)
    await _stow(client, [to_part10(ds)])
    url = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )
    response = await client.get(url, headers={"Range": "bytes=0-9, 20-29"})
    assert response.status_code == 200
    ((_, value),) = parse_multipart(response.content, response.headers["content-type"])
    assert value == ds.PixelData


async def test_issue23_10_an_object_of_100000_frames_serves_one_frame(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    ds = ct_dataset(rows=2, columns=2, frames=100_000)
    assert (await _stow(client, [to_part10(ds)])).status_code == 200
    url = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/99999"
    )
    response = await client.get(url, headers={"Accept": NATIVE})
    assert response.status_code == 200
    ((_, frame),) = parse_multipart(response.content, response.headers["content-type"])
    assert frame == ds.PixelData[99998 * 8 : 99999 * 8]
    stored = await app.state.dicomweb.retrieve.get_instance(
        __import__("dicomweb_server.domain.identifiers", fromlist=["InstanceKey"]).InstanceKey(
            "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
    )
    assert repr(stored.pixel.frames) == "FrameTable(100000 frames)"  # built on demand


# -- 7. includefield=all pages, 10. match lists, Unicode digits, empty items ------------------


async def test_issue23_7_an_includefield_all_page_is_capped_with_a_warning(
    settings: Settings,
) -> None:
    application = create_app(settings.replace(max_metadata_query_limit=2))
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=BASE) as client,
    ):
        study = uid()
        await _stow(client, [to_part10(ct_dataset(study, instance_number=n)) for n in (1, 2, 3)])
        full = await client.get("/instances", params={"includefield": "all", "limit": "100"})
        assert full.status_code == 200 and len(full.json()) == 2
        assert "reduced to 2" in full.headers["warning"]
        plain = await client.get("/instances", params={"limit": "100"})
        assert len(plain.json()) == 3 and "warning" not in plain.headers  # no metadata: no cap


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "²"},
        {"offset": "²"},
        {"limit": "١٠"},  # Arabic-Indic digits
        {"StudyDate": "٢٠٢٤٠١٠١"},
        {"StudyTime": "١٢"},
        {"InstanceNumber": "٣"},
    ],
)
async def test_issue23_10_unicode_digits_are_400(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    response = await client.get("/instances", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["reason"]


@pytest.mark.parametrize(
    "query",
    [{"Modality": "CT,,MR"}, {"ModalitiesInStudy": "CT,"}, {"StudyInstanceUID": "1.2.3,,1.2.4"}],
)
async def test_issue23_10_empty_list_items_are_400(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    level = "/series" if "Modality" in query else "/studies"
    response = await client.get(level, params=query)
    assert response.status_code == 400, response.text
    assert "empty" in response.json()["reason"] or "UID" in response.json()["reason"]


async def test_issue23_10_a_long_match_list_is_answered_or_refused_never_5xx(
    client: httpx.AsyncClient,
) -> None:
    ds = ct_dataset(modality="MR")
    await _stow(client, [to_part10(ds)])
    codes = [f"X{n}" for n in range(999)] + ["MR"]  # 1,000: the default maximum
    found = await client.get("/studies", params={"ModalitiesInStudy": ",".join(codes)})
    assert found.status_code == 200, found.text  # no "Expression tree is too large"
    assert [row["0020000D"]["Value"][0] for row in found.json()] == [ds.StudyInstanceUID]
    uids = [f"1.2.{n}" for n in range(999)] + [ds.StudyInstanceUID]
    by_uid = await client.get("/studies", params={"StudyInstanceUID": ",".join(uids)})
    assert by_uid.status_code == 200 and len(by_uid.json()) == 1
    too_many = await client.get("/studies", params={"ModalitiesInStudy": ",".join([*codes, "CT"])})
    assert too_many.status_code == 400
    assert "DICOMWEB_MAX_QUERY_VALUES" in too_many.json()["reason"]
