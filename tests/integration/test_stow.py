"""STOW-RS over HTTP on the embedded backends (PS3.18 10.5)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, RLELossless

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

DICOM_JSON = "application/dicom+json"
BASE = "http://t/dicomweb"


async def _count_instances(client: httpx.AsyncClient) -> int:
    response = await client.get("/instances")
    assert response.status_code == 200
    return len(response.json())


async def test_store_returns_referenced_sop_sequence_with_retrieve_urls(
    client: httpx.AsyncClient,
) -> None:
    study = uid()
    files = [to_part10(ct_dataset(study, instance_number=i + 1)) for i in range(3)]
    body, content_type = multipart_body(files)
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON  # exactly, no charset (PS3.18 10.5.3)
    result = response.json()
    referenced = result["00081199"]["Value"]
    assert len(referenced) == 3
    assert all(
        item["00081190"]["Value"][0].startswith("http://testserver/dicomweb/studies/")
        for item in referenced
    )
    assert result["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{study}"]
    assert "00081198" not in result


@pytest.mark.parametrize("type_param", ['type="application/dicom"', "type=application/dicom"])
async def test_store_accepts_quoted_and_unquoted_type(
    client: httpx.AsyncClient, type_param: str
) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    boundary = content_type.split("boundary=")[1]
    response = await client.post(
        "/studies",
        content=body,
        headers={"Content-Type": f"multipart/related; {type_param}; boundary={boundary}"},
    )
    assert response.status_code == 200


async def test_store_streams_a_chunked_body(client: httpx.AsyncClient) -> None:
    body, content_type = multipart_body(
        [to_part10(ct_dataset(rows=64, columns=64)) for _ in range(4)]
    )

    async def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = await client.post(
        "/studies", content=chunks(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 4


async def test_store_to_study_url_rejects_instances_of_other_studies(
    client: httpx.AsyncClient,
) -> None:
    study = uid()
    good, other = to_part10(ct_dataset(study)), to_part10(ct_dataset(uid()))
    body, content_type = multipart_body([good, other])
    response = await client.post(
        f"/studies/{study}", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 202  # some stored, some failed (PS3.18 10.5.3.1)
    result = response.json()
    assert len(result["00081199"]["Value"]) == 1
    failed = result["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xA900]
    assert "differs from the request URL" in response.headers["warning"]
    assert await _count_instances(client) == 1


async def test_same_instance_twice_keeps_one_copy(client: httpx.AsyncClient) -> None:
    data = to_part10(ct_dataset())
    for _ in range(2):
        body, content_type = multipart_body([data])
        response = await client.post(
            "/studies", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 200
    assert await _count_instances(client) == 1
    studies = (await client.get("/studies")).json()
    assert studies[0]["00201208"]["Value"] == [1]


async def test_different_object_with_same_uid_is_refused_and_original_kept(
    client: httpx.AsyncClient,
) -> None:
    first = ct_dataset(seed=1)
    body, content_type = multipart_body([to_part10(first)])
    await client.post("/studies", content=body, headers={"Content-Type": content_type})
    second = ct_dataset(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, seed=2
    )
    body, content_type = multipart_body([to_part10(second)])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]
    frame = await client.get(
        f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert first.PixelData in frame.content


async def test_preamble_is_zeroed_on_ingest(client: httpx.AsyncClient) -> None:
    ds = ct_dataset()
    data = bytearray(to_part10(ds))
    data[:4] = b"MZ\x90\x00"  # an executable header in the preamble
    body, content_type = multipart_body([bytes(data)])
    assert (
        await client.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    response = await client.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert b"\0" * 128 + b"DICM" in response.content
    assert b"MZ\x90\x00" not in response.content


@pytest.mark.parametrize(
    ("part", "reason"),
    [
        (b"this is not dicom at all", 0xC000),
        (to_part10(ct_dataset())[:300], 0xC000),  # cut inside an element: truncated
        (to_part10(ct_dataset(rows=64, columns=64))[:-2000], 0xC000),  # pixel data cut short
    ],
    ids=["not-dicom", "truncated-header", "truncated-pixels"],
)
async def test_bad_parts_fail_with_reason_and_store_nothing(
    client: httpx.AsyncClient, part: bytes, reason: int
) -> None:
    body, content_type = multipart_body([part])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [reason]
    assert await _count_instances(client) == 0


def _short_pixel_data(ds: Dataset) -> bytes:
    ds.PixelData = ds.PixelData[:100]  # Rows×Columns need 512
    return to_part10(ds)


def _negative_frames(ds: Dataset) -> bytes:
    ds.NumberOfFrames = "-1"
    return to_part10(ds)


def _declared_too_large(ds: Dataset) -> bytes:
    ds.Rows = ds.Columns = 65535
    return to_part10(ds)


def _contradicting_first_frame(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\0" * 4])  # an RLE frame needs a 64-byte header
    ds["PixelData"].VR = "OB"
    return to_part10(ds)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_short_pixel_data, 0xC000),
        (_negative_frames, 0xC000),
        (_declared_too_large, 0xA700),
        (_contradicting_first_frame, 0xC000),
    ],
    ids=["pixel-data-short", "negative-frames", "declared-too-large", "first-frame"],
)
async def test_failed_sop_sequence_names_an_instance_whose_uids_were_read(
    client: httpx.AsyncClient, make: Callable[[Dataset], bytes], reason: int
) -> None:
    """PS3.18 10.5.3: a Failed SOP Sequence item identifies the instance by its Referenced
    SOP Class and Instance UIDs. One refused after its header was read is named there and in
    the Warning; a part with no UIDs to read (not DICOM, cut before them) names nothing."""
    study = uid()
    bad = ct_dataset(study, instance_number=2)
    stored = [to_part10(ct_dataset(study, instance_number=n)) for n in (1, 3)]
    cut = to_part10(ct_dataset(study))[:200]
    body, content_type = multipart_body([stored[0], make(bad), b"not dicom", cut, stored[1]])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    result = response.json()
    assert len(result["00081199"]["Value"]) == 2
    named, *unnamed = result["00081198"]["Value"]
    assert named["00081197"]["Value"] == [reason]
    assert named["00081150"] == {"vr": "UI", "Value": [CTImageStorage]}
    assert named["00081155"] == {"vr": "UI", "Value": [bad.SOPInstanceUID]}
    assert len(unnamed) == 2
    assert all(item["00081150"] == item["00081155"] == {"vr": "UI"} for item in unnamed)
    warnings = response.headers.get_list("warning")
    assert bad.SOPInstanceUID in warnings[0]
    assert not any("SOP Instance" in warning for warning in warnings[1:])
    assert await _count_instances(client) == 2


async def test_part_without_content_type_fails_without_a_type_parameter(
    client: httpx.AsyncClient,
) -> None:
    body, content_type = multipart_body([({}, to_part10(ct_dataset()))])
    boundary = content_type.split("boundary=")[1]
    response = await client.post(
        "/studies",
        content=body,
        headers={"Content-Type": f"multipart/related; boundary={boundary}"},
    )
    assert response.status_code == 409
    assert "no Content-Type" in response.headers["warning"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 409),  # single part: this body is not a Part 10 instance
        ("multipart/related; boundary=abc", 400),  # no type: parts say; no such boundary
        ('multipart/related; type="application/dicom+xml"; boundary=abc', 415),
        ('multipart/related; type="application/dicom"', 400),
        ("", 415),
    ],
)
async def test_bad_request_media_types(
    client: httpx.AsyncClient, content_type: str, status: int
) -> None:
    body, _ = multipart_body([to_part10(ct_dataset())])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    if status == 409:  # a STOW response: the instance failed, with its reason
        assert response.json()["00081198"]["Value"][0]["00081197"]["Value"]
        assert response.headers["warning"]
    else:
        assert response.json()["reason"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"--wrong\r\n\r\nxx\r\n--wrong--\r\n",
        b"--b\r\nContent-Type: application/dicom\r\n\r\nunterminated",
    ],
    ids=["empty", "wrong-boundary", "unterminated"],
)
async def test_malformed_bodies_are_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert response.status_code == 400
    assert response.json()["reason"]


async def test_malformed_study_uid_in_path_is_400(client: httpx.AsyncClient) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    response = await client.post(
        "/studies/1.2.abc", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert "not a valid UID" in response.json()["reason"]


async def test_body_over_the_limit_is_413(tmp_path, settings) -> None:  # type: ignore[no-untyped-def]

    from dicomweb_server.app import create_app

    app = create_app(settings.replace(max_request_bytes=10_000))  # a second app on the same store
    body, content_type = multipart_body([to_part10(ct_dataset(rows=128, columns=128))])
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t/dicomweb"
        ) as http,
    ):
        response = await http.post("/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 413
        assert (await http.get("/instances")).json() == []


@pytest.mark.parametrize("in_path", [False, True])
async def test_issue15_single_part_stow_is_stored_like_a_one_part_request(
    client: httpx.AsyncClient, in_path: bool
) -> None:
    ds = ct_dataset()
    data = to_part10(ds)
    url = f"/studies/{ds.StudyInstanceUID}" if in_path else "/studies"
    single = await client.post(url, content=data, headers={"Content-Type": "application/dicom"})
    assert single.status_code == 200, single.text
    body, content_type = multipart_body([data])
    again = await client.post(url, content=body, headers={"Content-Type": content_type})
    assert again.status_code == 200
    assert single.json() == again.json()  # the same response, and one stored copy
    assert await _count_instances(client) == 1


async def test_issue15_single_part_stow_refuses_an_empty_or_oversized_body(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    empty = await client.post(
        "/studies", content=b"", headers={"Content-Type": "application/dicom"}
    )
    assert empty.status_code == 400 and "empty" in empty.json()["reason"]
    app = create_app(settings.replace(max_part_bytes=1000))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as small:
            big = await small.post(
                "/studies",
                content=to_part10(ct_dataset(rows=64, columns=64)),
                headers={"Content-Type": "application/dicom"},
            )
    assert big.status_code == 413
    assert "1000" in big.json()["reason"]


async def test_issue15_multipart_without_a_type_parameter_is_taken_by_its_parts(
    client: httpx.AsyncClient,
) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    bare = content_type.replace('type="application/dicom"; ', "").replace(
        "type=application/dicom; ", ""
    )
    assert "type=" not in bare
    response = await client.post("/studies", content=body, headers={"Content-Type": bare})
    assert response.status_code == 200, response.text


async def test_issue23_stow_that_breaks_off_reports_what_it_stored(
    client: httpx.AsyncClient,
) -> None:
    """Three valid parts, then no close delimiter: the three are stored and reported (202),
    with a failure naming the broken body, never a 400 that hides stored instances."""
    files = [to_part10(ct_dataset(instance_number=n, seed=n)) for n in range(3)]
    body, content_type = multipart_body(files)
    cut = body[: body.rindex(b"--")]  # drop the close delimiter
    response = await client.post("/studies", content=cut, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    result = response.json()
    assert len(result["00081199"]["Value"]) == 3
    failure = result["00081198"]["Value"][0]
    assert failure["00081197"]["Value"] == [0xC000]
    assert "broke off" in response.headers["warning"]
    assert await _count_instances(client) == 3


async def test_issue23_stow_that_breaks_off_before_any_instance_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    cut = body[: len(body) // 2]  # inside the first part
    response = await client.post("/studies", content=cut, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert await _count_instances(client) == 0


async def test_issue15_wrong_file_meta_is_rewritten_on_ingest(client: httpx.AsyncClient) -> None:
    """A File Meta Information Group Length of 0xFFFFFFF0 (and a MediaStorageSOPInstanceUID
    that names another instance) is stored with a correct group; a right group is kept as sent."""
    import io
    import struct

    from pydicom import dcmread

    from dicomweb_server.domain.file_meta import (
        IMPLEMENTATION_CLASS_UID,
        meta_problems,
        read_file_meta,
    )

    ds = ct_dataset()
    ds.file_meta.MediaStorageSOPInstanceUID = uid()
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY1"
    sent = to_part10(ds)
    broken = sent[:140] + struct.pack("<I", 0xFFFFFFF0) + sent[144:]
    good = to_part10(ct_dataset())
    body, content_type = multipart_body([broken, good])
    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = await client.get(url, headers=accept)
    ((_, served),) = parse_multipart(response.content, response.headers["content-type"])
    meta = read_file_meta(served)
    assert meta_problems(meta, ds.SOPClassUID, ds.SOPInstanceUID) == []
    read = dcmread(io.BytesIO(served))
    assert read.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert read.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert served[meta.end :] == sent[read_file_meta(sent).end :]  # the data set untouched
    frames = await client.get(
        url + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"}
    )
    assert frames.status_code == 200  # offsets recorded after the rewrite
    assert parse_multipart(frames.content, frames.headers["content-type"])[0][1] == ds.PixelData
    other = dcmread(io.BytesIO(good))
    url = f"/studies/{other.StudyInstanceUID}/series/{other.SeriesInstanceUID}/instances/{other.SOPInstanceUID}"
    response = await client.get(url, headers=accept)
    ((_, kept),) = parse_multipart(response.content, response.headers["content-type"])
    assert kept[128:] == good[128:]  # a right group is kept byte for byte
