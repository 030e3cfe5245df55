"""Orthanc's STOW-RS client, replayed on the wire: the request its DICOMweb plugin sends.

Captured from Orthanc 1.10.1 with its DICOMweb plugin 1.7 (Debian 12's `orthanc` and
`orthanc-dicomweb`) for `POST /dicom-web/servers/{name}/stow`, by a raw socket listening
where the server should be. Headers, in order, as below; the body has no preamble, each part
carries a Content-Length, the close delimiter ends the body with no CRLF after it, and libcurl
frames it in chunks of 65524 bytes (the last one shorter), cut wherever they fall.
`make interop` runs the real thing (interop/).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from dicomfiles import ct_dataset, to_part10, uid
from live import serving

from dicomweb_server.config import Settings

# Two UUIDs joined by "-": 73 characters, over RFC 2046's 70 (issue 15).
ORTHANC_BOUNDARY = "568d6587-b4be-4912-919f-4a6cae7e9da1-568d6587-b4be-4912-919f-4a6cae7e9da1"
ORTHANC_HEADERS = (
    ("Host", "{netloc}"),
    ("Accept", "application/dicom+json"),
    ("Content-Type", 'multipart/related; type="application/dicom"; boundary={boundary}'),
    ("Transfer-Encoding", "chunked"),
)
ORTHANC_CHUNK = 65524
ORTHANC_PART_HEAD = (
    "--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {size}\r\n\r\n"
)
ORTHANC_CLOSE = "--{boundary}--"


def _orthanc_body(files: list[bytes]) -> bytes:
    """The multipart body as Orthanc's StowClientJob writes it."""
    parts = [
        ORTHANC_PART_HEAD.format(boundary=ORTHANC_BOUNDARY, size=len(data)).encode()
        + data
        + b"\r\n"
        for data in files
    ]
    return b"".join(parts) + ORTHANC_CLOSE.format(boundary=ORTHANC_BOUNDARY).encode()


def _chunked(body: bytes) -> bytes:
    """HTTP/1.1 chunked framing with libcurl's chunk size, sizes in lower-case hex."""
    chunks = [body[at : at + ORTHANC_CHUNK] for at in range(0, len(body), ORTHANC_CHUNK)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in [*chunks, b""])


def _replay(root: str, files: list[bytes]) -> tuple[int, dict[str, object]]:
    """Send Orthanc's STOW request to `root` byte for byte; the status and the JSON answer."""
    url = urlsplit(root)
    assert url.hostname is not None and url.port is not None
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        # No header of http.client's own: exactly Orthanc's, in its order.
        connection.putrequest(
            "POST", f"{url.path}/studies", skip_host=True, skip_accept_encoding=True
        )
        for name, value in ORTHANC_HEADERS:
            connection.putheader(name, value.format(netloc=url.netloc, boundary=ORTHANC_BOUNDARY))
        connection.endheaders(_chunked(_orthanc_body(files)))
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[str]:
    """A live server whose boundary limit is one character short of Orthanc's boundary."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = Settings(data_dir=tmp_path / "limited", port=port, max_boundary_length=72)
    with serving(settings):
        yield settings.root_url


def test_issue15_orthanc_stow_long_boundary(live_server: str) -> None:
    study = uid()
    # 32 KiB of pixels each: the body spans two chunks, so chunks end mid-part.
    files = [
        to_part10(ct_dataset(study, rows=128, columns=128, instance_number=n)) for n in (1, 2, 3)
    ]
    status, result = _replay(live_server, files)
    assert status == 200, result
    referenced = result["00081199"]["Value"]  # type: ignore[index]
    assert len(referenced) == 3
    assert "00081198" not in result


def test_issue15_a_boundary_over_the_configured_limit_is_400_naming_it(limited_server: str) -> None:
    status, result = _replay(limited_server, [to_part10(ct_dataset())])
    assert status == 400
    assert result["reason"] == "multipart boundary of 73 characters is longer than the limit of 72"
