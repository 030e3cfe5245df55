"""Store the end-to-end test studies through STOW-RS and print what was stored as JSON.

Usage: python e2e/seed.py http://127.0.0.1:PORT/dicomweb

One study, two series. The CT series has three 256×256 slices whose pixels, through their
own window (center 1000, width 2000, rescale intercept -1024), show four quadrants at
display levels 32, 96, 160 and 224 with a bright 40-pixel square in the middle, so a
viewer's canvas can be checked against known values. The MR series is one 128×128
diagonal ramp.
"""

from __future__ import annotations

import io
import json
import sys
import uuid

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PREFIX = "1.2.826.0.1.3680043.10.1234.77."  # test-only UID root
# Display level → stored value: level/255 = (x - (c - 0.5)) / (w - 1) + 0.5 with x = v - 1024
QUADRANT_LEVELS = (32, 96, 160, 224)
CENTER, WIDTH, INTERCEPT = 1000.0, 2000.0, -1024.0
FRAME_OF_REFERENCE = generate_uid(prefix=PREFIX)


def _stored(level: float) -> int:
    x = (level / 255.0 - 0.5) * (WIDTH - 1) + (CENTER - 0.5)
    return round(x - INTERCEPT)


def ct_pixels(slice_index: int) -> np.ndarray:
    size, half = 256, 128
    image = np.empty((size, size), dtype=np.uint16)
    top_left, top_right, bottom_left, bottom_right = (_stored(v) for v in QUADRANT_LEVELS)
    image[:half, :half] = top_left
    image[:half, half:] = top_right
    image[half:, :half] = bottom_left
    image[half:, half:] = bottom_right
    offset = 20 * slice_index  # the square moves from slice to slice
    image[108 + offset - 20 : 148 + offset - 20, 108:148] = _stored(255)
    return image


def _dataset(
    study: str, series: str, sop_class: str, modality: str, number: int, patient_id: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix=PREFIX)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "E2E^Viewer", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240115", "101500", "1"
    ds.AccessionNumber, ds.StudyDescription = "E2E-1", "End to end"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.Modality = modality
    ds.SeriesNumber = 1 if modality == "CT" else 2
    ds.SeriesDescription = f"{modality} series"
    ds.InstanceNumber = number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 2
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 2 * number]
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    return ds


def build() -> tuple[list[Dataset], dict[str, object]]:
    study = generate_uid(prefix=PREFIX)
    ct_series, mr_series = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    patient_id = "E2E-" + uuid.uuid4().hex[:6]
    datasets = []
    for number in (1, 2, 3):
        ds = _dataset(study, ct_series, CTImageStorage, "CT", number, patient_id)
        ds.RescaleSlope, ds.RescaleIntercept = 1, INTERCEPT
        ds.WindowCenter, ds.WindowWidth = CENTER, WIDTH
        pixels = ct_pixels(number - 1)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    mr = _dataset(study, mr_series, MRImageStorage, "MR", 1, patient_id)
    y, x = np.mgrid[0:128, 0:128]
    mr.Rows, mr.Columns = 128, 128
    mr.PixelData = ((x + y) * 16).astype(np.uint16).tobytes()
    datasets.append(mr)
    summary = {
        "study": study,
        "patientId": datasets[0].PatientID,
        "patientName": "E2E^Viewer",
        "ctSeries": ct_series,
        "mrSeries": mr_series,
        "ctInstances": [ds.SOPInstanceUID for ds in datasets[:3]],
        "quadrantLevels": list(QUADRANT_LEVELS),
    }
    return datasets, summary


def store(root: str, datasets: list[Dataset]) -> None:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for ds in datasets:
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part.getvalue() + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    response = httpx.post(
        f"{root}/studies",
        content=body.getvalue(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    response.raise_for_status()


def main() -> None:
    root = sys.argv[1].rstrip("/")
    datasets, summary = build()
    store(root, datasets)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
