"""Zip retrieve (issue 19 item 4): `Accept: application/zip` on a study, series or instance
answers a streamed zip of the stored Part 10 files, on both backend pairs."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from live import serving
from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian
from starlette.applications import Starlette

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

BASE = "http://testserver/dicomweb"
ZIP = "application/zip"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def _stow(client: httpx.AsyncClient, files: list[bytes], root: str = "") -> None:
    body, content_type = multipart_body(files)
    response = await client.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text


def _stored(file: bytes) -> bytes:
    return b"\0" * 128 + file[128:]  # the preamble is not kept


def _name(data: bytes) -> str:
    ds = dcmread(io.BytesIO(data))
    return f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def _entries(response: httpx.Response) -> dict[str, bytes]:
    """The zip's entries by name, each CRC checked; the response's framing checked too."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ZIP
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        return {info.filename: archive.read(info) for info in infos}


@pytest.fixture
async def study(client: httpx.AsyncClient) -> tuple[str, list[str], list[bytes]]:
    """A study of three series: two CT slices, one three-frame CT, one implicit VR slice."""
    study_uid, series = uid(), [uid(), uid(), uid()]
    files = [
        to_part10(ct_dataset(study_uid, series[0], instance_number=1, seed=1)),
        to_part10(ct_dataset(study_uid, series[0], instance_number=2, seed=2, rows=64)),
        to_part10(ct_dataset(study_uid, series[1], instance_number=1, seed=3, frames=3)),
        to_part10(ct_dataset(study_uid, series[2], instance_number=1, seed=4), implicit=True),
    ]
    await _stow(client, files)
    return study_uid, series, files


async def test_issue19_zip_study_of_several_series_holds_the_stored_files(
    client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    study_uid, series, files = study
    response = await client.get(f"/studies/{study_uid}", headers={"Accept": ZIP})
    entries = _entries(response)
    assert response.headers["content-disposition"] == f'attachment; filename="{study_uid}.zip"'
    assert "content-length" in response.headers  # every size is known before the first byte
    assert entries == {_name(f): _stored(f) for f in files}
    # the same bytes as `transfer-syntax=*` retrieve answers
    multipart = await client.get(f"/studies/{study_uid}", headers={"Accept": DICOM_ANY})
    parts = parse_multipart(multipart.content, multipart.headers["content-type"])
    assert sorted(entries.values()) == sorted(data for _, data in parts)
    for name, data in entries.items():
        ds = dcmread(io.BytesIO(data))
        assert name.split("/") == [
            study_uid,
            ds.SeriesInstanceUID,
            f"{ds.SOPInstanceUID}.dcm",
        ]
    assert {name.split("/")[1] for name in entries} == set(series)


async def test_issue19_zip_series_and_instance(
    client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    study_uid, series, files = study
    response = await client.get(f"/studies/{study_uid}/series/{series[0]}", headers={"Accept": ZIP})
    assert _entries(response) == {_name(f): _stored(f) for f in files[:2]}
    assert response.headers["content-disposition"] == f'attachment; filename="{series[0]}.zip"'
    sop = dcmread(io.BytesIO(files[2])).SOPInstanceUID
    response = await client.get(
        f"/studies/{study_uid}/series/{series[1]}/instances/{sop}", headers={"Accept": ZIP}
    )
    assert _entries(response) == {_name(files[2]): _stored(files[2])}
    assert response.headers["content-disposition"] == f'attachment; filename="{sop}.zip"'


async def test_issue19_zip_a_viewer_on_another_origin_reads_the_file_name(
    client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    study_uid, _, _ = study
    headers = {"Accept": ZIP, "Origin": "http://viewer.example"}
    response = await client.get(f"/studies/{study_uid}", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "Content-Disposition" in response.headers["access-control-expose-headers"]


async def test_issue19_zip_accept_query_parameter_replaces_the_header(
    client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    """PS3.18 8.3.3.1: a browser link cannot set Accept; `accept=` can."""
    study_uid, _, files = study
    response = await client.get(
        f"/studies/{study_uid}", params={"accept": ZIP}, headers={"Accept": DICOM_ANY}
    )
    assert _entries(response) == {_name(f): _stored(f) for f in files}
    response = await client.get(
        f"/studies/{study_uid}", params={"accept": DICOM_ANY}, headers={"Accept": ZIP}
    )
    assert response.headers["content-type"].startswith("multipart/related")
    twice = await client.get(f"/studies/{study_uid}?accept={ZIP}&accept={ZIP}")
    assert twice.status_code == 400


async def test_issue19_zip_unknown_study_or_series_is_404(
    client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    study_uid, _, _ = study
    for path in (f"/studies/{uid()}", f"/studies/{study_uid}/series/{uid()}"):
        response = await client.get(path, headers={"Accept": ZIP})
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/json"
    response = await client.get(f"/studies/{uid()}", params={"accept": ZIP})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        ("image/png", 406),
        ("application/zip; transfer-syntax=1.2.840.10008.1.2.4.50", 406),  # a zip as stored only
        ("*/*", "multipart"),
        ("application/*", "multipart"),
        (f'{ZIP}; q=0.5, multipart/related; type="application/dicom"', "multipart"),
        (f'multipart/related; type="application/dicom"; q=0.5, {ZIP}', "zip"),
        (f"image/png, {ZIP}; transfer-syntax=*", "zip"),
    ],
)
async def test_issue19_zip_negotiation_keeps_406_and_multipart_right(
    client: httpx.AsyncClient,
    study: tuple[str, list[str], list[bytes]],
    accept: str,
    answer: int | str,
) -> None:
    study_uid, _, _ = study
    response = await client.get(f"/studies/{study_uid}", headers={"Accept": accept})
    if answer == 406:
        assert response.status_code == 406
        assert "application/zip" in response.json()["reason"]
    elif answer == "zip":
        assert response.headers["content-type"] == ZIP
    else:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/related")


@pytest.mark.parametrize(
    ("objects", "held", "listed"),
    [(2, 64 << 10, 2000), (1, 0, 2000), (3, 64 << 10, 2)],
    ids=["read-ahead-smaller-than-the-study", "nothing-ahead", "too-many-to-list"],
)
async def test_issue19_zip_study_larger_than_the_read_ahead_buffer(
    settings: Settings, objects: int, held: int, listed: int
) -> None:
    """Nine 512 KB instances (4.6 MB) through a 64 KiB read-ahead: large objects are streamed
    in chunks, never held whole; past `wado_sized_max_instances` there is no Content-Length."""
    tight = settings.replace(
        wado_read_ahead_objects=objects,
        wado_read_ahead_bytes=held,
        wado_sized_max_instances=listed,
    )
    application = create_app(tight)
    study_uid, series = uid(), [uid(), uid()]
    files = [
        to_part10(
            ct_dataset(study_uid, series[n % 2], instance_number=n, seed=n, rows=512, columns=512)
        )
        for n in range(9)
    ]
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=settings.root_url) as client:
            await _stow(client, files)
            response = await client.get(f"/studies/{study_uid}", headers={"Accept": ZIP})
    assert ("content-length" in response.headers) == (listed >= len(files))
    assert sum(map(len, files)) > 4 << 20
    assert _entries(response) == {_name(f): _stored(f) for f in files}


async def test_issue19_zip_under_a_site_root(app: Starlette, client: httpx.AsyncClient) -> None:
    await app.state.dicomweb.sites.add_site("zip-site", "test site zip-site", "")
    root = f"{BASE}/sites/zip-site"
    files = [to_part10(ct_dataset(instance_number=1))]
    await _stow(client, files, root)
    study_uid = dcmread(io.BytesIO(files[0])).StudyInstanceUID
    response = await client.get(f"{root}/studies/{study_uid}", headers={"Accept": ZIP})
    assert _entries(response) == {_name(files[0]): _stored(files[0])}
    elsewhere = await client.get(
        f"{BASE}/sites/default/studies/{study_uid}", params={"accept": ZIP}
    )
    assert elsewhere.status_code == 404


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle["entry"]]


async def test_issue19_zip_retrieve_is_audited_as_instances_transferred(
    app: Starlette, client: httpx.AsyncClient, study: tuple[str, list[str], list[bytes]]
) -> None:
    study_uid, _, _ = study
    response = await client.get(f"/studies/{study_uid}", headers={"Accept": ZIP})
    assert response.status_code == 200
    await app.state.dicomweb.audit.flush(close_rollups=True)
    bundle = await client.get("/audit", params={"study": study_uid})
    assert bundle.status_code == 200, bundle.text
    retrieved = [
        event
        for event in _events(bundle.json())
        if any(s["code"] == "retrieve" for s in event["subtype"])
    ]
    assert len(retrieved) == 1
    (event,) = retrieved
    assert (event["type"]["code"], event["action"], event["outcome"]) == ("110104", "R", "0")
    assert event["subtype"][0]["code"] == "RAD-107"
    study_entity = next(e for e in event["entity"] if e["role"]["code"] == "3")
    assert study_entity["what"]["identifier"]["value"] == f"urn:oid:{study_uid}"


# -- over TCP: a failure after the status was sent cuts the body -------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("listed", [2000, 0], ids=["sized", "chunked"])
def test_issue19_zip_missing_object_mid_stream_cuts_the_body(tmp_path: Path, listed: int) -> None:
    settings = Settings(
        data_dir=tmp_path / "live",
        port=_free_port(),
        wado_read_ahead_objects=1,
        wado_sized_max_instances=listed,
    )
    study_uid, series = uid(), uid()
    files = [
        to_part10(ct_dataset(study_uid, series, instance_number=n, seed=n, rows=128))
        for n in range(1, 7)
    ]
    with serving(settings), httpx.Client(base_url=settings.root_url, timeout=30) as client:
        body, content_type = multipart_body(files)
        stored = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert stored.status_code == 200, stored.text
        third = dcmread(io.BytesIO(files[2])).SOPInstanceUID
        (path,) = (tmp_path / "live" / "objects").glob(f"**/{third}/*")
        path.unlink()
        received = bytearray()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("GET", f"/studies/{study_uid}", headers={"Accept": ZIP}) as response,
        ):
            assert response.status_code == 200  # sent before the third object was reached
            assert ("content-length" in response.headers) == bool(listed)
            for chunk in response.iter_bytes():
                received += chunk
        assert len(received) > 0
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(bytes(received)))
        # the server goes on serving
        assert client.get(f"/studies/{uid()}", headers={"Accept": ZIP}).status_code == 404


async def test_issue19_zip_frameless_big_endian_object_is_the_stored_file(
    client: httpx.AsyncClient,
) -> None:
    """`transfer-syntax=*` (and so a zip) means the stored bytes, also for an object without
    Pixel Data in a syntax that is not native: it was sent to be rewritten as explicit VR
    little endian, which pydicom refuses for big endian data (a 500)."""
    ds = ct_dataset(instance_number=1)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=False)
    file = buffer.getvalue()
    await _stow(client, [file])
    study_uid = ds.StudyInstanceUID
    response = await client.get(f"/studies/{study_uid}", headers={"Accept": DICOM_ANY})
    ((headers, data),) = parse_multipart(response.content, response.headers["content-type"])
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRBigEndian}"
    assert data == _stored(file)
    zipped = await client.get(f"/studies/{study_uid}", params={"accept": ZIP})
    assert _entries(zipped) == {_name(file): _stored(file)}
