"""Study retrieve over a real uvicorn with the zero-copy send extension (serve/zerocopy.py).

The stored files of a multipart answer with a Content-Length go to the socket by sendfile;
these tests check the bytes, that the kernel really sent them, a reader slow enough to fill
the socket, a client that leaves mid-stream, and the fallbacks (HEAD, no extension).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from live import serving

from dicomweb_server.config import Settings
from dicomweb_server.serve import zerocopy
from dicomweb_server.storage.base import FileRegion
from dicomweb_server.web import responses

INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def zerocopy_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """uvicorn (httptools) with the zero-copy cycle installed; yields (root URL, port)."""
    assert zerocopy.install()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    settings = Settings(data_dir=tmp_path / "zc", port=port)
    with serving(settings):
        yield settings.root_url, port


def _store_study(root: str, count: int, size: int) -> tuple[str, dict[str, bytes]]:
    """A study of `count` instances of about `size` pixel bytes; returns (study, sop → bytes)."""
    study, series = uid(), uid()
    files = {}
    side = int((size // 2) ** 0.5)
    for number in range(count):
        ds = ct_dataset(study, series, rows=side, columns=side, instance_number=number, seed=number)
        files[ds.SOPInstanceUID] = to_part10(ds)
    body, content_type = multipart_body(list(files.values()))
    response = httpx.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}, timeout=60
    )
    assert response.status_code == 200, response.text
    # The store zeroes the preamble: that is what a retrieve returns.
    return study, {sop: b"\0" * 128 + data[128:] for sop, data in files.items()}


def _parts_by_sop(body: bytes, content_type: str) -> dict[str, bytes]:
    return {
        headers["content-location"].rsplit("/", 1)[1]: data
        for headers, data in parse_multipart(body, content_type)
    }


def test_study_is_sent_by_the_kernel_byte_for_byte(zerocopy_server: tuple[str, int]) -> None:
    root, _ = zerocopy_server
    study, expected = _store_study(root, 6, 300_000)
    before = zerocopy.sent_by_kernel()
    response = httpx.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES}, timeout=60)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert _parts_by_sop(response.content, response.headers["content-type"]) == expected
    assert zerocopy.sent_by_kernel() - before >= sum(map(len, expected.values()))


def test_slow_reader_fills_the_socket_and_still_gets_every_byte(
    zerocopy_server: tuple[str, int],
) -> None:
    root, port = zerocopy_server
    study, expected = _store_study(root, 4, 1_500_000)
    path = root.split(f":{port}", 1)[1]
    headers, body = _slow_get(port, f"{path}/studies/{study}", INSTANCES)
    assert int(headers["content-length"]) == len(body)
    assert _parts_by_sop(body, headers["content-type"]) == expected


def _slow_get(port: int, path: str, accept: str) -> tuple[dict[str, str], bytes]:
    """GET over a socket with a 16 KB receive buffer, read slowly at first, so that the server
    fills the socket and waits for it; (header names in lower case, body)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = bytearray()
        time.sleep(0.5)
        while chunk := sock.recv(65536):
            received += chunk
            if len(received) < 1_000_000:
                time.sleep(0.002)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    fields = (line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    return {name.lower(): value for name, value in fields}, body


def test_client_leaving_mid_stream_leaves_the_server_serving(
    zerocopy_server: tuple[str, int],
) -> None:
    root, port = zerocopy_server
    study, expected = _store_study(root, 4, 1_500_000)
    path = root.split(f":{port}", 1)[1]
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"GET {path}/studies/{study} HTTP/1.1\r\nHost: x\r\nAccept: {INSTANCES}\r\n\r\n".encode()
            )
            sock.recv(100_000)
        # closed with most of the answer unread
    response = httpx.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES}, timeout=60)
    assert _parts_by_sop(response.content, response.headers["content-type"]) == expected


def test_head_and_compressing_clients_get_the_same_answer(
    zerocopy_server: tuple[str, int],
) -> None:
    root, _ = zerocopy_server
    study, expected = _store_study(root, 2, 100_000)
    url = f"{root}/studies/{study}"
    head = httpx.head(url, headers={"Accept": INSTANCES}, timeout=60)
    assert head.status_code == 200
    assert head.content == b""
    gzip = httpx.get(url, headers={"Accept": INSTANCES, "Accept-Encoding": "gzip"}, timeout=60)
    assert "content-encoding" not in gzip.headers  # DICOM is not compressed
    assert _parts_by_sop(gzip.content, gzip.headers["content-type"]) == expected
    assert int(head.headers["content-length"]) == len(gzip.content)


def test_request_body_chunks_are_handed_over_without_a_copy() -> None:
    chunks = zerocopy._BodyChunks()
    assert bytes(chunks) == b""
    assert len(chunks) == 0
    first = b"a" * 1000
    chunks += first
    assert bytes(chunks) is first  # uvicorn copied each chunk twice: into a bytearray, out
    chunks += b""
    chunks += b"bc"
    assert len(chunks) == 1002
    assert bytes(chunks) == first + b"bc"


def test_a_store_trickled_in_small_writes_is_stored_whole(
    zerocopy_server: tuple[str, int],
) -> None:
    """Chunks that pile up between two receives are joined in order."""
    root, port = zerocopy_server
    study, series = uid(), uid()
    data = to_part10(ct_dataset(study, series, rows=64, columns=64, instance_number=1, seed=7))
    body, content_type = multipart_body([data])
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        for start in range(0, len(body), 997):
            sock.sendall(body[start : start + 997])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    response = httpx.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES}, timeout=60)
    stored = _parts_by_sop(response.content, response.headers["content-type"])
    assert list(stored.values()) == [b"\0" * 128 + data[128:]]


def _sops_in_order(body: bytes, content_type: str) -> list[str]:
    return [h["content-location"].rsplit("/", 1)[1] for h, _ in parse_multipart(body, content_type)]


def _object_files(data_dir: Path) -> dict[str, Path]:
    """Stored object files by SOP Instance UID (keys end in <sop>/<digest>.dcm)."""
    return {path.parent.name: path for path in (data_dir / "objects").rglob("*.dcm")}


def test_a_missing_first_object_is_a_404_before_any_byte(
    zerocopy_server: tuple[str, int], tmp_path: Path
) -> None:
    root, _ = zerocopy_server
    study, _ = _store_study(root, 3, 100_000)
    for path in _object_files(tmp_path / "zc").values():
        path.unlink()
    response = httpx.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES}, timeout=60)
    assert response.status_code == 404


def test_a_short_later_object_cuts_the_answer_short(
    zerocopy_server: tuple[str, int], tmp_path: Path
) -> None:
    """Past the status a failure can only end the stream early: the client must see it."""
    root, _ = zerocopy_server
    study, _ = _store_study(root, 3, 100_000)
    url = f"{root}/studies/{study}"
    whole = httpx.get(url, headers={"Accept": INSTANCES}, timeout=60)
    first, *later = _sops_in_order(whole.content, whole.headers["content-type"])
    for sop, path in _object_files(tmp_path / "zc").items():
        if sop in later:
            path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers={"Accept": INSTANCES}, timeout=60)
    again = httpx.get(f"{root}/studies/{study}/series", timeout=60)  # still serving
    assert again.status_code == 200


def test_regions_message_becomes_one_body_for_middlewares(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"0123456789")
    message = {
        "type": responses.REGIONS,
        "items": [b"ab", FileRegion(str(path), 2, 5), b"cd"],
        "more_body": True,
    }
    body = responses.as_body_message(message)
    assert body == {"type": "http.response.body", "body": b"ab23456cd", "more_body": True}


def test_regions_go_through_the_transport_when_the_socket_cannot_be_written_directly(
    zerocopy_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes already queued in the transport when a response's first region comes: the
    regions are written through uvicorn as mapped views instead, in order."""
    from uvicorn.protocols.http import httptools_impl

    root, _ = zerocopy_server
    study, expected = _store_study(root, 4, 200_000)
    cycle = httptools_impl.RequestResponseCycle
    monkeypatch.setattr(cycle, "_can_write_directly", lambda self: False)
    before = zerocopy.sent_by_kernel()
    response = httpx.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES}, timeout=60)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert _parts_by_sop(response.content, response.headers["content-type"]) == expected
    assert zerocopy.sent_by_kernel() == before


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_issue14_tls_study_is_byte_for_byte_and_never_written_to_the_raw_socket(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    """Under TLS nothing may reach the raw socket (sendfile would put plaintext into the
    encrypted stream): the answer goes through the TLS transport, byte for byte."""
    assert zerocopy.install()
    cert, key = certificate
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    settings = Settings(data_dir=tmp_path / "tls", port=port, ssl_certfile=cert, ssl_keyfile=key)
    assert settings.root_url.startswith("https://")
    with serving(settings, ssl_certfile=cert, ssl_keyfile=key):
        root = settings.root_url
        study, series = uid(), uid()
        files = {}
        for number in range(6):
            ds = ct_dataset(
                study, series, rows=256, columns=256, instance_number=number, seed=number
            )
            files[ds.SOPInstanceUID] = to_part10(ds)
        body, content_type = multipart_body(list(files.values()))
        with httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=60) as client:
            stored = client.post(
                f"{root}/studies", content=body, headers={"Content-Type": content_type}
            )
            assert stored.status_code == 200, stored.text
            before = zerocopy.sent_by_kernel()
            response = client.get(f"{root}/studies/{study}", headers={"Accept": INSTANCES})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    expected = {sop: b"\0" * 128 + data[128:] for sop, data in files.items()}
    assert _parts_by_sop(response.content, response.headers["content-type"]) == expected
    assert zerocopy.sent_by_kernel() == before


def test_issue22_one_frame_is_written_as_it_is_stored(zerocopy_server: tuple[str, int]) -> None:
    """A single native frame of a local file is one regions message (web/responses.py
    PiecesResponse over a mapped view): byte for byte, with its Content-Length, to a slow
    reader too, for HEAD, and tagged (PS3.18 10.4.1.1.4)."""
    root, port = zerocopy_server
    study, series = uid(), uid()
    ds = ct_dataset(study, series, rows=1024, columns=1024, seed=7)  # a 2 MiB frame
    body, content_type = multipart_body([to_part10(ds)])
    stored = httpx.post(f"{root}/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    path = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    response = httpx.get(root + path, headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    [(headers, frame)] = parse_multipart(response.content, response.headers["content-type"])
    assert frame == ds.PixelData
    assert headers["content-location"].endswith(path)
    tag = response.headers["etag"]
    again = httpx.get(root + path, headers={"Accept": accept, "If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    head = httpx.head(root + path, headers={"Accept": accept})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == response.headers["content-length"]

    fields, slow = _slow_get(port, root.split(f":{port}", 1)[1] + path, accept)
    assert int(fields["content-length"]) == len(slow) == len(response.content)
    [(_, slow_frame)] = parse_multipart(slow, fields["content-type"])
    assert slow_frame == ds.PixelData


def test_issue22_bytes_between_regions_are_written_together_and_whole() -> None:
    """`_write_all` writes many views with few system calls (writev, at most _MAX_IOV
    buffers at a time) and resumes after a partial write or a full socket: the reader gets
    every byte in order."""
    import asyncio
    import threading
    import types

    views = [memoryview(bytes([n % 251]) * (1 + n % 7)) for n in range(zerocopy._MAX_IOV + 300)]
    views[10] = memoryview(b"")  # empty pieces are skipped
    views[200] = memoryview(bytes(range(256)) * 8192)  # 2 MiB: fills the socket
    expected = b"".join(views)
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    left.setblocking(False)
    received = bytearray()

    def read() -> None:
        time.sleep(0.2)  # the writer meets a full socket first
        while chunk := right.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    cycle = types.SimpleNamespace(disconnected=False, transport=None)
    try:
        assert asyncio.run(zerocopy._write_all(cycle, left.fileno(), list(views)))
    finally:
        left.close()
        reader.join()
        right.close()
    assert bytes(received) == expected
