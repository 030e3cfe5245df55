"""domain/file_meta.py: the file meta group checked, and rewritten when wrong (issue 15)."""

from __future__ import annotations

import io
import struct

from dicomfiles import ct_dataset, to_part10
from pydicom import dcmread

from dicomweb_server.domain.file_meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    build_file_meta,
    meta_problems,
    read_file_meta,
)


def _with_group_length(data: bytes, value: int) -> bytes:
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) first
    return data[:140] + struct.pack("<I", value) + data[144:]


def test_a_correct_group_has_no_problems() -> None:
    ds = ct_dataset()
    meta = read_file_meta(to_part10(ds))
    assert meta.text(0x00020010) == "1.2.840.10008.1.2.1"
    assert meta_problems(meta, ds.SOPClassUID, ds.SOPInstanceUID) == []


def test_issue15_every_problem_is_named() -> None:
    ds = ct_dataset()
    data = _with_group_length(to_part10(ds), 0xFFFFFFF0)
    problems = meta_problems(read_file_meta(data), "1.2.3", "1.2.4")
    assert problems[0].startswith("File Meta Information Group Length 4294967280 (the group has")
    assert "MediaStorageSOPClassUID differs from SOPClassUID" in problems
    assert "MediaStorageSOPInstanceUID differs from SOPInstanceUID" in problems
    bare = read_file_meta(b"\0" * 128 + b"DICM")
    assert meta_problems(bare, "1.2", "1.3") == [
        "no File Meta Information Group Length",
        "File Meta Information Version is not 00\\01",
        "MediaStorageSOPClassUID differs from SOPClassUID",
        "MediaStorageSOPInstanceUID differs from SOPInstanceUID",
        "no Implementation Class UID",
    ]


def test_rewritten_group_reads_back_with_pydicom_and_keeps_the_source_ae() -> None:
    ds = ct_dataset()
    ds.file_meta.SourceApplicationEntityTitle = "SCANNER1"
    data = to_part10(ds)
    meta = read_file_meta(data)
    group = build_file_meta(meta, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1")
    rewritten = data[:132] + group + data[meta.end :]
    again = read_file_meta(rewritten)
    assert meta_problems(again, ds.SOPClassUID, ds.SOPInstanceUID) == []
    read = dcmread(io.BytesIO(rewritten))
    assert read.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert read.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert read.file_meta.SourceApplicationEntityTitle == "SCANNER1"
    assert read.SOPInstanceUID == ds.SOPInstanceUID


def test_truncated_or_oversized_elements_end_the_group() -> None:
    ds = ct_dataset()
    data = to_part10(ds)
    assert read_file_meta(data[:136]).end == 132  # an element header cut short
    assert read_file_meta(data[:146]).end == 144  # a value cut short, after the length
    long_header = data[:132] + b"\x02\x00\x01\x00OB\x00\x00"  # a long-VR header cut short
    assert read_file_meta(long_header).end == 132
    huge = data[:132] + b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 1 << 20)
    assert read_file_meta(huge + b"\0" * 16).end == 132


def test_values_of_odd_length_are_padded_as_their_vr_wants() -> None:
    meta = read_file_meta(b"\0" * 128 + b"DICM")
    group = build_file_meta(meta, "1.2.345", "1.2.34", "1.2.840.10008.1.2.1")
    rewritten = read_file_meta(b"\0" * 128 + b"DICM" + group)
    assert rewritten.elements[0x00020002][1] == b"1.2.345\0"
    assert rewritten.elements[0x00020003][1] == b"1.2.34"
    assert rewritten.elements[0x00020013][1] == IMPLEMENTATION_VERSION_NAME.encode() + b" "
    assert meta_problems(rewritten, "1.2.345", "1.2.34") == []
