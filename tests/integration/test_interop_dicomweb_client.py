"""Interop with the real dicomweb-client package over TCP, on pydicom's bundled files."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file

# CT, MR, implicit VR, multi-frame RLE, JPEG 2000, JPEG baseline, multi-frame native dose.
FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "SC_rgb_rle_2frame.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "rtdose.dcm",
]


@pytest.fixture
def stored(live_server: str):  # type: ignore[no-untyped-def]
    client = DICOMwebClient(live_server)
    datasets = [dcmread(get_testdata_file(name)) for name in FILES]
    # MR_small and MR_small_implicit share UIDs: the second, different object must be refused.
    result = client.store_instances(datasets[:2])
    assert len(result.ReferencedSOPSequence) == 2
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances([datasets[2]])
    assert refused.value.response.status_code == 409
    rest = datasets[3:]
    client.store_instances(rest)
    return client, [datasets[0], datasets[1], *rest]


def test_search_finds_every_stored_instance(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    found = {row["00080018"]["Value"][0] for row in client.search_for_instances()}
    assert found == {ds.SOPInstanceUID for ds in datasets}
    studies = client.search_for_studies(search_filters={"PatientID": datasets[0].PatientID})
    assert datasets[0].StudyInstanceUID in {row["0020000D"]["Value"][0] for row in studies}


def test_retrieve_instance_is_byte_identical_after_the_preamble(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    for ds in datasets:
        got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert np.array_equal(got.pixel_array, ds.pixel_array), ds.SOPInstanceUID


def test_retrieve_study_and_series(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    ds = datasets[0]
    assert [i.SOPInstanceUID for i in client.retrieve_study(ds.StudyInstanceUID)] == [
        ds.SOPInstanceUID
    ]
    series = client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(series) == 1


def test_metadata_matches_the_data_set(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    for ds in datasets:
        metadata = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        item = next(m for m in metadata if m["00080018"]["Value"][0] == ds.SOPInstanceUID)
        assert item["00100020"]["Value"][0] == ds.PatientID
        assert "BulkDataURI" in item["7FE00010"]


def test_native_frames_match_pixels(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    for ds in datasets:
        frames_total = int(getattr(ds, "NumberOfFrames", 1) or 1)
        numbers = list(range(1, frames_total + 1))
        frames = client.retrieve_instance_frames(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            numbers,
            media_types=("application/octet-stream",),
        )
        pixels = (
            ds.pixel_array.reshape(frames_total, -1)
            if frames_total > 1
            else ds.pixel_array.reshape(1, -1)
        )
        for got, expected in zip(frames, pixels, strict=True):
            array = np.frombuffer(got, dtype=ds.pixel_array.dtype.newbyteorder("<"))
            if (
                ds.file_meta.TransferSyntaxUID.is_compressed
                and "JPEG" in ds.file_meta.TransferSyntaxUID.name
            ):
                # lossy baseline JPEG: decoders may differ in rounding
                assert np.abs(array.astype(int) - expected.astype(int)).max() <= 2
            else:
                assert np.array_equal(array, expected), ds.SOPInstanceUID


def test_bulkdata_by_uri(stored) -> None:  # type: ignore[no-untyped-def]
    client, datasets = stored
    ds = datasets[0]
    metadata = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    value = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert value[0] == ds.PixelData
