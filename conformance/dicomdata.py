"""Synthetic instances and multipart helpers for the conformance suite (no server imports)."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PREFIX = "1.2.826.0.1.3680043.10.1234.9."  # test-only UID root
DICOM_JSON = "application/dicom+json"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def uid() -> str:
    return generate_uid(prefix=PREFIX)


def ct(
    study: str,
    series: str,
    *,
    number: int = 1,
    frames: int = 1,
    patient_id: str = "CONF-1",
    patient_name: str = "Conformance^Test",
    study_date: str = "20240115",
    modality: str = "CT",
) -> Dataset:
    """An 8×8, 16-bit CT-like instance with deterministic pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = study_date, "101500", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "CONF-ACC", "Ref^Doc"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = np.random.default_rng(number).integers(0, 4096, (frames, 8, 8), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body (RFC 2387) and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{part_type}"; boundary={boundary}'


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """A multipart response as (lower-cased headers, payload) pairs."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    assert boundary, f"no boundary in {content_type!r}"
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


def store(http: httpx.Client, datasets: list[Dataset], path: str = "studies") -> httpx.Response:
    body, content_type = multipart([part10(ds) for ds in datasets])
    return http.post(
        path, content=body, headers={"Content-Type": content_type, "Accept": DICOM_JSON}
    )


@dataclass(frozen=True)
class StoredStudy:
    """What `store_study` stored, for the retrieve and search tests."""

    study: str
    series: tuple[str, str]
    datasets: tuple[Dataset, ...]

    def instance_path(self, index: int) -> str:
        ds = self.datasets[index]
        return f"studies/{self.study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def store_study(http: httpx.Client) -> StoredStudy:
    study, first, second = uid(), uid(), uid()
    patient = f"CONF-{uuid.uuid4().hex[:8]}"
    datasets = (
        ct(study, first, number=1, patient_id=patient),
        ct(study, first, number=2, patient_id=patient, frames=3),
        ct(study, second, number=1, patient_id=patient, modality="MR"),
    )
    response = store(http, list(datasets))
    assert response.status_code == 200, response.text
    return StoredStudy(study, (first, second), datasets)
