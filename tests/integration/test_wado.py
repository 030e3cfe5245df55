"""WADO-RS over HTTP on the embedded backends (PS3.18 10.4)."""

from __future__ import annotations

import io

import httpx
import orjson
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom import dcmread
from pydicom.data import get_testdata_file

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"'


async def _store(client: httpx.AsyncClient, files: list[bytes]) -> None:
    body, content_type = multipart_body(files)
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


@pytest.fixture
async def series(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    study, series_uid = uid(), uid()
    datasets = [
        ct_dataset(study, series_uid, instance_number=n, seed=n, frames=3) for n in (3, 1, 2)
    ]
    files = [to_part10(ds) for ds in datasets]
    await _store(client, files)
    return study, series_uid, datasets, files


async def test_retrieve_series_returns_stored_bytes_in_instance_order(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, files = series
    response = await client.get(
        f"/studies/{study}/series/{series_uid}", headers={"Accept": DICOM_ANY}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [dcmread(__import__("io").BytesIO(p[1])).InstanceNumber for p in parts] == [1, 2, 3]
    by_number = {ds.InstanceNumber: f for ds, f in zip(datasets, files, strict=True)}
    assert [p[1] for p in parts] == [b"\0" * 128 + by_number[n][128:] for n in (1, 2, 3)]
    assert parts[0][0]["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"


async def test_retrieve_study_and_instance(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    response = await client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY})
    assert len(parse_multipart(response.content, response.headers["content-type"])) == 3
    sop = datasets[0].SOPInstanceUID
    response = await client.get(
        f"/studies/{study}/series/{series_uid}/instances/{sop}", headers={"Accept": DICOM_ANY}
    )
    assert len(parse_multipart(response.content, response.headers["content-type"])) == 1


async def test_metadata_carries_bulk_data_uri_and_no_pixels(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    response = await client.get(f"/studies/{study}/series/{series_uid}/metadata")
    assert response.headers["content-type"] == "application/dicom+json"
    metadata = response.json()
    assert len(metadata) == 3
    pixel = metadata[0]["7FE00010"]
    assert set(pixel) == {"vr", "BulkDataURI"}
    assert pixel["BulkDataURI"].startswith("http://testserver/dicomweb/studies/")
    bulk = await client.get(pixel["BulkDataURI"].removeprefix("http://testserver/dicomweb"))
    assert bulk.status_code == 200
    values = parse_multipart(bulk.content, bulk.headers["content-type"])
    sop = metadata[0]["00080018"]["Value"][0]
    assert values[0][1] == next(ds for ds in datasets if ds.SOPInstanceUID == sop).PixelData
    study_md = (await client.get(f"/studies/{study}/metadata")).json()
    assert len(study_md) == 3
    one = (
        await client.get(f"/studies/{study}/series/{series_uid}/instances/{sop}/metadata")
    ).json()
    assert one[0]["00080018"]["Value"] == [sop]


async def test_series_metadata_does_not_read_dicom_files(client, series, app) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, _, _ = series
    blobs = app.state.backends.blobs
    keys = [info.key async for info in blobs.iter_objects()]
    assert len(keys) == 3
    for key in keys:
        await blobs.delete(key)  # metadata must come from the index, not the objects
    response = await client.get(f"/studies/{study}/series/{series_uid}/metadata")
    assert response.status_code == 200
    assert len(orjson.loads(response.content)) == 3


async def test_frames_single_and_list(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    ds = datasets[0]
    url = f"/studies/{study}/series/{series_uid}/instances/{ds.SOPInstanceUID}/frames/"
    frame_size = 16 * 16 * 2
    response = await client.get(url + "2", headers={"Accept": OCTETS})
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert parts[0][1] == ds.PixelData[frame_size : 2 * frame_size]
    assert (
        parts[0][0]["content-type"]
        == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    )
    response = await client.get(url + "1,3", headers={"Accept": OCTETS})
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [p[1] for p in parts] == [ds.PixelData[:frame_size], ds.PixelData[2 * frame_size :]]


@pytest.mark.parametrize(
    ("frames", "status"), [("0", 400), ("4", 404), ("1,x", 400), ("-1", 400), ("", 404)]
)
async def test_bad_frame_numbers(client, series, frames, status) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    url = f"/studies/{study}/series/{series_uid}/instances/{datasets[0].SOPInstanceUID}/frames/{frames}"
    response = await client.get(url, headers={"Accept": OCTETS})
    assert response.status_code == status
    assert response.json()["reason"]


async def test_frames_of_compressed_data_are_decoded(client) -> None:  # type: ignore[no-untyped-def]
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    with open(path, "rb") as handle:
        data = handle.read()
    await _store(client, [data])
    ds = dcmread(path)
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/2"
    response = await client.get(url, headers={"Accept": OCTETS})
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert parts[0][1] == ds.pixel_array[1].tobytes()


async def test_unknown_resources_are_404(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    other = uid()
    for path in (
        f"/studies/{other}",
        f"/studies/{other}/metadata",
        f"/studies/{study}/series/{other}",
        f"/studies/{study}/series/{other}/metadata",
        f"/studies/{study}/series/{series_uid}/instances/{other}",
        f"/studies/{study}/series/{series_uid}/instances/{other}/metadata",
    ):
        response = await client.get(
            path, headers={"Accept": DICOM_ANY if "metadata" not in path else "*/*"}
        )
        assert response.status_code == 404, path
        assert response.json()["reason"]


@pytest.mark.parametrize(
    "path",
    [
        "/studies/1.2.3a",
        "/studies/..%2F..%2Fetc",
        "/studies/" + "1." * 40 + "1",
        "/studies/1.2/series/x y",
    ],
)
async def test_bad_uids_in_paths_are_400(client, path) -> None:  # type: ignore[no-untyped-def]
    response = await client.get(path, headers={"Accept": DICOM_ANY})
    assert response.status_code in (400, 404)
    if response.status_code == 400:
        assert "UID" in response.json()["reason"]


async def test_unproducible_accept_is_406(client, series) -> None:  # type: ignore[no-untyped-def]
    study, series_uid, datasets, _ = series
    response = await client.get(
        f"/studies/{study}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        },
    )
    assert response.status_code == 406
    response = await client.get(f"/studies/{study}/metadata", headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert response.json()["reason"]


@pytest.mark.parametrize(
    ("accept", "single"),
    [
        ("application/dicom", True),
        ("application/dicom; transfer-syntax=*", True),
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", True),
        ('application/dicom, multipart/related; type="application/dicom"; q=0.5', True),
        ('multipart/related; type="application/dicom"', False),
        ('multipart/related; type="application/dicom"; q=0.9, application/dicom; q=0.5', False),
        ("*/*", False),
        (None, False),
    ],
)
async def test_instance_as_one_part10_body_when_application_dicom_is_preferred(
    client: httpx.AsyncClient, accept: str | None, single: bool
) -> None:
    """`Accept: application/dicom` on an instance gets the Part 10 file itself, as Microsoft's
    and Google's services answer and their clients expect (a multipart answer would be one
    the client did not accept); multipart stays the default (PS3.18 10.4.1.1.1)."""
    ds = ct_dataset(uid(), seed=5)
    data = to_part10(ds)
    await _store(client, [data])
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = await client.get(url, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200, response.text
    if not single:
        assert response.headers["content-type"].startswith("multipart/related")
        return
    assert response.headers["content-type"] == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert response.headers["content-location"].endswith(url)
    assert int(response.headers["content-length"]) == len(response.content)
    served = dcmread(io.BytesIO(response.content))
    assert served.SOPInstanceUID == ds.SOPInstanceUID
    assert served.PixelData == ds.PixelData
