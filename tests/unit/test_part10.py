from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest
from dicomfiles import ct_dataset, to_part10
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomweb_server.domain.part10 import (
    InvalidInstanceError,
    ParseLimits,
    _parse_with_pydicom,
    parse_part10,
)

LIMITS = ParseLimits()


def parse(data: bytes, limits: ParseLimits = LIMITS):  # type: ignore[no-untyped-def]
    return parse_part10(io.BytesIO(data), len(data), limits)


def read(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def test_native_multiframe_offsets_point_at_each_frame() -> None:
    ds = ct_dataset(rows=8, columns=4, frames=3)
    data = to_part10(ds)
    record = parse(data)
    assert record.number_of_frames == 3
    assert record.pixel is not None and not record.pixel.encapsulated
    frame_size = 8 * 4 * 2
    for index, frame in enumerate(record.pixel.frames):
        ((offset, length),) = frame.fragments
        assert length == frame_size
        assert (
            data[offset : offset + length]
            == ds.PixelData[index * frame_size : (index + 1) * frame_size]
        )


def test_identity_columns_and_level_attributes() -> None:
    ds = ct_dataset(patient_name="Doe^Jane", instance_number=7)
    record = parse(to_part10(ds))
    assert (record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert record.study_columns["patient_name"] == "Doe^Jane"
    assert record.instance_columns["instance_number"] == 7
    assert record.series_columns["modality"] == "CT"
    assert "00100010" in record.study_attributes and "00080060" in record.series_attributes
    metadata = orjson.loads(record.metadata)
    assert metadata["7FE00010"]["BulkDataURI"].endswith(
        f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )
    assert "Value" not in metadata["7FE00010"] and "InlineBinary" not in metadata["7FE00010"]


@pytest.mark.parametrize("undefined_length", [False, True])
def test_large_binary_values_become_bulk_spans_at_any_depth(undefined_length: bool) -> None:
    ds = ct_dataset()
    blob = bytes(range(256)) * 8
    ds.add_new(0x00091010, "OB", blob)
    ds.add_new(0x00090010, "LO", "TEST")
    item = Dataset()
    item.add_new(0x00091011, "OB", blob[::-1])
    ds.add_new(0x00091020, "SQ", Sequence([item]))
    ds[0x00091020].is_undefined_length = undefined_length
    data = to_part10(ds)
    record = parse(data)
    spans = {span.path: span for span in record.bulk}
    top, nested = spans["00091010"], spans["00091020/0/00091011"]
    assert data[top.offset : top.offset + top.length] == blob
    assert data[nested.offset : nested.offset + nested.length] == blob[::-1]
    metadata = orjson.loads(record.metadata)
    assert metadata["00091020"]["Value"][0]["00091011"]["BulkDataURI"].endswith(
        "bulkdata/00091020/0/00091011"
    )


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("SC_rgb_rle_2frame.dcm", 2),
        ("examples_ybr_color.dcm", 30),
        ("JPEG2000.dcm", 1),
        ("rtdose_rle.dcm", 15),
    ],
)
def test_encapsulated_fragments_map_to_frames(name: str, frames: int) -> None:
    data = read(name)
    record = parse(data)
    assert record.pixel is not None and record.pixel.encapsulated
    assert len(record.pixel.frames) == frames
    for frame in record.pixel.frames:
        for offset, length in frame.fragments:
            assert struct.unpack("<HHI", data[offset - 8 : offset]) == (0xFFFE, 0xE000, length)


def test_deflated_syntax_records_no_spans() -> None:
    record = parse(read("image_dfl.dcm"))
    assert record.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    assert record.pixel is None


@pytest.mark.parametrize(
    "data",
    [b"", b"x" * 200, b"\0" * 128 + b"DICM", read("no_meta.dcm")],
    ids=["empty", "junk", "prefix-only", "no-meta"],
)
def test_not_part10_cannot_be_understood(data: bytes) -> None:
    with pytest.raises(InvalidInstanceError) as caught:
        parse(data)
    assert caught.value.failure_code in (0xC000, 0xA900)


def test_missing_identity_is_a900() -> None:
    ds = ct_dataset()
    del ds.StudyInstanceUID
    with pytest.raises(InvalidInstanceError, match="StudyInstanceUID") as caught:
        parse(to_part10(ds))
    assert caught.value.failure_code == 0xA900


def _short_pixel_data() -> Dataset:
    ds = ct_dataset()
    ds.PixelData = ds.PixelData[:100]
    return ds


def _no_study_uid() -> Dataset:
    ds = ct_dataset()
    del ds.StudyInstanceUID
    return ds


def _bad_sop_class() -> Dataset:
    ds = ct_dataset()
    ds.SOPClassUID = "not a uid"
    return ds


@pytest.mark.parametrize("parser", [parse_part10, _parse_with_pydicom], ids=["fast", "pydicom"])
@pytest.mark.parametrize(
    ("make", "names_class"),
    [(_short_pixel_data, True), (_no_study_uid, True), (_bad_sop_class, False)],
    ids=["pixel-data-short", "no-study-uid", "bad-sop-class"],
)
def test_a_failure_after_the_header_is_read_names_the_instance(
    parser: Callable[[BinaryIO, int, ParseLimits], object],
    make: Callable[[], Dataset],
    names_class: bool,
) -> None:
    """A STOW failure entry identifies the instance by its SOP UIDs (PS3.18 10.5.3): a parse
    that fails once they are read carries those that are valid UIDs."""
    ds = make()
    data = to_part10(ds)
    with pytest.raises(InvalidInstanceError) as caught:
        parser(io.BytesIO(data), len(data), LIMITS)
    assert caught.value.sop_instance_uid == ds.SOPInstanceUID
    assert caught.value.sop_class_uid == (ds.SOPClassUID if names_class else "")
    with pytest.raises(InvalidInstanceError) as cut:  # ends before the UIDs: nothing to name
        parser(io.BytesIO(data[:200]), 200, LIMITS)
    assert cut.value.sop_class_uid == cut.value.sop_instance_uid == ""


def test_truncated_pixel_data_is_refused() -> None:
    data = to_part10(ct_dataset(rows=32, columns=32))
    with pytest.raises(InvalidInstanceError, match="past the end"):
        parse(data[:-100])


def test_lying_value_length_is_refused() -> None:
    ds = ct_dataset()
    ds.add_new(0x00091010, "OB", b"\1" * 2048)
    ds.add_new(0x00090010, "LO", "TEST")
    data = bytearray(to_part10(ds))
    marker = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0"
    at = bytes(data).index(marker) + len(marker)
    data[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(InvalidInstanceError):
        parse(bytes(data))


def test_declared_image_larger_than_pixel_data_is_refused() -> None:
    ds = ct_dataset(rows=16, columns=16)
    ds.Rows = 4096
    ds.Columns = 4096
    ds.NumberOfFrames = 1000  # a 32 GB "image" carried by 512 bytes
    with pytest.raises(InvalidInstanceError) as caught:
        parse(to_part10(ds))
    assert caught.value.failure_code in (0xA700, 0xC000)


def test_frame_count_over_the_limit_is_refused() -> None:
    ds = ct_dataset()
    ds.NumberOfFrames = 200_000
    with pytest.raises(InvalidInstanceError, match="NumberOfFrames"):
        parse(to_part10(ds))


def test_deeply_nested_sequences_are_refused() -> None:
    ds = ct_dataset()
    inner = Dataset()
    inner.CodeValue = "x"
    for _ in range(80):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    with pytest.raises(InvalidInstanceError, match="nested"):
        parse(to_part10(ds))


def test_every_bundled_pydicom_file_parses_or_fails_cleanly() -> None:
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    parsed = 0
    for path in sorted(folder.glob("*.dcm")):
        try:
            parse(path.read_bytes())
            parsed += 1
        except InvalidInstanceError as exc:
            assert exc.failure_code in (0xC000, 0xA900, 0xA700)
    assert parsed >= 50
