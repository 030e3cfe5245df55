from __future__ import annotations

import base64
import io
from fractions import Fraction
from typing import Any

import orjson
import pytest
from dicomfiles import to_part10, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb_server.domain.documents import (
    ENCAPSULATED_DOCUMENT,
    EncapsulatedDocument,
    VideoTiming,
    document_media_types,
    encapsulated_document,
    video_timing,
)
from dicomweb_server.domain.part10 import ParseLimits, parse_part10

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _pdf_instance(document: bytes, mime_type: str = "application/pdf", **extra: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid()
    ds.SeriesInstanceUID = uid()
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = mime_type
    ds.EncapsulatedDocument = document
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _stored_metadata(ds: Dataset) -> tuple[dict[str, Any], bytes, dict[str, tuple[int, int]]]:
    """(metadata as stored, the Part 10 bytes, bulk spans by path), as ingest records them."""
    data = to_part10(ds)
    record = parse_part10(io.BytesIO(data), len(data), ParseLimits())
    spans = {span.path: (span.offset, span.length) for span in record.bulk}
    return orjson.loads(record.metadata), data, spans


def test_a_large_pdf_is_bulk_data_at_the_path_the_bulkdata_resource_serves() -> None:
    pdf = b"%PDF-1.4\n" + b"x" * 5000 + b"\n%%EOF"  # odd length: stored with one pad byte
    metadata, data, spans = _stored_metadata(
        _pdf_instance(pdf, EncapsulatedDocumentLength=len(pdf))
    )
    document = encapsulated_document(metadata)
    assert document is not None
    assert (document.mime_type, document.bulk_path, document.inline) == (
        "application/pdf",
        ENCAPSULATED_DOCUMENT,
        None,
    )
    offset, length = spans[document.bulk_path]
    assert length == len(pdf) + 1
    assert document.content_length(length) == len(pdf)
    assert data[offset : offset + document.content_length(length)] == pdf
    assert document.content() is None


def test_a_small_document_is_inline_and_its_pad_byte_is_dropped() -> None:
    cda = b"<ClinicalDocument/>"  # 19 bytes
    ds = _pdf_instance(cda, "text/xml ", EncapsulatedDocumentLength=len(cda))
    document = encapsulated_document(_stored_metadata(ds)[0])
    assert document is not None
    assert document.mime_type == "text/xml" and document.bulk_path is None
    assert document.inline == cda + b"\x00"
    assert document.content() == cda


def test_without_a_declared_length_the_whole_value_is_the_document() -> None:
    document = encapsulated_document(_stored_metadata(_pdf_instance(b"%PDF"))[0])
    assert document is not None and document.declared_length is None
    assert document.content() == b"%PDF"
    assert document.content_length(100) == 100


@pytest.mark.parametrize(("declared", "served"), [(99, 99), (100, 100), (98, 100), (101, 100)])
def test_a_declared_length_is_trusted_only_within_one_pad_byte(declared: int, served: int) -> None:
    document = EncapsulatedDocument("application/pdf", ENCAPSULATED_DOCUMENT, None, declared)
    assert document.content_length(100) == served


@pytest.mark.parametrize(
    "model",
    [
        {},
        {ENCAPSULATED_DOCUMENT: "not an element"},
        {ENCAPSULATED_DOCUMENT: {"vr": "OB"}},  # empty value
        {ENCAPSULATED_DOCUMENT: {"vr": "OB", "BulkDataURI": "http://elsewhere/value"}},
        {ENCAPSULATED_DOCUMENT: {"vr": "OB", "InlineBinary": "not base64!"}},
    ],
)
def test_no_document_where_there_is_no_usable_value(model: dict[str, Any]) -> None:
    assert encapsulated_document(model) is None


def test_odd_metadata_values_are_ignored_not_trusted() -> None:
    model = {
        ENCAPSULATED_DOCUMENT: {"vr": "OB", "InlineBinary": base64.b64encode(b"ab").decode()},
        "00420012": {"vr": "LO", "Value": [7]},
        "00420015": {"vr": "UL", "Value": [-1]},
    }
    assert encapsulated_document(model) == EncapsulatedDocument("", None, b"ab", None)


def test_document_media_types_name_aliases_after_the_stored_type() -> None:
    assert document_media_types("application/pdf") == ("application/pdf",)
    assert document_media_types("model/stl") == ("model/stl", "application/sla")
    assert document_media_types("application/sla") == ("application/sla", "model/stl")
    assert document_media_types("model/obj") == ("model/obj",)
    assert document_media_types("") == ()


# -- video timing --------------------------------------------------------------------------


def _timing(**attributes: Any) -> VideoTiming:
    tags = {"frame_time": "00181063", "cine_rate": "00180040", "frames": "00280008"}
    vrs = {"frame_time": "DS", "cine_rate": "IS", "frames": "IS"}
    return video_timing(
        {tags[k]: {"vr": vrs[k], "Value": [v]} for k, v in attributes.items() if v is not None}
    )


@pytest.mark.parametrize(
    ("frame_time", "cine_rate", "rate"),
    [
        (40.0, None, Fraction(25)),
        (33.33, 30, Fraction(30)),  # PS3.5 Table 8-4's rounded 30 Hz
        (33.3667, 30, Fraction(30000, 1001)),  # NTSC, which Cine Rate cannot say
        (100.0, 25, Fraction(10)),  # Frame Time wins
        (None, 25, Fraction(25)),
        (0, 24, Fraction(24)),
        (7.0, None, Fraction(1000, 7)),
        (None, None, None),
        (-5.0, 0, None),
    ],
)
def test_frame_rate_from_frame_time_else_cine_rate(
    frame_time: float | None, cine_rate: int | None, rate: Fraction | None
) -> None:
    assert _timing(frame_time=frame_time, cine_rate=cine_rate).frame_rate == rate


def test_duration_is_frames_over_rate() -> None:
    assert _timing(frame_time=40.0, frames=250).duration == 10.0
    assert _timing(frames=250).duration is None
    assert _timing(cine_rate=25).number_of_frames == 1  # a single-frame instance
    assert _timing(cine_rate=25, frames=0).number_of_frames == 1


def test_timing_read_from_stored_metadata() -> None:
    ds = _pdf_instance(b"%PDF", NumberOfFrames=300, FrameTime=33.3667, CineRate=30)
    timing = video_timing(_stored_metadata(ds)[0])
    assert timing == VideoTiming(Fraction(30000, 1001), 300)
    assert timing.duration == pytest.approx(10.01)
