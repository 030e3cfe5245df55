"""The fast header reader gives exactly pydicom's record, or steps aside for pydicom.

Every case is parsed twice: by `parse_part10` (fast path first) and by the pydicom path
alone; the records must be equal, or both must fail with the same code.
"""

from __future__ import annotations

import io
import struct
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import orjson
import pytest
from dicomfiles import ct_dataset, to_part10, uid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomweb_server.domain.json_values import LONG_LENGTH_VRS
from dicomweb_server.domain.part10 import (
    InvalidInstanceError,
    ParseLimits,
    _build,
    _parse_with_pydicom,
    parse_part10,
    read_fast_header,
)
from dicomweb_server.domain.records import InstanceRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.corpus import CorpusSizes, generate

LIMITS = ParseLimits()
SMALL = ParseLimits(bulk_data_threshold=64, max_sequence_depth=3)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


Outcome = tuple[object, ...] | int


def _comparable(record: InstanceRecord) -> tuple[object, ...]:
    """The record's fields, dicts as JSON bytes: keeps key order, and NaN equals NaN."""
    return tuple(
        orjson.dumps(value) if isinstance(value, dict) else value
        for value in (getattr(record, field.name) for field in fields(record))
    )


def _fast(data: bytes, limits: ParseLimits) -> Outcome | None:
    """The fast path alone (no safety net): None if it steps aside."""
    header = read_fast_header(io.BytesIO(data), len(data), limits)
    if header is None:
        return None
    try:
        return _comparable(_build(header, io.BytesIO(data), len(data), limits))
    except InvalidInstanceError as exc:
        return exc.failure_code


def _slow(data: bytes, limits: ParseLimits) -> Outcome:
    try:
        return _comparable(_parse_with_pydicom(io.BytesIO(data), len(data), limits))
    except InvalidInstanceError as exc:
        return exc.failure_code


def same(data: bytes, limits: ParseLimits = LIMITS) -> bool:
    """Assert both paths agree; return whether the fast path took the file."""
    with warnings.catch_warnings():
        # As in production (part10's import): pytest's "error" filter would otherwise turn
        # pydicom's warnings into exceptions, changing what pydicom makes of a value.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")
        return _same(data, limits)


def _same(data: bytes, limits: ParseLimits) -> bool:
    fast = _fast(data, limits)
    if fast is not None:
        assert fast == _slow(data, limits)
    try:
        combined: Outcome = _comparable(parse_part10(io.BytesIO(data), len(data), limits))
    except InvalidInstanceError as exc:
        combined = exc.failure_code
    assert combined == _slow(data, limits)
    return fast is not None


def test_test_suite_instances_take_the_fast_path() -> None:
    for implicit in (False, True):
        for frames in (1, 3):
            assert same(to_part10(ct_dataset(frames=frames), implicit=implicit))
    ds = ct_dataset(patient_name="Müller^Jürgen=ミュラー", modality="MR")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = ["0.5", "0.5"]
    assert same(to_part10(ds))


@pytest.mark.parametrize("undefined_length", [False, True])
def test_nested_bulk_data_and_private_tags(undefined_length: bool) -> None:
    ds = ct_dataset()
    blob = bytes(range(256)) * 8
    ds.add_new(0x00090010, "LO", "TEST")
    ds.add_new(0x00091010, "OB", blob)
    item = Dataset()
    item.add_new(0x00091011, "OB", blob[::-1])
    item.add_new(0x00091012, "OW", b"\1\2")
    item.add_new(0x00080100, "SH", "CODE")
    ds.add_new(0x00091020, "SQ", Sequence([item, Dataset()]))
    ds[0x00091020].is_undefined_length = undefined_length
    ds.RequestAttributesSequence = [Dataset(), Dataset()]
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence[1].ScheduledProcedureStepID = "SPS2"
    for implicit in (False, True):
        assert same(to_part10(ds, implicit=implicit))


def test_bench_corpus_series_take_the_fast_path() -> None:
    corpus = generate(
        CorpusSizes(
            ct_slices=2, ct_size=32, mr_series=1, mr_slices=2, mr_size=32,
            mf_frames=3, mf_size=32, us_frames=2, j2k_slices=2,
        )
    )  # fmt: skip
    for series in corpus.series.values():
        for data in series.files:
            assert same(data), series.name


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm", "CT_small.dcm"]
)
def test_encapsulated_and_classic_files_take_the_fast_path(name: str) -> None:
    assert same(Path(str(get_testdata_file(name))).read_bytes())


def test_every_bundled_pydicom_file_gives_the_same_record() -> None:
    folder = Path(str(get_testdata_file("CT_small.dcm"))).parent
    fast = 0
    for path in sorted(folder.glob("*.dcm")):
        fast += same(path.read_bytes())
        fast += same(path.read_bytes(), SMALL)
    assert fast >= 100


def test_a_header_past_the_read_budget_is_left_to_pydicom() -> None:
    data = to_part10(ct_dataset(rows=64, columns=64))
    for budget in (200, 1000, 4000):
        assert not same(data, ParseLimits(max_header_bytes=budget))


# Hypothesis: Part 10 files written by hand, so values can be anything a sender could send.

_BYTES = b"0123456789 .-+eE\\^=\x00\t aZ\xe9\xc3\xa9 ABCDxyz\x1b"
_KEYWORDS = [
    "ImageType",
    "AcquisitionDateTime",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "PatientAge",
    "PatientSize",
    "PatientComments",
    "SliceThickness",
    "FrameTime",
    "InstanceNumber",
    "ImagePositionPatient",
    "DimensionIndexPointer",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "Rows",
    "Columns",
    "BitsAllocated",
    "PixelRepresentation",
    "SmallestImagePixelValue",
    "RedPaletteColorLookupTableDescriptor",
    "RescaleSlope",
    "PhysicalDeltaX",
    "ReferencePixelX0",
    "SimpleFrameList",
    "TagAngleSecondAxis",
    "EncapsulatedDocument",
    "VectorGridData",
    "RetrieveURL",
    "LongCodeValue",
    "InstitutionAddress",
    "RetrieveAETitle",
    "FrameOfReferenceUID",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "TextValue",
    "SelectorUVValue",
    "SelectorSVValue",
    "SelectorOLValue",
    "SelectorODValue",
    "SelectorOVValue",
]
_TAGS = {int(tag_for_keyword(k) or 0): str(dictionary_VR(k)) for k in _KEYWORDS}
_SEQUENCES = [0x00081140, 0x00400275, 0x00091020]
_PRIVATE = {0x00090010: "LO", 0x00091010: "OB", 0x00091011: "LO", 0x00091012: "UN"}
_CHARSETS = [b"ISO_IR 192", b"", b"ISO_IR 100", b"ISO_IR 6", b"ISO_IR 192 ", b"ISO 2022 IR 100"]
_NUMBER_TEXT = [
    b"42",
    b"-7 ",
    b"3",
    b"1",
    b"-0",
    b" 2.5",
    b"1e3",
    b"+.5 ",
    b"007",
    b"1.5",
    b"",
    b"abc",
    b"12345678901234567",
]


@st.composite
def _value(draw: st.DrawFn, vr: str) -> bytes:
    if vr in ("DS", "IS"):
        parts = draw(st.lists(st.sampled_from(_NUMBER_TEXT), min_size=1, max_size=3))
        return b"\\".join(parts)
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "US or SS"):
        width = 2 if vr in ("US", "SS", "US or SS") else 8 if vr in ("FD", "SV", "UV") else 4
        size = width * draw(st.integers(0, 3)) + (draw(st.integers(0, 9)) == 7)
        return draw(st.binary(min_size=size, max_size=size))
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW"):
        size = draw(st.sampled_from([0, 1, 6, 63, 64, 65, 200]))
        return draw(st.binary(min_size=size, max_size=size))
    return draw(st.lists(st.sampled_from(list(_BYTES)), max_size=24).map(bytes))


def _element(tag: int, vr: str, value: bytes, implicit: bool, undefined: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined else len(value)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", length) + value
    if vr in LONG_LENGTH_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length) + value
    return head + vr.encode() + struct.pack("<H", length) + value


@st.composite
def _elements(draw: st.DrawFn, implicit: bool, depth: int) -> dict[int, bytes]:
    chosen = draw(st.lists(st.sampled_from(sorted({**_TAGS, **_PRIVATE})), max_size=6))
    elements: dict[int, bytes] = {}
    for tag in chosen:
        vr = {**_TAGS, **_PRIVATE}[tag]
        if " or " in vr and not implicit:
            vr = draw(st.sampled_from(vr.split(" or ")))
        if draw(st.integers(0, 9)) == 7 and not implicit:  # not 0: hypothesis favours it
            vr = draw(st.sampled_from(["UN", "LO", "US", "OB", "DS", "PN"]))
        elements[tag] = _element(tag, vr, draw(_value(vr)), implicit)
    if draw(st.booleans()) and (depth == 0 or draw(st.integers(0, 9)) == 7):
        vr = "LO" if draw(st.integers(0, 9)) == 7 else "CS"
        elements[0x00080005] = _element(0x00080005, vr, draw(st.sampled_from(_CHARSETS)), implicit)
    if depth < 3:
        for tag in draw(st.lists(st.sampled_from(_SEQUENCES), max_size=2, unique=True)):
            items = b""
            undefined_items = draw(st.booleans())
            for item in draw(st.lists(_data_set(implicit, depth + 1), max_size=3)):
                marker = 0xFFFFFFFF if undefined_items else len(item)
                items += struct.pack("<HHI", 0xFFFE, 0xE000, marker) + item
                if undefined_items:
                    items += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            if draw(st.booleans()):
                end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
                elements[tag] = _element(tag, "SQ", items + end, implicit, undefined=True)
            else:
                elements[tag] = _element(tag, "SQ", items, implicit)
    return elements


@st.composite
def _data_set(draw: st.DrawFn, implicit: bool, depth: int) -> bytes:
    return _join(draw(_elements(implicit, depth)), draw(st.integers(0, 20)) == 13)


def _join(elements: dict[int, bytes], reverse: bool = False) -> bytes:
    return b"".join(elements[tag] for tag in sorted(elements, reverse=reverse))


def _part10(syntax: str, body: bytes) -> bytes:
    meta = _element(0x00020001, "OB", b"\0\1", False)
    meta += _element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.2\0", False)
    meta += _element(0x00020010, "UI", syntax.encode() + b"\0" * (len(syntax) % 2), False)
    group_length = _element(0x00020000, "UL", struct.pack("<I", len(meta)), False)
    return b"\0" * 128 + b"DICM" + group_length + meta + body


def _identity(implicit: bool) -> dict[int, bytes]:
    def ui(value: str) -> bytes:
        return value.encode() + b"\0" * (len(value) % 2)

    return {
        0x00080016: _element(0x00080016, "UI", ui("1.2.840.10008.5.1.4.1.1.2"), implicit),
        0x00080018: _element(0x00080018, "UI", ui(uid()), implicit),
        0x0020000D: _element(0x0020000D, "UI", ui(uid()), implicit),
        0x0020000E: _element(0x0020000E, "UI", ui(uid()), implicit),
    }


@FUZZ
@given(st.data())
def test_generated_data_sets_give_the_same_record(data: st.DataObject) -> None:
    implicit = data.draw(st.booleans())
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    elements = data.draw(_elements(implicit, 0))
    if data.draw(st.integers(0, 9)) != 7:
        elements = {**_identity(implicit), **elements}
    body = _join(elements, data.draw(st.integers(0, 30)) == 17)
    limits = data.draw(st.sampled_from([LIMITS, SMALL]))
    same(_part10(syntax, body), limits)


@FUZZ
@given(
    frames=st.integers(1, 4),
    fragments=st.lists(st.binary(min_size=0, max_size=40), min_size=0, max_size=5),
    table=st.sampled_from(["empty", "offsets", "odd"]),
    syntax=st.sampled_from(["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"]),
)  # fmt: skip
def test_encapsulated_pixel_data_gives_the_same_layout(
    frames: int, fragments: list[bytes], table: str, syntax: str
) -> None:
    starts, position = [], 0
    for fragment in fragments:
        starts.append(position)
        position += 8 + len(fragment)
    bot = {"empty": b"", "offsets": struct.pack(f"<{len(starts)}I", *starts), "odd": b"\1\2"}
    value = struct.pack("<HHI", 0xFFFE, 0xE000, len(bot[table])) + bot[table]
    for fragment in fragments:
        value += struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
    value += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    identity = _identity(False)
    image = {
        0x00280008: _element(0x00280008, "IS", str(frames).encode().ljust(2), False),
        0x00280010: _element(0x00280010, "US", struct.pack("<H", 8), False),
        0x00280011: _element(0x00280011, "US", struct.pack("<H", 8), False),
        0x00280100: _element(0x00280100, "US", struct.pack("<H", 8), False),
        0x7FE00010: _element(0x7FE00010, "OB", value, False, undefined=True),
    }
    assert same(_part10(syntax, _join({**identity, **image})))


TRICKY: list[tuple[int, str, bytes]] = [
    (0x00080008, "CS", b" ORIGINAL \\PRIMARY\\\\ "),
    (0x00080020, "DA", b"20240101\0"),
    (0x00080054, "AE", b" AE1 \\ AE2\0"),
    (0x00080081, "ST", b"  two leading, trailing NUL\0"),
    (0x00080090, "PN", b"Doe^John==Phonetic "),
    (0x00081030, "LO", b" lead\\trail  \\"),
    (0x00081190, "UR", b"http://x/y \t"),
    (0x00101010, "AS", b"042Y"),
    (0x00101020, "DS", b" 1.75 "),
    (0x00104000, "LT", b"\tline one\r\nline two  "),
    (0x00181063, "DS", b"33.3\\-1e2\\+.5"),
    (0x00200013, "IS", b"+007 "),
    (0x00200032, "DS", b"-180.0\\-180\\0"),
    (0x00200052, "UI", b"1.2.3 \\ 4.5\0"),
    (0x00209165, "AT", b"\x28\x00\x10\x00\x20\x00\x13\x00"),
    (0x00281101, "SS", b"\x00\x80\x00\x00\x10\x00"),
    (0x00281053, "DS", b"  "),
    (0x0018602C, "FD", struct.pack("<2d", 0.1, -2.5)),
    (0x00186020, "SL", struct.pack("<l", -5)),
    (0x00189219, "SS", struct.pack("<3h", -1, 0, 7)),
    (0x0040A160, "UT", b"  text with \\ backslash "),
    (0x00720082, "SV", struct.pack("<q", -(2**40))),
    (0x00720083, "UV", struct.pack("<Q", 2**63)),
    (0x00080119, "UC", b"long code\\x"),
    (0x00081161, "UL", b""),
]


@pytest.mark.parametrize("implicit", [False, True])
def test_tricky_values_give_the_same_record(implicit: bool) -> None:
    elements = _identity(implicit)
    for tag, vr, value in TRICKY:
        elements[tag] = _element(tag, vr, value, implicit)
    elements[0x00080005] = _element(0x00080005, "CS", b"ISO_IR 100", implicit)
    data = _part10("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1", _join(elements))
    assert same(data) == (not implicit)  # implicit: (0028,1101) is US or SS, left to pydicom
    del elements[0x00281101]
    data = _part10("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1", _join(elements))
    assert same(data)


@pytest.mark.parametrize(
    ("implicit", "bits", "expected"),
    [(True, 16, "OW"), (True, 8, "OW"), (False, 16, "OW"), (False, 8, "OB")],
)
def test_ps3_5_a_1_pixel_and_overlay_data_read_without_a_vr_are_words(
    implicit: bool, bits: int, expected: str
) -> None:
    """Implicit VR Little Endian encodes Pixel Data and Overlay Data as OW whatever Bits
    Allocated says (PS3.5 A.1); explicit VR files say which they used. Both paths agree."""
    ds = ct_dataset(rows=4, columns=4)
    if bits == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(16)
        ds["PixelData"].VR = "OB"
    for tag, vr, value in [
        (0x60000010, "US", 4),  # Overlay Rows, Columns, Type, Origin, Bits Allocated, Position
        (0x60000011, "US", 4),
        (0x60000040, "CS", "G"),
        (0x60000050, "SS", [1, 1]),
        (0x60000100, "US", 1),
        (0x60000102, "US", 0),
    ]:
        ds.add_new(tag, vr, value)
    ds.add_new(0x60003000, "OW" if implicit or bits == 16 else "OB", bytes(2))
    data = to_part10(ds, implicit=implicit)
    same(data)  # implicit: the overlay's ambiguous VR is left to pydicom
    metadata = orjson.loads(parse_part10(io.BytesIO(data), len(data), LIMITS).metadata)
    assert metadata["7FE00010"]["vr"] == expected
    assert metadata["60003000"]["vr"] == ("OW" if implicit else ds[0x60003000].VR)
