"""Small synthetic DICOM instances for tests: names say syntax, bits and frames."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

PREFIX = "1.2.826.0.1.3680043.10.1234."  # test-only UID root


def uid() -> str:
    """A fresh test UID."""
    return generate_uid(prefix=PREFIX)


def ct_dataset(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    *,
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    study_date: str = "20240115",
    modality: str = "CT",
    instance_number: int = 1,
    accession_number: str = "ACC-1",
    seed: int = 0,
) -> Dataset:
    """A 16-bit monochrome CT-like image with deterministic pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = series or uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession_number
    ds.StudyID = "1"
    ds.StudyDescription = "Chest"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Axial"
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(frames, rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def to_part10(ds: Dataset, *, implicit: bool = False) -> bytes:
    """Serialise as a Part 10 file (preamble, DICM, file meta)."""
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def multipart_body(parts: Iterable[bytes | tuple[dict[str, str], bytes]]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for part in parts:
        headers, data = (
            ({"Content-Type": "application/dicom"}, part) if isinstance(part, bytes) else part
        )
        out.write(f"--{boundary}\r\n".encode())
        for name, value in headers.items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart response into (headers, body) pairs (tests only; in memory)."""
    boundary = next(
        p.split("=", 1)[1].strip('"')
        for p in content_type.split(";")
        if p.strip().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    pieces = body.split(b"\r\n" + delimiter)
    first = pieces[0]
    assert first.startswith(delimiter)
    pieces[0] = first[len(delimiter) :]
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break
        head, _, data = piece.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                name, _, value = line.partition(b":")
                headers[name.decode().strip().lower()] = value.decode().strip()
        parts.append((headers, data))
    return parts
