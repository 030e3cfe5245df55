"""Store the end-to-end test studies through STOW-RS and print what was stored as JSON.

Usage: python e2e/seed.py http://127.0.0.1:PORT/dicomweb

One study, four series. The CT series has three 256×256 slices whose pixels, through their
own window (center 1000, width 2000, rescale intercept -1024), show four quadrants at
display levels 32, 96, 160 and 224 with a bright 40-pixel square in the middle, so a
viewer's canvas can be checked against known values. The MR series is one 128×128
diagonal ramp. The video series is one Video Photographic Image instance: 2 s of H.264
(320×240, 25 Hz, an elementary stream made by tests/video_samples.py) that the server
remuxes into MP4. The document series is one Encapsulated PDF report: a one-page PDF
written here by hand.
"""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from video_samples import H264, encode, video_instance

PREFIX = "1.2.826.0.1.3680043.10.1234.77."  # test-only UID root
# Display level → stored value: level/255 = (x - (c - 0.5)) / (w - 1) + 0.5 with x = v - 1024
QUADRANT_LEVELS = (32, 96, 160, 224)
CENTER, WIDTH, INTERCEPT = 1000.0, 2000.0, -1024.0
FRAME_OF_REFERENCE = generate_uid(prefix=PREFIX)
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
VIDEO_FRAMES, VIDEO_RATE = 50, Fraction(25)  # 2 seconds
REPORT_TEXT = "E2E report: dicomweb_server serves this PDF"


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


def minimal_pdf(title: str, lines: list[str]) -> bytes:
    """A valid one-page PDF 1.4 showing `title` and `lines` in Helvetica (cross-reference
    table and all)."""
    text = f"BT /F1 24 Tf 72 720 Td ({title}) Tj /F1 12 Tf"
    text += "".join(f" 0 -22 Td ({line}) Tj" for line in lines) + " ET"
    content = text.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def _identify(ds: Dataset, study: str, series: str, patient_id: str, number: int) -> None:
    """Put a generated instance into the study: patient, study and series attributes."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid(prefix=PREFIX)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "E2E^Viewer", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240115", "101500", "1"
    ds.AccessionNumber, ds.StudyDescription = "E2E-1", "End to end"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.SeriesNumber, ds.InstanceNumber = number, 1


def video(study: str, series: str, patient_id: str) -> Dataset:
    stream = encode(
        "h264", "es", frames=VIDEO_FRAMES, width=320, height=240, rate=VIDEO_RATE, moving_bar=True
    )
    ds = video_instance(stream, H264, frames=VIDEO_FRAMES, width=320, height=240)
    _identify(ds, study, series, patient_id, 3)
    ds.SeriesDescription = "Video series"
    return ds


def report(study: str, series: str, patient_id: str) -> tuple[Dataset, bytes]:
    # Past bulk_data_threshold (1 KiB), so the metadata has a BulkDataURI and OHIF asks us
    # for the document rather than reading it inline.
    lines = [
        f"Finding {n}: nothing remarkable on series {n} of this synthetic study."
        for n in range(1, 16)
    ]
    document = minimal_pdf(REPORT_TEXT, lines)
    assert len(document) > 1024
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENCAPSULATED_PDF
    _identify(ds, study, series, patient_id, 4)
    ds.Modality, ds.SeriesDescription = "DOC", "PDF report"
    ds.ConversionType, ds.BurnedInAnnotation = "WSD", "YES"
    ds.DocumentTitle = "E2E report"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document
    ds.EncapsulatedDocumentLength = len(document)
    return ds, document


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
    video_series, pdf_series = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    clip = video(study, video_series, patient_id)
    document, pdf = report(study, pdf_series, patient_id)
    datasets += [clip, document]
    summary = {
        "study": study,
        "patientId": datasets[0].PatientID,
        "patientName": "E2E^Viewer",
        "ctSeries": ct_series,
        "mrSeries": mr_series,
        "ctInstances": [ds.SOPInstanceUID for ds in datasets[:3]],
        "quadrantLevels": list(QUADRANT_LEVELS),
        "videoSeries": video_series,
        "videoInstance": clip.SOPInstanceUID,
        "videoDuration": float(VIDEO_FRAMES / VIDEO_RATE),
        "pdfSeries": pdf_series,
        "pdfInstance": document.SOPInstanceUID,
        "pdfLength": len(pdf),
        "reportText": REPORT_TEXT,
    }
    return datasets, summary


def _authorization() -> dict[str, str]:
    """The test's API key as a bearer token, when access control is on (E2E_TOKEN)."""
    token = os.environ.get("E2E_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


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
            # With access control on, the seed sends the test's API key.
            **_authorization(),
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
