"""PS3.18 10.4 Retrieve Transaction (WADO-RS)."""

from __future__ import annotations

import io

import httpx
import pydicom
from dicomdata import DICOM_ANY, DICOM_JSON, OCTETS, StoredStudy, split_multipart, uid


def _dataset(payload: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(payload))


def test_10_4_retrieve_instance_as_stored(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.1 and 8.7.3.5.2: transfer-syntax=* returns the instance as stored."""
    response = http.get(study.instance_path(0), headers={"Accept": DICOM_ANY})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    ((headers, payload),) = split_multipart(response.content, response.headers["content-type"])
    assert headers["content-type"].startswith("application/dicom")
    ds = _dataset(payload)
    assert ds.SOPInstanceUID == study.datasets[0].SOPInstanceUID
    assert ds.PixelData == study.datasets[0].PixelData


def test_10_4_retrieve_series_returns_each_instance(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.1: a series retrieves as one part per instance."""
    response = http.get(
        f"studies/{study.study}/series/{study.series[0]}", headers={"Accept": DICOM_ANY}
    )
    assert response.status_code == 200
    parts = split_multipart(response.content, response.headers["content-type"])
    uids = {_dataset(payload).SOPInstanceUID for _, payload in parts}
    assert uids == {ds.SOPInstanceUID for ds in study.datasets[:2]}


def test_10_4_retrieve_study_returns_each_instance(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.1: a study retrieves as one part per instance."""
    response = http.get(f"studies/{study.study}", headers={"Accept": DICOM_ANY})
    assert response.status_code == 200
    assert len(split_multipart(response.content, response.headers["content-type"])) == 3


def test_10_4_retrieve_instance_metadata(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.2 and F.2: metadata is DICOM JSON, one object per instance, no Pixel Data."""
    response = http.get(study.instance_path(0) + "/metadata", headers={"Accept": DICOM_JSON})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_JSON)
    (model,) = response.json()
    assert model["00080018"]["Value"] == [study.datasets[0].SOPInstanceUID]
    pixel = model.get("7FE00010", {})
    assert "InlineBinary" not in pixel or "BulkDataURI" in pixel


def test_10_4_retrieve_study_metadata(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.2: study metadata holds every instance of the study."""
    response = http.get(f"studies/{study.study}/metadata", headers={"Accept": DICOM_JSON})
    assert response.status_code == 200
    assert len(response.json()) == 3


def test_10_4_retrieve_frames(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.4 and 8.7.3.5.2: frames of native data, in the order asked."""
    ds = study.datasets[1]
    frame_bytes = len(ds.PixelData) // 3
    response = http.get(study.instance_path(1) + "/frames/3,1", headers={"Accept": OCTETS})
    assert response.status_code == 200
    parts = split_multipart(response.content, response.headers["content-type"])
    assert [payload for _, payload in parts] == [
        ds.PixelData[2 * frame_bytes :],
        ds.PixelData[:frame_bytes],
    ]


def test_10_4_bulkdata_uri_of_metadata_resolves(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.3 and F.2.6: a BulkDataURI in metadata can be retrieved."""
    (model,) = http.get(study.instance_path(0) + "/metadata", headers={"Accept": DICOM_JSON}).json()
    uri = model.get("7FE00010", {}).get("BulkDataURI")
    assert uri, "Pixel Data should be a BulkDataURI"
    response = http.get(uri, headers={"Accept": OCTETS})
    assert response.status_code == 200
    parts = split_multipart(response.content, response.headers["content-type"])
    assert parts and parts[0][1].startswith(study.datasets[0].PixelData[:32])


def test_10_4_unknown_study_is_404(http: httpx.Client) -> None:
    """8.5 / 10.4.3: a target resource that does not exist is a 404."""
    response = http.get(f"studies/{uid()}", headers={"Accept": DICOM_ANY})
    assert response.status_code == 404


def test_8_7_unacceptable_media_type_is_406(http: httpx.Client, study: StoredStudy) -> None:
    """8.7.4 / 8.5: no acceptable media type can be produced → 406."""
    response = http.get(
        study.instance_path(0) + "/metadata", headers={"Accept": "application/x-unknown"}
    )
    assert response.status_code == 406
