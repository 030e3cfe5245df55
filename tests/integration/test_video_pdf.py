"""Issue 15: video and encapsulated documents over WADO-RS, on both backend pairs.

Video Pixel Data is one body (PS3.18 Table 8.7.3-5 Note 5): as stored (video/mpeg2,
video/H265, MP4 as stored) or remuxed into video/mp4, single part unless a multipart type is
asked for, with Content-Length and byte ranges; the rendered resource is the same video
(Table 8.7.4-1). An Encapsulated Document is its own media type (application/pdf, text/xml).
"""

from __future__ import annotations

import asyncio
import io
import socket
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.applications import Starlette
from test_wado import _store
from video_samples import H264, H264_FRAGMENTABLE, HEVC, MPEG2, decoded, encode, video_instance

from dicomweb_server.domain.identifiers import DEFAULT_SITE

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"
# 24 frames at 25 Hz: 0.96 s; frame i (from 0) is a flat grey of level 8*i.
FRAMES, RATE = 24, Fraction(25)


def _pdf(lines: int = 40) -> bytes:
    """A small PDF of odd length (so the stored value carries a pad byte)."""
    body = b"%PDF-1.4\n%" + b"".join(b"%% line %d\n" % n for n in range(lines))
    body += b"%%EOF\n"
    return body if len(body) % 2 else body + b"x"


def _document(document: bytes, mime_type: str, sop_class: str, study: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = uid()
    ds.PatientID, ds.PatientName = "PAT-DOC", "Doc^Test"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DOC", 3, 1
    ds.MIMETypeOfEncapsulatedDocument = mime_type
    ds.EncapsulatedDocument = document
    ds.EncapsulatedDocumentLength = len(document)
    return ds


def _video(
    codec: str, syntax: str, *, study: str | None = None, **kwargs: Any
) -> tuple[Dataset, bytes]:
    stream = encode(codec, "es", frames=FRAMES, rate=RATE)
    ds = video_instance(stream, syntax, frames=FRAMES, **kwargs)
    if study is not None:
        ds.StudyInstanceUID = study
    return ds, stream


def _path(ds: Dataset, suffix: str) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


async def _stored_video(
    client: httpx.AsyncClient, codec: str, syntax: str, **kwargs: Any
) -> tuple[Dataset, bytes]:
    ds, stream = _video(codec, syntax, **kwargs)
    await _store(client, [to_part10(ds)])
    return ds, stream


def _as_stored(stream: bytes) -> tuple[bytes, ...]:
    """An elementary stream as stored: an odd-length one keeps the pad byte of its fragment
    (PS3.5 A.4), as a trailing zero byte is valid there and cannot be told from data."""
    return (stream, stream + b"\x00") if len(stream) % 2 else (stream,)


def _assert_plays(mp4: bytes) -> None:
    """The MP4 shows all 24 frames in order over 0.96 s (what a browser's player sees)."""
    levels, times, duration, width, height = decoded(mp4)
    assert len(levels) == FRAMES
    assert all(abs(level - 8 * i) <= 6 for i, level in enumerate(levels)), levels
    assert times == sorted(times)
    assert duration == pytest.approx(0.96, abs=0.05)
    assert (width, height) == (64, 48)


async def test_issue15_video_mp4_bulkdata(client: httpx.AsyncClient) -> None:
    """H.264 (an elementary stream) is remuxed to one video/mp4 body: no Accept, */*,
    video/mp4 and ?accept=video/mp4 all get the same bytes, single part, with a length."""
    ds, _ = await _stored_video(client, "h264", H264)
    url = _path(ds, "/bulkdata/7FE00010")
    bodies = []
    for headers, query in (({}, ""), ({"Accept": "*/*"}, ""), ({"Accept": "video/mp4"}, "")):
        response = await client.get(url + query, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "video/mp4"
        assert response.headers["content-length"] == str(len(response.content))
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["etag"].startswith('"')
        bodies.append(response.content)
    # The accept parameter wins over the header (PS3.18 8.3.3.1), as OHIF sends both.
    response = await client.get(url + "?accept=video/mp4", headers={"Accept": "image/jpeg"})
    assert response.status_code == 200
    bodies.append(response.content)
    assert all(body == bodies[0] for body in bodies)
    _assert_plays(bodies[0])

    multipart = await client.get(url, headers={"Accept": 'multipart/related; type="video/mp4"'})
    assert multipart.status_code == 200
    assert multipart.headers["content-type"].startswith('multipart/related; type="video/mp4"')
    assert multipart.headers["content-length"] == str(len(multipart.content))
    parts = parse_multipart(multipart.content, multipart.headers["content-type"])
    assert len(parts) == 1
    assert parts[0][0]["content-type"] == f"video/mp4; transfer-syntax={H264}"
    assert parts[0][1] == bodies[0]


async def test_issue15_video_rendered_is_the_same_mp4_with_caching_headers(
    client: httpx.AsyncClient,
) -> None:
    ds, _ = await _stored_video(client, "h264", H264)
    bulk = await client.get(_path(ds, "/bulkdata/7FE00010"))
    rendered = await client.get(_path(ds, "/rendered"), headers={"Accept": "*/*"})
    assert rendered.status_code == 200
    assert rendered.headers["content-type"] == "video/mp4"
    assert rendered.content == bulk.content
    assert "max-age" in rendered.headers["cache-control"]
    etag = rendered.headers["etag"]
    again = await client.get(_path(ds, "/rendered"), headers={"If-None-Match": etag})
    assert again.status_code == 304


async def test_issue15_video_range_requests(client: httpx.AsyncClient) -> None:
    """Browsers seek with Range: a plain 206 with Content-Range; 416 past the end."""
    ds, _ = await _stored_video(client, "h264", H264)
    url = _path(ds, "/rendered")
    whole = (await client.get(url)).content
    size = len(whole)
    etag = (await client.get(url)).headers["etag"]

    first = await client.get(url, headers={"Range": "bytes=0-"})
    assert first.status_code == 206
    assert first.headers["content-type"] == "video/mp4"
    assert first.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    assert first.content == whole

    middle = await client.get(url, headers={"Range": "bytes=100-299"})
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 100-299/{size}"
    assert middle.headers["content-length"] == "200"
    assert middle.content == whole[100:300]

    suffix = await client.get(_path(ds, "/bulkdata/7FE00010"), headers={"Range": "bytes=-50"})
    assert suffix.status_code == 206
    assert suffix.content == whole[-50:]

    past = await client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{size}"

    stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == whole
    fresh = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == whole[:10]

    multipart = await client.get(
        _path(ds, "/bulkdata/7FE00010"),
        headers={"Accept": 'multipart/related; type="video/mp4"', "Range": "bytes=10-19"},
    )
    assert multipart.status_code == 206
    parts = parse_multipart(multipart.content, multipart.headers["content-type"])
    assert parts[0][0]["content-range"] == f"bytes 10-19/{size}"
    assert parts[0][1] == whole[10:20]


async def test_issue15_hevc_as_stored_and_remuxed(client: httpx.AsyncClient) -> None:
    ds, stream = await _stored_video(client, "hevc", HEVC)
    url = _path(ds, "/bulkdata/7FE00010")
    stored = await client.get(url, headers={"Accept": "video/H265"})
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "video/H265"
    assert stored.content in _as_stored(stream)
    rendered = await client.get(_path(ds, "/rendered"), headers={"Accept": "video/h265"})
    assert rendered.content in _as_stored(stream)
    mp4 = await client.get(url)  # our preference: what browsers play
    assert mp4.headers["content-type"] == "video/mp4"
    _assert_plays(mp4.content)


async def test_issue15_fragmented_video_is_joined(client: httpx.AsyncClient) -> None:
    """A stream in many fragments (the fragmentable syntaxes, PS3.5 8.2.7) is served
    joined: as stored and remuxed."""
    ds, stream = await _stored_video(client, "hevc", HEVC, fragment_size=300)
    stored = await client.get(_path(ds, "/bulkdata/7FE00010"), headers={"Accept": "video/H265"})
    assert stored.content in _as_stored(stream)
    ranged = await client.get(
        _path(ds, "/bulkdata/7FE00010"),
        headers={"Accept": "video/H265", "Range": "bytes=250-649"},
    )
    assert ranged.content == stream[250:650]
    h264, _ = await _stored_video(client, "h264", H264_FRAGMENTABLE, fragment_size=256)
    _assert_plays((await client.get(_path(h264, "/rendered"))).content)


async def test_issue15_h264_in_mp4_as_stored_and_in_mpeg_ts_remuxed(
    client: httpx.AsyncClient,
) -> None:
    """The container is sniffed: MP4 is already video/mp4; a transport stream is remuxed."""
    for container in ("mp4", "ts"):
        stream = encode("h264", container, frames=FRAMES, rate=RATE)
        ds = video_instance(stream, H264, frames=FRAMES)
        await _store(client, [to_part10(ds)])
        response = await client.get(_path(ds, "/rendered"))
        assert response.status_code == 200, (container, response.text)
        assert response.headers["content-type"] == "video/mp4"
        if container == "mp4":
            assert response.content == stream
        _assert_plays(response.content)


async def test_issue15_mpeg2_as_stored(client: httpx.AsyncClient) -> None:
    ds, stream = await _stored_video(client, "mpeg2", MPEG2)
    bulk = await client.get(_path(ds, "/bulkdata/7FE00010"))
    assert bulk.headers["content-type"] == "video/mpeg2"
    assert bulk.content in _as_stored(stream)
    rendered = await client.get(_path(ds, "/rendered"))
    assert rendered.headers["content-type"] == "video/mpeg"  # Table 8.7.4-1's name
    assert rendered.content in _as_stored(stream)
    refused = await client.get(_path(ds, "/rendered"), headers={"Accept": "video/mp4"})
    assert refused.status_code == 406
    assert "video/mpeg" in refused.json()["reason"]


async def test_issue15_unacceptable_video_is_406_listing_offers(client: httpx.AsyncClient) -> None:
    ds, _ = await _stored_video(client, "h264", H264)
    for accept in (
        "application/octet-stream",
        "video/H265",
        'multipart/related; type="image/jpeg"',
    ):
        response = await client.get(_path(ds, "/bulkdata/7FE00010"), headers={"Accept": accept})
        assert response.status_code == 406, accept
        assert "video/mp4" in response.json()["reason"]
    other_syntax = 'multipart/related; type="video/mp4"; transfer-syntax=1.2.840.10008.1.2.4.50'
    response = await client.get(_path(ds, "/bulkdata/7FE00010"), headers={"Accept": other_syntax})
    assert response.status_code == 406
    response = await client.get(_path(ds, "/rendered"), headers={"Accept": "application/pdf"})
    assert response.status_code == 406
    assert "video/mp4" in response.json()["reason"]


async def test_issue15_video_frames_render_as_images(client: httpx.AsyncClient) -> None:
    """Thumbnails show the first frame; a rendered frame is decoded; only-image Accept on the
    rendered instance gets its first frame."""
    ds, _ = await _stored_video(client, "h264", H264)
    thumbnail = await client.get(_path(ds, "/thumbnail"))
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 48)
    frame = await client.get(_path(ds, "/frames/13/rendered"), headers={"Accept": "image/png"})
    assert frame.status_code == 200
    grey = np.asarray(Image.open(io.BytesIO(frame.content)).convert("L"))
    assert abs(grey.mean() - 8 * 12) <= 6
    first = await client.get(_path(ds, "/rendered"), headers={"Accept": "image/png"})
    assert first.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(first.content)).convert("L")).max() <= 8
    series = await client.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"
    )
    assert series.status_code == 200


async def test_issue15_remuxed_video_is_cached_and_made_once(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    ds, _ = await _stored_video(client, "h264", H264)
    url = _path(ds, "/rendered")
    answers = await asyncio.gather(*(client.get(url) for _ in range(4)))
    assert len({answer.content for answer in answers}) == 1
    blobs = app.state.backends.blobs
    prefix = f"{DEFAULT_SITE}/cache/{ds.StudyInstanceUID}/"
    cached = [info async for info in blobs.iter_objects(prefix) if "/video/" in info.key]
    assert len(cached) == 1
    assert cached[0].size == 16 + len(answers[0].content)
    again = await client.get(url, headers={"Range": "bytes=5-9"})
    assert again.content == answers[0].content[5:10]


async def test_issue15_pdf_bulkdata_and_rendered(client: httpx.AsyncClient) -> None:
    """The document as stored, pad byte removed: bulk data and rendered alike."""
    for document in (_pdf(), _pdf(lines=3)):  # a BulkDataURI, and InlineBinary (< 1 KiB)
        assert len(document) % 2 == 1
        ds = _document(document, "application/pdf", ENCAPSULATED_PDF)
        await _store(client, [to_part10(ds)])
        for url, headers in (
            (_path(ds, "/bulkdata/00420011"), {}),
            (_path(ds, "/bulkdata/00420011"), {"Accept": "application/pdf"}),
            (_path(ds, "/rendered"), {}),
            (_path(ds, "/rendered"), {"Accept": "*/*"}),
        ):
            response = await client.get(url, headers=headers)
            assert response.status_code == 200, (url, response.text)
            assert response.headers["content-type"] == "application/pdf"
            assert response.content == document
            assert response.content.startswith(b"%PDF-")
            assert response.headers["content-length"] == str(len(document))
        ranged = await client.get(_path(ds, "/rendered"), headers={"Range": "bytes=0-4"})
        assert ranged.status_code == 206 and ranged.content == b"%PDF-"
    octets = await client.get(
        _path(ds, "/bulkdata/00420011"),
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    parts = parse_multipart(octets.content, octets.headers["content-type"])
    assert parts[0][0]["content-type"] == "application/octet-stream"
    assert parts[0][1] == document
    refused = await client.get(_path(ds, "/rendered"), headers={"Accept": "image/jpeg"})
    assert refused.status_code == 406
    assert "application/pdf" in refused.json()["reason"]


async def test_issue15_cda_is_text_xml(client: httpx.AsyncClient) -> None:
    cda = b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    ds = _document(cda + b" " * 1100, "text/xml", ENCAPSULATED_CDA)
    await _store(client, [to_part10(ds)])
    response = await client.get(_path(ds, "/rendered"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml"
    assert response.content.startswith(cda)


async def test_issue15_document_thumbnails_are_an_icon(client: httpx.AsyncClient) -> None:
    ds = _document(_pdf(), "application/pdf", ENCAPSULATED_PDF)
    await _store(client, [to_part10(ds)])
    series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    for url in (
        _path(ds, "/thumbnail"),
        series + "/thumbnail",
        f"/studies/{ds.StudyInstanceUID}/thumbnail",
    ):
        response = await client.get(url, params={"viewport": "64,64"})
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)


async def test_issue15_study_with_video_pdf_and_images_retrieves_whole(
    client: httpx.AsyncClient,
) -> None:
    """Default Accept: every instance; video (lossy) and the PDF (no Pixel Data) as stored."""
    study = uid()
    ct = ct_dataset(study, uid(), instance_number=1, seed=1)
    video, _ = _video("h264", H264, study=study)
    pdf = _document(_pdf(), "application/pdf", ENCAPSULATED_PDF, study=study)
    files = {ds.SOPInstanceUID: to_part10(ds) for ds in (ct, video, pdf)}
    await _store(client, list(files.values()))
    response = await client.get(f"/studies/{study}")
    assert response.status_code == 200, response.text
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 3
    by_uid = {dcmread(io.BytesIO(body)).SOPInstanceUID: (headers, body) for headers, body in parts}
    assert set(by_uid) == set(files)
    headers, body = by_uid[video.SOPInstanceUID]
    assert headers["content-type"] == f"application/dicom; transfer-syntax={H264}"
    assert body[128:] == files[video.SOPInstanceUID][128:]  # the preamble is zeroed on ingest
    headers, body = by_uid[pdf.SOPInstanceUID]
    assert headers["content-type"].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")
    assert body[128:] == files[pdf.SOPInstanceUID][128:]


def test_issue15_stow_body_arriving_with_the_headers_is_not_a_431(live_server: str) -> None:
    """Found by the e2e seed: a read holding the headers and the start of a large body
    counted the body as header bytes (over 64 KiB: 431). One write, as httpx often does."""
    body, content_type = multipart_body([to_part10(ct_dataset(rows=256, columns=256, frames=4))])
    host, port = live_server.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: "
            + content_type.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        head = sock.recv(1024)
    assert head.split(b" ", 2)[1] == b"200", head[:200]
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # still bounded
        sock.sendall(
            b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * (70 << 10))
        )
        assert sock.recv(1024).split(b" ", 2)[1] == b"431"


_NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_UNDECODABLE = "1.2.840.10008.1.2.4.112"  # JPEG XL: no installed codec decodes it


def _into_study(name: str, study: str) -> Dataset:
    """A pydicom test file moved into `study` (new instance UIDs), its encoding kept."""
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, uid(), uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _written(ds: Dataset, encapsulated: bool = False) -> bytes:
    """Part 10 in the data set's syntax (`encapsulated`: one pydicom does not know, written
    as explicit VR little endian with encapsulated Pixel Data, as every such syntax is)."""
    out = io.BytesIO()
    if not encapsulated:
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    return out.getvalue() + body.getvalue()


async def test_issue15_mixed_study_every_accept_is_decided_before_the_first_byte(
    client: httpx.AsyncClient,
) -> None:
    """Issue 15 item 3 (PS3.18 8.7.3.5.2): a study mixing native, lossy JPEG, H.264 video, a
    PDF, explicit VR big endian and a syntax no codec decodes. Every Accept is either a 200
    whose every part is whole and says its syntax, or a 406 naming an instance: never a 5xx,
    never a body cut short."""
    study = uid()
    ct = ct_dataset(study, uid(), instance_number=1, seed=3)
    jpeg = _into_study("SC_rgb_jpeg_dcmtk.dcm", study)
    big = _into_study("MR_small_bigendian.dcm", study)
    video, _ = _video("h264", H264, study=study)
    pdf = _document(_pdf(), "application/pdf", ENCAPSULATED_PDF, study=study)
    opaque = _into_study("SC_rgb_jpeg_dcmtk.dcm", study)
    opaque.file_meta.TransferSyntaxUID = _UNDECODABLE
    files = {
        ct.SOPInstanceUID: to_part10(ct),
        jpeg.SOPInstanceUID: _written(jpeg),
        big.SOPInstanceUID: _written(big),
        video.SOPInstanceUID: to_part10(video),
        pdf.SOPInstanceUID: to_part10(pdf),
        opaque.SOPInstanceUID: _written(opaque, encapsulated=True),
    }
    await _store(client, list(files.values()))
    stored_syntax = {
        ct.SOPInstanceUID: "1.2.840.10008.1.2.1",
        jpeg.SOPInstanceUID: _JPEG_BASELINE,
        big.SOPInstanceUID: _BIG_ENDIAN,
        video.SOPInstanceUID: H264,
        pdf.SOPInstanceUID: "1.2.840.10008.1.2.1",
        opaque.SOPInstanceUID: _UNDECODABLE,
    }

    async def served(accept: str | None) -> dict[str, str] | str:
        """Each instance's served syntax for a 200, or the 406's reason."""
        headers = {"Accept": accept} if accept else {}
        response = await client.get(f"/studies/{study}", headers=headers)
        if response.status_code == 406:
            return str(response.json()["reason"])
        assert response.status_code == 200, (accept, response.status_code, response.text[:300])
        parts = parse_multipart(response.content, response.headers["content-type"])
        syntaxes = {}
        for part_headers, body in parts:
            ds = dcmread(io.BytesIO(body))  # whole: pydicom reads to the end
            syntax = str(ds.file_meta.TransferSyntaxUID)
            assert part_headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
            syntaxes[str(ds.SOPInstanceUID)] = syntax
            if syntax == stored_syntax[ds.SOPInstanceUID] and syntax != _BIG_ENDIAN:
                assert body[132:] == files[ds.SOPInstanceUID][132:] or syntax in _NATIVE
        assert set(syntaxes) == set(files), accept
        return syntaxes

    multipart = 'multipart/related; type="application/dicom"'
    # The default and an explicit multipart without a syntax: explicit VR little endian where
    # it can be made, lossy and video and what no codec reads as stored (8.7.3.5.2).
    for accept in (None, "*/*", multipart):
        answer = await served(accept)
        assert isinstance(answer, dict), (accept, answer)
        assert answer == {
            **{key: stored for key, stored in stored_syntax.items()},
            big.SOPInstanceUID: "1.2.840.10008.1.2.1",
        }, accept
    # As stored, every one.
    assert await served(f"{multipart}; transfer-syntax=*") == {
        **stored_syntax,
        big.SOPInstanceUID: _BIG_ENDIAN,
    }
    # Native asked for: the video and the undecodable instance cannot be: a 406 naming one.
    for syntax in _NATIVE:
        answer = await served(f"{multipart}; transfer-syntax={syntax}")
        assert isinstance(answer, str), syntax
        assert video.SOPInstanceUID in answer or opaque.SOPInstanceUID in answer, answer
    # A lossless compressed syntax: the same 406 (video and JPEG XL cannot be re-encoded).
    answer = await served(f"{multipart}; transfer-syntax=1.2.840.10008.1.2.5")
    assert isinstance(answer, str)
    # A multipart of several types: each instance in the first it can take, never a 5xx.
    both = f"{multipart}; transfer-syntax=1.2.840.10008.1.2.1, {multipart}; transfer-syntax=*"
    answer = await served(both)
    assert isinstance(answer, dict), answer
    assert answer[ct.SOPInstanceUID] == "1.2.840.10008.1.2.1"
    assert answer[big.SOPInstanceUID] == "1.2.840.10008.1.2.1"
    assert answer[video.SOPInstanceUID] == H264
    assert answer[opaque.SOPInstanceUID] == _UNDECODABLE
