"""Responses chosen by Accept: the `accept` parameter (PS3.18 8.3.3.1), Vary (RFC 9110 12.5.5),
byte ranges of bulk data (RFC 9110 14.2, 15.3.7) and the JSON type a search answers."""

from __future__ import annotations

import httpx
import pytest
from dicomfiles import ct_dataset, parse_multipart, to_part10, uid
from pydicom import dcmread
from pydicom.data import get_testdata_file
from test_wado import _store

OCTETS = 'multipart/related; type="application/octet-stream"'
RLE = 'multipart/related; type="image/dicom-rle"'


@pytest.fixture
def backend() -> str:
    """Negotiation happens in the web layer: the embedded backends suffice."""
    return "embedded"


@pytest.fixture
async def ct(client: httpx.AsyncClient) -> str:
    """A native two-frame CT instance; its URL below the root."""
    ds = ct_dataset(uid(), uid(), instance_number=1, seed=1, frames=2)
    await _store(client, [to_part10(ds)])
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.fixture
async def rle(client: httpx.AsyncClient) -> str:
    """An RLE Lossless instance (encapsulated Pixel Data); its URL below the root."""
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    with open(path, "rb") as handle:
        await _store(client, [handle.read()])
    ds = dcmread(path)
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _part_type(response: httpx.Response) -> str:
    (headers, _), *_ = parse_multipart(response.content, response.headers["content-type"])
    return headers["content-type"]


async def test_ps3_18_8_3_3_1_accept_parameter_replaces_the_header_on_frames(
    client: httpx.AsyncClient, ct: str
) -> None:
    asked = await client.get(f"{ct}/frames/1", params={"accept": RLE}, headers={"Accept": OCTETS})
    assert asked.status_code == 200
    assert _part_type(asked) == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    refused = await client.get(f"{ct}/frames/1", params={"accept": "image/png"})
    assert refused.status_code == 406
    twice = await client.get(f"{ct}/frames/1?accept={OCTETS}&accept={OCTETS}")
    assert twice.status_code == 400


async def test_ps3_18_8_3_3_1_accept_parameter_replaces_the_header_on_bulk_data(
    client: httpx.AsyncClient, ct: str, rle: str
) -> None:
    native = await client.get(f"{ct}/bulkdata/7FE00010", params={"accept": RLE})
    assert native.status_code == 406  # bulk data is sent as stored: native is no RLE
    assert "application/octet-stream" in native.json()["reason"]
    octets = await client.get(f"{ct}/bulkdata/7FE00010", params={"accept": OCTETS})
    assert octets.status_code == 200
    stored = await client.get(
        f"{rle}/bulkdata/7FE00010", params={"accept": RLE}, headers={"Accept": "image/png"}
    )
    assert stored.status_code == 200
    assert _part_type(stored) == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    labelled = await client.get(
        f"{rle}/bulkdata/7FE00010", params={"accept": f"{OCTETS}; transfer-syntax=*"}
    )
    assert _part_type(labelled) == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5"


async def test_ps3_18_8_3_3_1_accept_parameter_is_no_matching_key_of_a_search(
    client: httpx.AsyncClient, ct: str
) -> None:
    found = await client.get("/instances", params={"accept": "application/dicom+json"})
    assert found.status_code == 200 and len(found.json()) == 1
    refused = await client.get(
        "/studies", params={"accept": "image/png"}, headers={"Accept": "application/json"}
    )
    assert refused.status_code == 406


def _vary(response: httpx.Response) -> list[str]:
    """Every name of every Vary line, as sent."""
    return [name.strip() for line in response.headers.get_list("vary") for name in line.split(",")]


async def test_rfc_9110_12_5_5_every_negotiated_response_varies_on_accept(
    client: httpx.AsyncClient, ct: str, rle: str
) -> None:
    study = ct.split("/series/")[0]
    for path, accept in (
        (f"{ct}/frames/1", OCTETS),
        (f"{ct}/frames/1", RLE),
        (f"{ct}/frames/1,2", OCTETS),
        (ct, 'multipart/related; type="application/dicom"'),
        (ct, "application/dicom"),
        (study, "application/zip"),
        (f"{ct}/metadata", "application/dicom+json"),
        (f"{study}/metadata", "application/json"),
        (f"{rle}/bulkdata/7FE00010", "*/*"),
        ("/studies", "application/dicom+json"),
        (f"{ct}/rendered", "image/png"),  # labelled by its handler: still once
    ):
        response = await client.get(path, headers={"Accept": accept})
        assert response.status_code == 200, (path, accept)
        vary = _vary(response)  # httpx accepts gzip: JSON may vary on Accept-Encoding too
        assert "Accept" in vary and len(vary) == len(set(vary)), (path, accept)
    refused = await client.get(f"{ct}/frames/1", headers={"Accept": "image/png"})
    assert refused.status_code == 406 and "Accept" in _vary(refused)
    assert "Accept" not in _vary(await client.get("/changefeed"))  # one type: no negotiation


async def test_rfc_9110_12_5_5_a_304_varies_as_its_200_and_vary_is_merged_once(
    client: httpx.AsyncClient, ct: str
) -> None:
    first = await client.get(f"{ct}/frames/1", headers={"Accept": OCTETS})
    cached = await client.get(
        f"{ct}/frames/1", headers={"Accept": OCTETS, "If-None-Match": first.headers["etag"]}
    )
    assert cached.status_code == 304 and _vary(cached) == ["Accept"]
    zipped = await client.get(
        "/instances", params={"includefield": "all"}, headers={"Accept-Encoding": "gzip"}
    )
    assert zipped.headers["content-encoding"] == "gzip"
    assert sorted(_vary(zipped)) == ["Accept", "Accept-Encoding"]


async def test_rfc_9110_14_2_ranges_of_bulk_data(client: httpx.AsyncClient, ct: str) -> None:
    """One range of bytes: 206, Content-Range on the response and on its one part (15.3.7.1);
    another unit is ignored and several ranges get the whole value, both 200."""
    url = f"{ct}/bulkdata/7FE00010"
    unranged = await client.get(url)
    assert unranged.headers["accept-ranges"] == "bytes"  # RFC 9110 14.3: ranges are offered
    whole = parse_multipart(*_body(unranged))[0][1]
    ranged = await client.get(url, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.headers["accept-ranges"] == "bytes"
    assert ranged.headers["content-range"] == f"bytes 0-9/{len(whole)}"
    ((part, data),) = parse_multipart(*_body(ranged))
    assert part["content-range"] == ranged.headers["content-range"] and data == whole[:10]
    # If-Range (13.1.5): bulk data has no strong validator, so it never holds: the whole.
    conditional = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    assert conditional.status_code == 200 and "content-range" not in conditional.headers
    assert parse_multipart(*_body(conditional))[0][1] == whole
    for header in ("items=0-5", "bytes=0-9,20-29"):
        response = await client.get(url, headers={"Range": header})
        assert response.status_code == 200, header
        assert "content-range" not in response.headers, header
        assert parse_multipart(*_body(response))[0][1] == whole, header


async def test_rfc_9110_14_2_ranges_of_a_document(client: httpx.AsyncClient) -> None:
    from test_video_pdf import _document, _path, _pdf

    pdf = _pdf()
    ds = _document(pdf, "application/pdf", "1.2.840.10008.5.1.4.1.1.104.1")
    await _store(client, [to_part10(ds)])
    url = _path(ds, "/bulkdata/00420011")
    for accept in ("application/pdf", 'multipart/related; type="application/pdf"'):
        ranged = await client.get(url, headers={"Accept": accept, "Range": "bytes=2-5"})
        assert ranged.status_code == 206, accept
        assert ranged.headers["content-range"] == f"bytes 2-5/{len(pdf)}", accept
        ignored = await client.get(url, headers={"Accept": accept, "Range": "items=0-1"})
        assert ignored.status_code == 200 and "content-range" not in ignored.headers, accept


def _body(response: httpx.Response) -> tuple[bytes, str]:
    return response.content, response.headers["content-type"]


async def test_ps3_18_8_7_a_search_and_metadata_answer_the_json_type_accepted(
    client: httpx.AsyncClient, ct: str
) -> None:
    study = ct.split("/series/")[0]
    for path in ("/studies", "/instances", f"{ct}/metadata", f"{study}/metadata"):
        for accept, answered in (
            ("application/json", "application/json"),
            ("application/dicom+json", "application/dicom+json"),
            ("*/*", "application/dicom+json"),
        ):
            response = await client.get(path, headers={"Accept": accept})
            assert response.status_code == 200, (path, accept)
            assert response.headers["content-type"] == answered, (path, accept)
        asked = await client.get(path, params={"accept": "application/json"})
        assert asked.headers["content-type"] == "application/json", path
    refused = await client.get("/studies", headers={"Accept": "text/html"})
    assert refused.status_code == 406
    assert "application/dicom+json or application/json" in refused.json()["reason"]
