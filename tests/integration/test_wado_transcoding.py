"""WADO-RS transcoding over HTTP: every stored × requested syntax pair we support (PS3.18 8.7.3)."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from dicomfiles import ct_dataset, parse_multipart, to_part10, uid
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from test_wado import _store

from dicomweb_server.codecs.registry import LOSSY_SYNTAXES, can_encode
from dicomweb_server.codecs.transcode import transcode_instance
from dicomweb_server.domain.blob_keys import frame_cache_key
from dicomweb_server.domain.identifiers import DEFAULT_SITE, InstanceKey

EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_SV1 = "1.2.840.10008.1.2.4.70"
JLS = "1.2.840.10008.1.2.4.80"
JLS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
TARGETS = [
    EVRLE,
    IVRLE,
    DEFLATED,
    RLE,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_SV1,
    JLS,
    JLS_NEAR,
    J2K_LOSSLESS,
    J2K,
    HTJ2K_LOSSLESS,
    HTJ2K,
]
MEDIA = {
    RLE: "image/dicom-rle",
    JPEG_BASELINE: "image/jpeg",
    JPEG_EXTENDED: "image/jpeg",
    JPEG_LOSSLESS: "image/jpeg",
    JPEG_SV1: "image/jpeg",
    JLS: "image/jls",
    JLS_NEAR: "image/jls",
    J2K_LOSSLESS: "image/jp2",
    J2K: "image/jp2",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K: "image/jphc",
}
# Stored files (pydicom's bundled data) by syntax; HTJ2K is generated below.
STORED = {
    EVRLE: "CT_small.dcm",
    IVRLE: "(generated: 16-bit CT, 2 frames)",
    DEFLATED: "image_dfl.dcm",
    RLE: "SC_rgb_rle_2frame.dcm",
    JPEG_BASELINE: "SC_rgb_jpeg_dcmtk.dcm",
    JPEG_EXTENDED: "JPGExtended.dcm",
    JPEG_SV1: "SC_rgb_jpeg_gdcm.dcm",
    JLS: "MR_small_jpeg_ls_lossless.dcm",
    JLS_NEAR: "(generated: smooth 12-bit, 2 frames)",
    J2K_LOSSLESS: "MR_small_jp2klossless.dcm",
    J2K: "JPEG2000.dcm",
}
# What a lossy target may change: mean absolute error ≤ 1% and max ≤ 10% of the range.
MEAN_TOLERANCE, MAX_TOLERANCE = 0.01, 0.10


def _smooth_ct(frames: int, rows: int, columns: int) -> Dataset:
    """A 12-bit image with the structure of a real one (lossy codecs are judged on it)."""
    ds = ct_dataset(frames=frames, rows=rows, columns=columns)
    y, x = np.mgrid[0:rows, 0:columns]
    images = [
        2048 + 1500 * np.sin(x / 5.0 + n) * np.cos(y / 7.0) + 40 * ((x + y + n) % 3)
        for n in range(frames)
    ]
    ds.PixelData = np.stack(images).astype(np.uint16).tobytes()
    return ds


def _stored_file(syntax: str) -> bytes:
    if syntax == IVRLE:
        return to_part10(_smooth_ct(2, 24, 20), implicit=True)
    if syntax in (HTJ2K_LOSSLESS, JLS_NEAR):
        out = io.BytesIO()
        transcode_instance(io.BytesIO(to_part10(_smooth_ct(2, 48, 40))), syntax, out)
        return out.getvalue()
    with open(get_testdata_file(STORED[syntax]), "rb") as handle:
        return handle.read()


def _pixels(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64)


def _assert_pixels(got: Dataset, expected: np.ndarray, lossy: bool, bits: int, label: str) -> None:
    array = _pixels(got)
    assert array.shape == expected.shape, label
    if not lossy:
        assert np.array_equal(array, expected), label
        return
    error = np.abs(array - expected)
    scale = float(1 << bits)
    assert error.mean() <= MEAN_TOLERANCE * scale, (label, error.mean())
    assert error.max() <= MAX_TOLERANCE * scale, (label, error.max())


def _producible(ds: Dataset, target: str) -> bool:
    """The limits PS3.5 puts on each target: JPEG lossy bit depths, unsigned JPEG lossy."""
    bits = int(ds.BitsStored)
    if target == JPEG_BASELINE:
        return bits <= 8 and not ds.PixelRepresentation
    if target == JPEG_EXTENDED:
        return bits <= 12 and not ds.PixelRepresentation and (bits <= 8 or ds.SamplesPerPixel == 1)
    if target in (JPEG_LOSSLESS, JPEG_SV1, HTJ2K_LOSSLESS, HTJ2K):
        return bits <= 16
    return int(ds.BitsAllocated) <= 16 or target in (EVRLE, IVRLE, DEFLATED)


def _url(ds: Dataset) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


STORED_SYNTAXES = [*STORED, HTJ2K_LOSSLESS]
assert JLS_NEAR in STORED


@pytest.mark.parametrize("stored", STORED_SYNTAXES)
async def test_instance_in_every_requested_syntax_ps3_18_8_7_3_4(client, stored) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(stored)
    await _store(client, [data])
    original = dcmread(io.BytesIO(data))
    expected = _pixels(original)
    bits = int(original.BitsStored)
    for target in TARGETS:
        if not can_encode(target):
            continue
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
        response = await client.get(_url(original), headers={"Accept": accept})
        label = f"{stored} -> {target}"
        if not _producible(original, target):
            assert response.status_code == 406, label
            assert response.json()["reason"], label
            continue
        assert response.status_code == 200, (label, response.text[:300])
        parts = parse_multipart(response.content, response.headers["content-type"])
        assert parts[0][0]["content-type"] == f"application/dicom; transfer-syntax={target}", label
        got = dcmread(io.BytesIO(parts[0][1]))
        assert got.file_meta.TransferSyntaxUID == target, label
        lossy = target in LOSSY_SYNTAXES or stored in LOSSY_SYNTAXES
        if lossy and target in LOSSY_SYNTAXES and target != stored:
            assert got.LossyImageCompression == "01", label
        _assert_pixels(got, expected, lossy and target != stored, bits, label)


@pytest.mark.parametrize("stored", STORED_SYNTAXES)
async def test_transfer_syntax_star_is_byte_identical_ps3_18_8_7_3_4(client, stored) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(stored)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    response = await client.get(
        _url(ds),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[1] == b"\0" * 128 + data[128:]
    assert part[0]["content-type"] == f"application/dicom; transfer-syntax={stored}"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (EVRLE, EVRLE),
        (IVRLE, EVRLE),
        (RLE, EVRLE),
        (J2K_LOSSLESS, EVRLE),
        (JPEG_BASELINE, JPEG_BASELINE),
        (J2K, J2K),
    ],
)
async def test_default_syntax_is_explicit_le_unless_lossy_ps3_18_8_7_3_4(
    client, stored, expected
) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(stored)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    response = await client.get(
        _url(ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[0]["content-type"] == f"application/dicom; transfer-syntax={expected}"
    assert dcmread(io.BytesIO(part[1])).file_meta.TransferSyntaxUID == expected


async def test_q_values_pick_the_first_producible_syntax(client) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(EVRLE)  # 16-bit CT: baseline JPEG cannot hold it
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}; q=0.5, '
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0.9'
    )
    response = await client.get(_url(ds), headers={"Accept": accept})
    assert response.status_code == 200
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[0]["content-type"] == f"application/dicom; transfer-syntax={J2K_LOSSLESS}"


@pytest.mark.parametrize(
    "accept",
    [
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
        f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K_RPCL}',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4',
        "image/png",
    ],
)
async def test_unproducible_syntaxes_are_406_with_a_reason(client, accept) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(EVRLE)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    for path in (_url(ds), f"/studies/{ds.StudyInstanceUID}"):
        response = await client.get(path, headers={"Accept": accept})
        assert response.status_code == 406, (accept, path)
        assert response.json()["reason"]


@pytest.mark.parametrize("stored", STORED_SYNTAXES)
async def test_frames_in_every_media_type_ps3_18_8_7_3_5(client, stored) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(stored)
    await _store(client, [data])
    original = dcmread(io.BytesIO(data))
    frames = int(original.get("NumberOfFrames", 1) or 1)
    numbers = [frames, 1] if frames > 1 else [1]
    expected = _pixels(original).reshape(
        frames, *original.pixel_array.shape[-3 + (original.SamplesPerPixel == 1) :]
    )
    bits = int(original.BitsStored)
    url = _url(original) + "/frames/" + ",".join(map(str, numbers))
    for target in TARGETS:
        if target in (IVRLE, DEFLATED) or not can_encode(target):
            continue
        media = MEDIA.get(target, "application/octet-stream")
        accept = f'multipart/related; type="{media}"; transfer-syntax={target}'
        response = await client.get(url, headers={"Accept": accept})
        label = f"{stored} -> {media} {target}"
        if not _producible(original, target):
            assert response.status_code == 406, label
            continue
        assert response.status_code == 200, (label, response.text[:300])
        parts = parse_multipart(response.content, response.headers["content-type"])
        assert [p[0]["content-type"] for p in parts] == [
            f"{media}; transfer-syntax={target}"
        ] * len(numbers), label
        for number, (_, body) in zip(numbers, parts, strict=True):
            got = _decode_frame(body, target, original)
            lossy = (target in LOSSY_SYNTAXES and target != stored) or (
                target == EVRLE and stored in LOSSY_SYNTAXES and False
            )
            _assert_pixels(got, expected[number - 1], lossy, bits, f"{label} frame {number}")


def _decode_frame(body: bytes, syntax: str, like: Dataset) -> Dataset:
    """Wrap one frame in a data set so pydicom decodes it as a viewer would."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = Dataset()
    ds.file_meta = like.file_meta.__class__()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, keyword, getattr(like, keyword))
    photometric = str(like.PhotometricInterpretation)
    if like.SamplesPerPixel == 3:
        photometric = "YBR_FULL" if syntax in (JPEG_BASELINE, JPEG_EXTENDED) else "RGB"
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = body if syntax == EVRLE else encapsulate([body])
    return ds


async def test_frames_default_media_types_and_star(client) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(J2K)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    url = _url(ds) + "/frames/1"
    fragment = next(
        iter(__import__("pydicom").encaps.generate_frames(ds.PixelData, number_of_frames=1))
    )
    # image/jp2 without a syntax: the stored one when it is a jp2 syntax, as stored.
    for accept in (
        'multipart/related; type="image/jp2"',
        'multipart/related; type="image/jp2"; transfer-syntax=*',
        "*/*",
    ):
        response = await client.get(url, headers={"Accept": accept})
        part = parse_multipart(response.content, response.headers["content-type"])[0]
        assert part[0]["content-type"] == f"image/jp2; transfer-syntax={J2K}", accept
        assert part[1] == fragment, accept
    # image/jpeg without a syntax: baseline is the default, extended the next that fits 16 bits? no:
    response = await client.get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert response.status_code == 200
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[0]["content-type"] == f"image/jpeg; transfer-syntax={JPEG_LOSSLESS}"
    # image/jls has no syntax fitting a stored J2K as-is: transcoded to the default, lossless.
    response = await client.get(url, headers={"Accept": 'multipart/related; type="image/jls"'})
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[0]["content-type"] == f"image/jls; transfer-syntax={JLS}"
    response = await client.get(
        url, headers={"Accept": 'multipart/related; type="image/jls"; transfer-syntax=*'}
    )
    assert response.status_code == 406


async def test_transcoded_frames_are_cached_and_run_once(client, app) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(J2K_LOSSLESS)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    url = _url(ds) + "/frames/1"
    accept = {"Accept": f'multipart/related; type="image/jls"; transfer-syntax={JLS}'}
    responses = await asyncio.gather(*(client.get(url, headers=accept) for _ in range(8)))
    bodies = {parse_multipart(r.content, r.headers["content-type"])[0][1] for r in responses}
    assert len(bodies) == 1
    retrieve = app.state.dicomweb.retrieve
    blobs = app.state.backends.blobs
    key = InstanceKey(DEFAULT_SITE, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = await retrieve.get_instance(key)
    cache_key = frame_cache_key(stored.key, stored.digest, 1, JLS)
    assert cache_key.startswith(f"default/cache/{ds.StudyInstanceUID}/")
    await retrieve.frame_cache.wait_for_writes()  # written after the responses, off their path
    assert b"".join([c async for c in blobs.iter_get(cache_key)]) in bodies

    async def replaced():  # type: ignore[no-untyped-def]
        yield b"from the cache"

    await blobs.put(cache_key, replaced())  # a second request must not transcode again
    warm = await client.get(url, headers=accept)  # ...and a warm one is served from memory
    assert parse_multipart(warm.content, warm.headers["content-type"])[0][1] in bodies
    retrieve.frame_cache.forget_in_memory()
    response = await client.get(url, headers=accept)
    assert (
        parse_multipart(response.content, response.headers["content-type"])[0][1]
        == b"from the cache"
    )


async def test_compressed_frame_is_read_by_range_not_whole_object(client, settings) -> None:  # type: ignore[no-untyped-def]
    study, series = uid(), uid()
    ds = ct_dataset(study, series, frames=40, rows=64, columns=64)
    out = io.BytesIO()
    transcode_instance(io.BytesIO(to_part10(ds)), J2K_LOSSLESS, out)
    await _store(client, [out.getvalue()])
    url = _url(ds) + "/frames/17"
    response = await client.get(
        url, headers={"Accept": "multipart/related; type=application/octet-stream"}
    )
    frame = parse_multipart(response.content, response.headers["content-type"])[0][1]
    assert frame == ds.PixelData[16 * 64 * 64 * 2 : 17 * 64 * 64 * 2]


async def test_large_multiframe_study_streams_and_transcodes(client) -> None:  # type: ignore[no-untyped-def]
    study, series = uid(), uid()
    datasets = [
        ct_dataset(study, series, frames=200, rows=64, columns=64, seed=n, instance_number=n)
        for n in (1, 2)
    ]
    await _store(client, [to_part10(ds) for ds in datasets])
    started = time.perf_counter()
    response = await client.get(
        f"/studies/{study}",
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={RLE}'},
    )
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 2
    for (headers, body), ds in zip(parts, datasets, strict=True):
        got = dcmread(io.BytesIO(body))
        assert headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    assert time.perf_counter() - started < 60


async def test_bulkdata_range_requests_rfc_9110(client) -> None:  # type: ignore[no-untyped-def]
    ds = ct_dataset(frames=2)
    await _store(client, [to_part10(ds)])
    uri = _url(ds) + "/bulkdata/7FE00010"
    response = await client.get(uri, headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    part = parse_multipart(response.content, response.headers["content-type"])[0]
    assert part[1] == ds.PixelData[10:20]
    assert part[0]["content-range"] == f"bytes 10-19/{len(ds.PixelData)}"
    response = await client.get(uri, headers={"Range": "bytes=-4"})
    assert (
        parse_multipart(response.content, response.headers["content-type"])[0][1]
        == ds.PixelData[-4:]
    )
    response = await client.get(uri, headers={"Range": "bytes=100-"})
    assert (
        parse_multipart(response.content, response.headers["content-type"])[0][1]
        == ds.PixelData[100:]
    )
    response = await client.get(uri, headers={"Range": f"bytes={len(ds.PixelData)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(ds.PixelData)}"


async def test_bulkdata_of_encapsulated_pixels_names_its_media_type(client) -> None:  # type: ignore[no-untyped-def]
    data = _stored_file(RLE)
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    response = await client.get(_url(ds) + "/bulkdata/7FE00010")
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [p[0]["content-type"] for p in parts] == [f"image/dicom-rle; transfer-syntax={RLE}"] * 2


def test_dicomweb_client_frames_bulkdata_and_retrieve(live_server: str) -> None:
    client = DICOMwebClient(live_server)
    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    client.store_instances([ds])
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    jls = client.retrieve_instance_frames(*uids, [1], media_types=(("image/jls", JLS),))
    assert _pixels(_decode_frame(jls[0], JLS, ds)).tolist() == _pixels(ds).tolist()
    native = client.retrieve_instance_frames(*uids, [1], media_types=("application/octet-stream",))
    assert np.array_equal(
        np.frombuffer(native[0], dtype="<i2").reshape(ds.Rows, ds.Columns), ds.pixel_array
    )
    rle = client.retrieve_instance(*uids, media_types=(("application/dicom", RLE),))
    assert rle.file_meta.TransferSyntaxUID == RLE
    assert np.array_equal(rle.pixel_array, ds.pixel_array)
    metadata = client.retrieve_instance_metadata(*uids)
    value = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert value[0] == next(
        iter(__import__("pydicom").encaps.generate_frames(ds.PixelData, number_of_frames=1))
    )
    native_ct = dcmread(get_testdata_file("CT_small.dcm"))
    client.store_instances([native_ct])
    ct_meta = client.retrieve_instance_metadata(
        native_ct.StudyInstanceUID, native_ct.SeriesInstanceUID, native_ct.SOPInstanceUID
    )
    ranged = client.retrieve_bulkdata(ct_meta["7FE00010"]["BulkDataURI"], byte_range=(2, 9))
    assert ranged == [native_ct.PixelData[2:10]]


async def test_big_endian_frames_are_decoded_to_native(client) -> None:  # type: ignore[no-untyped-def]
    with open(get_testdata_file("MR_small_bigendian.dcm"), "rb") as handle:
        data = handle.read()
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    response = await client.get(
        _url(ds) + "/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert response.status_code == 200, response.text
    frame = parse_multipart(response.content, response.headers["content-type"])[0][1]
    assert frame == ds.pixel_array.astype("<i2").tobytes()


@pytest.mark.parametrize(
    "accept",
    [
        None,
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5',
    ],
)
@pytest.mark.parametrize(
    "name", ["MR_small_bigendian.dcm", "rtdose_expb_1frame.dcm", "rtdose_expb.dcm"]
)
async def test_big_endian_instance_is_served_little_endian(client, accept, name) -> None:  # type: ignore[no-untyped-def]
    """PS3.18 8.7.3.5.2: an instance stored in explicit VR big endian (retired, but still
    sent) is served in a little endian syntax with the same pixel values, never a 500; 16-bit
    pixels and 32-bit ones (a dose grid, swapped by the pixel, not by the OW word)."""
    with open(get_testdata_file(name), "rb") as handle:
        data = handle.read()
    await _store(client, [data])
    ds = dcmread(io.BytesIO(data))
    headers = {"Accept": accept} if accept else {}
    response = await client.get(_url(ds), headers=headers)
    if ds.BitsAllocated == 32 and accept and accept.endswith("1.2.840.10008.1.2.5"):
        assert response.status_code == 406  # no RLE encoder here takes 32-bit pixels
        assert "cannot encode" in response.json()["reason"]
        return
    assert response.status_code == 200, response.text
    parts = parse_multipart(response.content, response.headers["content-type"])
    served = dcmread(io.BytesIO(parts[0][1]))
    wanted = accept.rsplit("transfer-syntax=", 1)[1] if accept and "syntax=" in accept else None
    assert served.file_meta.TransferSyntaxUID == (wanted or "1.2.840.10008.1.2.1")
    assert served.SOPInstanceUID == ds.SOPInstanceUID
    assert (served.pixel_array == ds.pixel_array).all()
