"""Hostile input: each gets a clear 4xx (or a documented 2xx), never a 5xx, crash or hang,
and afterwards everything stored before is still there byte for byte and nothing new is
searchable."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit
from starlette.applications import Starlette
from starlette.types import Message, Scope

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditQuery, outcome_indicator

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0xC000, 0xA700


@pytest.fixture
def backend() -> str:
    """Parsing and limits sit above the backends: the embedded pair keeps this file fast."""
    return "embedded"


@pytest.fixture
async def baseline(client: httpx.AsyncClient) -> tuple[str, bytes]:
    """One instance stored before the attack; returns its URL and its stored bytes."""
    ds = ct_dataset()
    data = to_part10(ds)
    body, content_type = multipart_body([data])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    return path, b"\0" * 128 + data[128:]


async def _assert_intact(client: httpx.AsyncClient, baseline: tuple[str, bytes]) -> None:
    """The baseline is byte for byte as stored, and it is the only searchable instance."""
    path, data = baseline
    response = await client.get(path, headers={"Accept": DICOM_ANY})
    assert response.status_code == 200
    ((_, payload),) = parse_multipart(response.content, response.headers["content-type"])
    assert payload == data
    instances = await client.get("/instances")
    assert instances.status_code == 200
    assert len(instances.json()) == 1


async def _store_part(client: httpx.AsyncClient, part: bytes) -> httpx.Response:
    body, content_type = multipart_body([part])
    return await client.post("/studies", content=body, headers={"Content-Type": content_type})


def _failure_reason(response: httpx.Response) -> int:
    reason: int = response.json()["00081198"]["Value"][0]["00081197"]["Value"][0]
    return reason


# --- Part 10 parsing -------------------------------------------------------------------------


def _without_pixels(implicit: bool = False) -> bytes:
    ds = ct_dataset()
    del ds.PixelData
    return to_part10(ds, implicit=implicit)


def _nested(levels: int) -> bytes:
    """ContentSequence nested `levels` deep, undefined lengths, implicit VR little endian."""
    undefined = 0xFFFFFFFF
    opening = struct.pack("<HHI", 0x0040, 0xA730, undefined) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, undefined
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _without_pixels(implicit=True) + opening * levels + closing * levels


def _lying_length() -> bytes:
    """PatientID's implicit VR value length set to 0xFFFFFFF0."""
    data = bytearray(_without_pixels(implicit=True))
    at = data.index(struct.pack("<HH", 0x0010, 0x0020), 132)
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(data)


def _encapsulated_bomb() -> bytes:
    """A JPEG instance declaring 60000×60000×3 pixels × 1000 frames, with 4 bytes of data."""
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows = ds.Columns = 60000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL_422", 0
    ds.NumberOfFrames = 1000
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * 1000)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _native(rows: int, columns: int, frames: str | None = None, bits: int = 16) -> bytes:
    ds = ct_dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated = rows, columns, bits
    if frames is not None:
        ds.NumberOfFrames = frames
    return to_part10(ds)


def _deflate_bomb() -> bytes:
    """Deflated Explicit VR Little Endian whose data set inflates to 200 MiB of zeros."""
    ds = ct_dataset()
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return (
        data[:meta_end] + b"".join(deflater.compress(zeros) for _ in range(200)) + deflater.flush()
    )


@pytest.mark.parametrize(
    ("make", "reasons"),
    [
        (lambda: to_part10(ct_dataset())[:200], {CANNOT_UNDERSTAND, 0xA900}),
        (lambda: to_part10(ct_dataset())[:-1], {CANNOT_UNDERSTAND}),
        (_lying_length, {CANNOT_UNDERSTAND, 0xA900}),  # the value swallows the identity
        (lambda: _nested(100), {CANNOT_UNDERSTAND}),
        (lambda: _nested(400), {CANNOT_UNDERSTAND}),
        (lambda: _nested(5000), {CANNOT_UNDERSTAND}),
        (_encapsulated_bomb, {OUT_OF_RESOURCES}),
        (lambda: _native(65535, 65535), {OUT_OF_RESOURCES}),
        (lambda: _native(1000, 1000), {CANNOT_UNDERSTAND}),
        (lambda: _native(65535, 65535, "99999999", bits=64), {OUT_OF_RESOURCES}),
        (lambda: _native(16, 16, "-1"), {CANNOT_UNDERSTAND}),
        (_deflate_bomb, {OUT_OF_RESOURCES, CANNOT_UNDERSTAND}),
    ],
    ids=[
        "truncated-header",
        "truncated-pixels",
        "value-length-0xFFFFFFF0",
        "nested-100",
        "nested-400",
        "nested-5000",
        "encapsulated-bomb",
        "native-declared-huge",
        "native-declared-larger-than-data",
        "rows-columns-frames-overflow",
        "negative-frames",
        "deflate-bomb",
    ],
)
async def test_hostile_instances_fail_cleanly(
    client: httpx.AsyncClient,
    baseline: tuple[str, bytes],
    make,
    reasons: set[int],  # type: ignore[no-untyped-def]
) -> None:
    response = await _store_part(client, make())
    assert response.status_code == 409
    assert _failure_reason(response) in reasons
    assert response.headers["warning"]
    await _assert_intact(client, baseline)


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm"])
async def test_a_file_cut_inside_an_element_is_refused_and_the_whole_one_stored(
    client: httpx.AsyncClient, name: str
) -> None:
    """A copy interrupted part-way (pydicom's rtplan_truncated.dcm is one) was stored as far
    as it went, and the whole file sent afterwards was refused as a conflicting duplicate.
    Every cut inside an element is now 0xC000 with the reason; the whole file then stores."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    with open(get_testdata_file(name), "rb") as handle:
        data = handle.read()
    # inside Pixel Data, a value near the start, and everywhere between (a step that is no
    # multiple of an element's size lands inside most of them)
    for cut in [len(data) - 1, len(data) - 100, *range(900, len(data) - 200, 397)]:
        response = await _store_part(client, data[:cut])
        if response.status_code == 200:  # ends right at an element: a whole, shorter data set
            ends = [e.file_tell for e in dcmread(io.BytesIO(data), force=True)]
            assert cut in ends or cut - 8 in ends or cut - 12 in ends, cut
            continue
        assert response.status_code == 409, (cut, response.text)
        # cut before its UIDs: "missing identity" (0xA900) is as true
        assert _failure_reason(response) in (CANNOT_UNDERSTAND, 0xA900), cut
    whole = await _store_part(client, data)
    assert whole.status_code == 200, whole.text
    with open(get_testdata_file("rtplan_truncated.dcm"), "rb") as handle:
        refused = await _store_part(client, handle.read())
    assert refused.status_code == 409
    assert "truncated" in refused.headers["warning"]


async def test_header_over_the_memory_budget_is_refused(settings: Settings) -> None:
    """Many small elements are read into memory: max_header_bytes bounds them."""
    app = create_app(settings.replace(max_header_bytes=64 << 10))
    ds = ct_dataset()
    ds.ImageComments = "x" * 60_000  # text is read into memory whatever its length
    for element in range(0x1000, 0x1400):
        ds.add_new(0x00090000 | element, "LO", "y" * 60)
    ds.add_new(0x00090010, "LO", "PRIVATE")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        body, content_type = multipart_body([to_part10(ds)])
        response = await http.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 409
        assert _failure_reason(response) == OUT_OF_RESOURCES
        assert (await http.get("/dicomweb/instances")).json() == []


# --- multipart abuse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ('multipart/related; type="application/dicom"', b"--b\r\n\r\nx\r\n--b--\r\n", 400),
        ('multipart/related; type="application/dicom"; boundary=abc', b"--xyz\r\n\r\n--xyz--", 400),
        (
            'multipart/related; type="application/dicom"; boundary=b',
            b"--b\r\n\r\nunterminated",
            400,
        ),
        ('multipart/related; type="application/dicom"; boundary=b', b"--b--\r\n", 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"\r\n" * 1000, 400),
        ('multipart/related; type="application/dicom"; boundary="' + "x" * 257 + '"', b"", 400),
        ('multipart/related; type="application/dicom"; boundary=b; boundary=c', b"", 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"--b\r\nBad\r\n\r\n", 400),
        ('multipart/related; type="application/dicom+json"; boundary=b', b"--b--", 415),
        ("application/dicom+json", b'[{"00100010": {"vr": "PN"}}]', 415),
        ("application/dicom", b"", 400),
        ("application/octet-stream", to_part10(ct_dataset()), 415),
    ],
    ids=[
        "missing-boundary",
        "wrong-boundary",
        "unterminated",
        "no-parts",
        "only-line-breaks",
        "boundary-too-long",
        "boundary-twice",
        "bad-part-header",
        "dicom-json-parts",
        "dicom-json-body",
        "single-part-empty",
        "octet-stream-body",
    ],
)
async def test_multipart_abuse_is_a_clean_4xx(
    client: httpx.AsyncClient,
    baseline: tuple[str, bytes],
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.json()["reason"]
    await _assert_intact(client, baseline)


async def test_part_without_content_type_is_a_failure_entry(
    client: httpx.AsyncClient, baseline: tuple[str, bytes]
) -> None:
    """Without a `type` parameter nothing says what a part without Content-Type is: a failure
    entry (with `type="application/dicom"` the part is of that type: test_stow.py)."""
    body, content_type = multipart_body([({}, to_part10(ct_dataset()))])
    untyped = content_type.replace('type="application/dicom"; ', "")
    response = await client.post("/studies", content=body, headers={"Content-Type": untyped})
    assert response.status_code == 409
    await _assert_intact(client, baseline)


async def test_thousands_of_tiny_parts_are_bounded(
    client: httpx.AsyncClient, baseline: tuple[str, bytes]
) -> None:
    body, content_type = multipart_body([b"x"] * 2000)
    started = time.monotonic()
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2000
    assert len(response.headers.get_list("warning")) <= 20
    assert time.monotonic() - started < 30
    await _assert_intact(client, baseline)


async def test_more_parts_than_the_limit_is_413(settings: Settings) -> None:
    app = create_app(settings.replace(max_parts=50))
    body, content_type = multipart_body([b"x"] * 51)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        response = await http.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 413


async def test_gzip_body_is_415(client: httpx.AsyncClient, baseline: tuple[str, bytes]) -> None:
    import gzip

    body, content_type = multipart_body([to_part10(ct_dataset())])
    response = await client.post(
        "/studies",
        content=gzip.compress(body),
        headers={"Content-Type": content_type, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 415
    await _assert_intact(client, baseline)


# --- paths and parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/studies/..",
        "/studies/%2e%2e/series",
        "/studies/1.2/series/%2e%2e%2f%2e%2e/instances",
        "/studies/1.2/series/1.3/instances/..%2F..%2Findex.sqlite",
        "/studies/" + "1." * 40 + "1",
        "/studies/1.2.abc/metadata",
        "/studies/1.2%00/metadata",
        "/studies/1.2%0d%0aINJECTED%20log%20line/metadata",
        "/studies/1.2/series/1.3/instances/1.4/frames/0",
        "/studies/1.2/series/1.3/instances/1.4/frames/99999999999999999999",
        "/studies/1.2/series/1.3/instances/1.4/frames/1," * 50 + "1",
    ],
)
async def test_bad_paths_are_4xx_and_never_forge_log_lines(
    client: httpx.AsyncClient,
    baseline: tuple[str, bytes],
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    caplog.set_level(logging.INFO, logger="dicomweb_server")
    response = await client.get(path, headers={"Accept": "*/*"})
    assert 400 <= response.status_code < 500
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message
    await _assert_intact(client, baseline)


@pytest.mark.parametrize(
    ("params", "statuses"),
    [
        ({"PatientName": "' OR 1=1 --"}, {200}),
        ({"PatientID": "x'; DROP TABLE instances; --"}, {200}),
        ({"PatientID": '*" OR ""="'}, {200}),
        ({"AccessionNumber": "%_\\"}, {200}),
        ({"StudyInstanceUID": "1.2' OR '1'='1"}, {400}),
        ({"limit": "99999999999999999999"}, {400}),
        ({"limit": "-1"}, {400}),
        ({"limit": "1e9"}, {400}),
        ({"offset": "999999999999"}, {400}),
        ({"limit": "999999", "PatientID": "nobody"}, {200}),
        ({"includefield": "all," + "00100010," * 500, "PatientID": "nobody"}, {200}),
        # An unknown name is ignored (PS3.18 8.3); its Warning names it without the CR LF.
        ({"00100010\r\nX": "1", "PatientID": "nobody"}, {200}),
        ({"StudyDate": "20240101-" + "9" * 500}, {400}),
    ],
)
async def test_hostile_query_parameters(
    client: httpx.AsyncClient,
    baseline: tuple[str, bytes],
    params: dict[str, str],
    statuses: set[int],
) -> None:
    response = await client.get("/instances", params=params)
    assert response.status_code in statuses
    if response.status_code == 200:
        assert response.json() == []
    for name, value in response.headers.raw:
        assert b"\r" not in name + value and b"\n" not in name + value
    await _assert_intact(client, baseline)


async def test_dicom_json_stow_never_fetches_bulk_data_uris(
    client: httpx.AsyncClient, baseline: tuple[str, bytes]
) -> None:
    """We do not accept dicom+json STOW (PS3.18 10.5.1.2 metadata + bulk data): a clean 415,
    and the BulkDataURIs it names (another host, file://) are never dereferenced."""
    contacted: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            contacted.append(connection.recv(1024))
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        metadata = (
            '[{"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},'
            f' "7FE00010": {{"vr": "OW", "BulkDataURI": "http://127.0.0.1:{port}/pixels"}},'
            ' "00091010": {"vr": "OB", "BulkDataURI": "file:///etc/passwd"}}]'
        ).encode()
        for content_type, body in [
            ("application/dicom+json", metadata),
            (
                'multipart/related; type="application/dicom+json"; boundary=b',
                b"--b\r\nContent-Type: application/dicom+json\r\n\r\n" + metadata + b"\r\n--b--",
            ),
        ]:
            response = await client.post(
                "/studies", content=body, headers={"Content-Type": content_type}
            )
            assert response.status_code == 415
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert contacted == []
    await _assert_intact(client, baseline)


# --- slow and many clients -------------------------------------------------------------------


async def test_a_client_that_goes_away_mid_upload_is_one_quiet_log_line(
    app: Starlette,
    client: httpx.AsyncClient,
    baseline: tuple[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flaky client's aborted STOW is no server error: one INFO line with the request id and
    the bytes received, no traceback, nothing stored, and no exception left for the server
    (uvicorn logs one as 'Exception in ASGI application')."""
    body, content_type = multipart_body([to_part10(ct_dataset()) for _ in range(2)])
    sent = body[: len(body) * 3 // 4]  # the first instance whole, the second cut
    messages: list[Message] = [
        {"type": "http.request", "body": sent[:1000], "more_body": True},
        {"type": "http.request", "body": sent[1000:], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    answered: list[Message] = []

    async def send(message: Message) -> None:
        answered.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/dicomweb/studies",
        "raw_path": b"/dicomweb/studies",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with caplog.at_level(logging.INFO, "dicomweb_server"):
        await app(scope, receive, send)  # returns: nothing escapes to the server
    assert not any(message["type"] == "http.response.start" for message in answered)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    (gone,) = [r for r in caplog.records if "went away" in r.getMessage()]
    assert gone.levelno == logging.INFO
    request_id = scope["state"]["request_id"]
    assert gone.getMessage() == (
        f"request {request_id}: the client went away after sending {len(sent)} bytes of its body"
    )
    await _assert_intact(client, baseline)  # the whole first instance is not stored either
    # The audit trail says the client left (a minor failure, the client's), not a server fault
    audit = app.state.dicomweb.audit
    await audit.flush()
    page = await audit.search(AuditQuery(limit=1000))
    (record,) = [r for r in page.records if r.request_id == request_id]
    assert record.outcome == 499 and outcome_indicator(record.outcome) == 4


@pytest.fixture
def bounded_server(tmp_path: Path) -> Iterator[str]:
    """A live server with short timeouts and two STOW slots; yields host:port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path / "bounded",
        port=port,
        body_timeout=1,
        request_timeout=3,
        max_concurrent_stores=2,
    )
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _slow_stow(address: str, declared: int, sent: bytes) -> socket.socket:
    """Open a STOW whose Content-Length promises more than is sent, then stall."""
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: " + address.encode() + b"\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + sent
    )
    return sock


def _status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1]) if data else 0


def test_slow_clients_time_out_and_others_keep_being_served(bounded_server: str) -> None:
    root = f"http://{bounded_server}/dicomweb"
    slow = [_slow_stow(bounded_server, 100_000, b"--b\r\n") for _ in range(2)]
    time.sleep(0.3)
    with httpx.Client(base_url=root, timeout=5) as http:
        body, content_type = multipart_body([to_part10(ct_dataset())])
        busy = http.post("/studies", content=body, headers={"Content-Type": content_type})
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        started = time.monotonic()
        searches = [http.get("/studies") for _ in range(20)]
        assert all(r.status_code == 200 for r in searches)
        assert time.monotonic() - started < 2
        assert [_status_of(sock) for sock in slow] == [408, 408]
        stored = http.post("/studies", content=body, headers={"Content-Type": content_type})
        assert stored.status_code == 200
        assert len(http.get("/instances").json()) == 1


def test_a_trickling_body_is_cut_off_at_the_request_timeout(bounded_server: str) -> None:
    sock = _slow_stow(bounded_server, 100_000, b"--b\r\n")
    started = time.monotonic()
    sock.settimeout(0.5)
    status = 0
    while time.monotonic() - started < 6:
        try:
            sock.sendall(b"x")  # within body_timeout each time, never finishing
            data = sock.recv(1024)
        except TimeoutError:
            continue
        except OSError:
            break
        if data:
            status = int(data.split(b" ", 2)[1])
            break
    sock.close()
    assert status == 408
    assert time.monotonic() - started < 5


def test_a_short_content_length_is_a_clean_400(bounded_server: str) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    host, port = bounded_server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: "
            + content_type.encode()
            + b"\r\nContent-Length: 100\r\n\r\n"
            + body
        )
        assert _status_of(sock) == 400


def test_many_concurrent_clients_are_all_served(bounded_server: str) -> None:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://{bounded_server}/dicomweb") as http:
            responses = await asyncio.gather(*(http.get("/studies") for _ in range(100)))
        return [r.status_code for r in responses]

    assert set(asyncio.run(run())) == {200}


def test_raw_crlf_in_the_request_line_is_no_5xx(bounded_server: str) -> None:
    """The HTTP parser splits the line there: the rest is a header, never a log line."""
    host, port = bounded_server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /dicomweb/studies\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert 0 < _status_of(sock) < 500
