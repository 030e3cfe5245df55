"""Two small synthetic studies for the Orthanc interop test, as Part 10 files (no server imports).

Varied where interop breaks: explicit and implicit VR, a multi-frame image, an encapsulated
(RLE Lossless) RGB image, a sequence, a private block, UTF-8 person names.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["Instance", "Study", "build_studies"]

PREFIX = "1.2.826.0.1.3680043.10.1234.15."  # test-only UID root


@dataclass(frozen=True)
class Instance:
    """One Part 10 file and the identifiers it carries."""

    study: str
    series: str
    sop: str
    modality: str
    transfer_syntax: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Study:
    """A study's identifiers and its instances, in storage order."""

    uid: str
    patient_id: str
    patient_name: str
    instances: tuple[Instance, ...]

    @property
    def series(self) -> dict[str, list[Instance]]:
        """Series UID → its instances."""
        result: dict[str, list[Instance]] = {}
        for instance in self.instances:
            result.setdefault(instance.series, []).append(instance)
        return result


def _dataset(
    study: str, series: str, sop_class: str, modality: str, number: int, patient: tuple[str, str]
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix=PREFIX)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = patient
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240115", "101500", "15"
    ds.AccessionNumber, ds.StudyDescription = f"ACC-{patient[0]}", "Interop with Orthanc"
    ds.ReferringPhysicianName = "Référent^Médecin"
    ds.Modality, ds.InstanceNumber = modality, number
    ds.SeriesNumber = {"CT": 1, "MR": 2, "OT": 3}[modality]
    ds.SeriesDescription = f"{modality} series"
    return ds


def _monochrome(ds: Dataset, frames: int, size: int, seed: int) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (frames, size, size), dtype=np.uint16).tobytes()


def _with_sequence_and_private_block(ds: Dataset) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CTCHEST", "L", "CT thorax"
    ds.ProcedureCodeSequence = [code]
    block = ds.private_block(0x0011, "INTEROP TEST", create=True)
    block.add_new(0x01, "LO", "private value")
    block.add_new(0x02, "OB", bytes(range(256)) * 8)  # over 1 KiB: a BulkDataURI in metadata


def _part10(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _instance(ds: Dataset, transfer_syntax: str) -> Instance:
    return Instance(
        study=ds.StudyInstanceUID,
        series=ds.SeriesInstanceUID,
        sop=ds.SOPInstanceUID,
        modality=ds.Modality,
        transfer_syntax=transfer_syntax,
        data=_part10(ds, transfer_syntax),
    )


def _study_a(prefix: str) -> Study:
    """Explicit VR: three CT slices (one with a sequence and a private block), a multi-frame MR."""
    patient = (f"{prefix}-A", "Interop^Alpha")
    study = generate_uid(prefix=PREFIX)
    ct, mr = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    instances = []
    for number in (1, 2, 3):
        ds = _dataset(study, ct, CTImageStorage, "CT", number, patient)
        _monochrome(ds, frames=1, size=64, seed=number)
        if number == 1:
            _with_sequence_and_private_block(ds)
        instances.append(_instance(ds, ExplicitVRLittleEndian))
    ds = _dataset(study, mr, MRImageStorage, "MR", 1, patient)
    _monochrome(ds, frames=4, size=32, seed=10)
    instances.append(_instance(ds, ExplicitVRLittleEndian))
    return Study(study, patient[0], patient[1], tuple(instances))


def _study_b(prefix: str) -> Study:
    """Two implicit VR CT slices and a two-frame RGB secondary capture in RLE Lossless."""
    patient = (f"{prefix}-B", "Interop^Bêta")
    study = generate_uid(prefix=PREFIX)
    ct, sc = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    instances = []
    for number in (1, 2):
        ds = _dataset(study, ct, CTImageStorage, "CT", number, patient)
        _monochrome(ds, frames=1, size=48, seed=20 + number)
        instances.append(_instance(ds, ImplicitVRLittleEndian))
    ds = _dataset(study, sc, SecondaryCaptureImageStorage, "OT", 1, patient)
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = 24, 40, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    y, x = np.mgrid[0:24, 0:40]
    frame = np.stack([x * 6, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.stack([frame, 255 - frame]).tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    instances.append(_instance(ds, RLELossless))
    return Study(study, patient[0], patient[1], tuple(instances))


def build_studies(prefix: str = "INTEROP") -> list[Study]:
    """The two studies, with fresh UIDs, for patients `{prefix}-A` and `{prefix}-B`."""
    return [_study_a(prefix), _study_b(prefix)]
