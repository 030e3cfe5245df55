from __future__ import annotations

import io
import re
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import validate_value

from dicomweb_server.domain.deid_table import (
    PRIVATE_ROW,
    REPEATING_ROWS,
    STANDARD_VERSION,
    TABLE,
    ProfileRow,
)
from dicomweb_server.domain.deidentify import (
    MAX_DATE_SHIFT_DAYS,
    PROFILE_NAMES,
    Deidentifier,
    DeidOptions,
    dummy_value,
    parse_profile,
    resolve_action,
)
from dicomweb_server.errors import BadRequestError

KEY = b"export-key-0123456789abcdef"
OTHER_KEY = b"another-export-key-9876543210"
SOURCE_UID = "1.2.826.0.1.3680043.2.1125.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PROFILES = [parse_profile(name) for name in PROFILE_NAMES]

# One value of each VR the table uses, each one different from its VR's dummy.
SAMPLES: dict[str, Any] = {
    "AE": "STATION_7",
    "AS": "045Y",
    "CS": "ORIGINAL",
    "DA": "20200115",
    "DS": "1.5",
    "DT": "20200115123000.5+0100",
    "IS": "7",
    "LO": "Jane's clinic",
    "LT": "free text",
    "OB": b"\x01\x02",
    "PN": "Doe^Jane",
    "SH": "SECRET",
    "ST": "a note",
    "TM": "123000",
    "UC": "unlimited",
    "UI": SOURCE_UID,
    "UN": b"\x01\x02",
    "UR": "http://example.org/patient/7",
    "US": 1,
    "UT": "more text",
}
# What the Basic Profile does, with a compound action's last (conformance-keeping) branch.
BASIC_OUTCOME = {
    "X": "removed",
    "Z": "empty",
    "D": "dummy",
    "U": "replaced",
    "Z/D": "dummy",
    "X/Z": "empty",
    "X/D": "dummy",
    "X/Z/D": "dummy",
    "X/Z/U*": "replaced",
}


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _sample_item() -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = SOURCE_UID  # U
    item.CodeMeaning = "kept"  # not in the table
    item.add_new(0x00090010, "LO", "ACME 1.0")
    item.add_new(0x00091001, "LO", "private secret")
    return item


def _sample(tag: int) -> Any:
    return Sequence([_sample_item()]) if _vr(tag) == "SQ" else SAMPLES[_vr(tag)]


def _patient(patient_id: str = "PID-1") -> Dataset:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.PatientName = "Doe^Jane"
    return ds


def _apply(options: DeidOptions, ds: Dataset, key: bytes = KEY) -> Dataset:
    result = Deidentifier(key, options).apply(ds)
    assert result.dataset is not None and not result.excluded
    return result.dataset


def _observed_shift(options: DeidOptions, patient_id: str = "PID-1", key: bytes = KEY) -> timedelta:
    ds = _patient(patient_id)
    ds.ExpiryDate = "20200115"  # (0014,1020): not in the table
    out = _apply(options, ds, key)
    return date.fromisoformat(
        f"{out.ExpiryDate[:4]}-{out.ExpiryDate[4:6]}-{out.ExpiryDate[6:]}"
    ) - date(2020, 1, 15)


def _expected(tag: int, row: ProfileRow, options: DeidOptions) -> str:
    if tag in (0x00100010, 0x00100020):
        return "pseudonym"
    if options.retain_patient_characteristics and row.retain_patient_characteristics == "K":
        return "kept"
    if options.retain_modified_dates and row.retain_modified_dates == "C":
        if _vr(tag) in ("DA", "DT"):
            return "shifted"
        if _vr(tag) == "TM":
            return "kept"
    return BASIC_OUTCOME[row.basic]


def _assert_valid(vr: str, value: Any) -> None:
    values = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
    for one in values:
        validate_value(vr, one, config.RAISE)


# --- the table ---------------------------------------------------------------------------------


def test_table_is_the_whole_2024b_table() -> None:
    assert STANDARD_VERSION == "2024b"
    assert len(TABLE) == 617 and len(REPEATING_ROWS) == 3
    assert PRIVATE_ROW.basic == "X" and PRIVATE_ROW.retain_safe_private == "C"
    assert {row.basic for row in TABLE.values()} == set(BASIC_OUTCOME)
    # Rows as printed in PS3.15 2024b Table E.1-1.
    assert TABLE[0x00100040] == ProfileRow(
        "(0010,0040)", "Patient's Sex", "Z", True, retain_patient_characteristics="K"
    )
    assert TABLE[0x00080020].basic == "Z" and TABLE[0x00080020].retain_modified_dates == "C"
    assert TABLE[0x00080018].basic == "U" and TABLE[0x00081140].basic == "X/Z/U*"
    assert TABLE[0x00100030].basic == "Z" and TABLE[0x00100030].retain_modified_dates == ""


def test_no_row_is_in_both_options_columns() -> None:
    for row in TABLE.values():
        assert not (row.retain_patient_characteristics and row.retain_modified_dates), row


@pytest.mark.parametrize("tag", sorted(TABLE), ids=lambda t: f"{t:08X}")
def test_every_tag_of_the_table_has_a_testable_vr(tag: int) -> None:
    assert _vr(tag) == "SQ" or _vr(tag) in SAMPLES


# --- attribute by attribute, for every profile --------------------------------------------------


@pytest.mark.parametrize("options", PROFILES, ids=lambda o: o.profile_name)
@pytest.mark.parametrize("tag", sorted(TABLE), ids=lambda t: f"{t:08X}")
def test_each_attribute_gets_its_action(tag: int, options: DeidOptions) -> None:
    row = TABLE[tag]
    ds = _patient() if tag not in (0x00100010, 0x00100020) else Dataset()
    ds.add_new(tag, dictionary_VR(tag).split(" or ")[0], _sample(tag))
    original = _sample(tag)
    deid = Deidentifier(KEY, options)
    out = _apply(options, ds)
    outcome = _expected(tag, row, options)
    vr = _vr(tag)

    if outcome == "removed":
        assert tag not in out
        return
    assert tag in out
    value = out[tag].value
    if vr == "SQ":
        if outcome == "empty":
            assert len(value) == 0
        else:  # dummy, replaced, kept: the items stay, cleaned
            [item] = value
            assert item.ReferencedSOPInstanceUID == deid.uid(SOURCE_UID)
            assert item.CodeMeaning == "kept"
            assert 0x00090010 not in item and 0x00091001 not in item
        return
    if outcome == "empty":
        assert out[tag].VM == 0
    elif outcome == "kept":
        assert value == original
    elif outcome == "pseudonym":
        assert str(value) == str(out.get("PatientID", value)) and str(value) != str(original)
        assert re.fullmatch(r"[A-Z2-7]{24}", str(value))
    elif outcome == "replaced" or (outcome == "dummy" and vr == "UI"):
        assert value == deid.uid(SOURCE_UID)
    elif outcome == "dummy":
        assert value not in ("", None, b"") and value != original
        _assert_valid(vr, value)
    else:
        assert outcome == "shifted"
        shift = _observed_shift(options)
        moved = date(2020, 1, 15) + shift
        assert value == (f"{moved:%Y%m%d}" if vr == "DA" else f"{moved:%Y%m%d}123000.5+0100")


# --- options ---------------------------------------------------------------------------------


def test_resolve_action_takes_the_option_column_first() -> None:
    basic, both = parse_profile("basic"), parse_profile("basic+dates+patient")
    assert resolve_action(TABLE[0x00100040], basic) == "Z"
    assert resolve_action(TABLE[0x00100040], both) == "K"  # Patient's Sex
    assert resolve_action(TABLE[0x00102110], both) == "X"  # Allergies: C, free text
    assert resolve_action(TABLE[0x00080022], basic) == "Z"  # Acquisition Date X/Z
    assert resolve_action(TABLE[0x00080022], both) == "C"
    assert resolve_action(TABLE[0x0008002A], basic) == "D"  # X/Z/D
    assert resolve_action(TABLE[0x00081140], basic) == "U"  # X/Z/U*


def test_patient_characteristics_option_keeps_them() -> None:
    def characteristics() -> Dataset:
        ds = _patient()
        ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "045Y", "61.5"
        ds.Allergies = "peanuts"
        return ds

    basic = _apply(parse_profile("basic"), characteristics())
    assert basic.PatientSex == "" and "PatientAge" not in basic and "PatientWeight" not in basic
    kept = _apply(parse_profile("basic+patient"), characteristics())
    assert (kept.PatientSex, kept.PatientAge, kept.PatientWeight) == ("F", "045Y", "61.5")
    assert "Allergies" not in kept


def test_dates_shift_per_patient_within_bounds_and_keep_intervals() -> None:
    dates = parse_profile("basic+dates")
    shifts = {_observed_shift(dates, f"PID-{n}") for n in range(20)}
    assert len(shifts) > 1
    assert all(-MAX_DATE_SHIFT_DAYS <= s.days <= -1 for s in shifts)
    assert _observed_shift(dates, "PID-3") == _observed_shift(dates, "PID-3")
    assert _observed_shift(dates, "PID-3") != _observed_shift(dates, "PID-3", OTHER_KEY)

    ds = _patient("PID-3")
    ds.StudyDate, ds.AcquisitionDate, ds.StudyTime = "20200115", ["20200120", "20200201"], "0815"
    out = _apply(dates, ds)
    shift = _observed_shift(dates, "PID-3")
    assert out.StudyDate == f"{date(2020, 1, 15) + shift:%Y%m%d}"
    assert list(out.AcquisitionDate) == [
        f"{date(2020, 1, 20) + shift:%Y%m%d}",
        f"{date(2020, 2, 1) + shift:%Y%m%d}",
    ]
    assert out.StudyTime == "0815"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


@pytest.mark.parametrize(
    ("value", "anchor", "width", "rest"),
    [
        ("2020", date(2020, 7, 1), 4, ""),  # reduced precision moves its mid-point
        ("202006", date(2020, 6, 15), 6, ""),
        ("20200615", date(2020, 6, 15), 8, ""),
        ("2020061512", date(2020, 6, 15), 8, "12"),
        ("20200615123456.123456-0500", date(2020, 6, 15), 8, "123456.123456-0500"),
        ("2020-0500", date(2020, 7, 1), 4, "-0500"),
    ],
)
def test_datetime_keeps_precision_time_and_offset(
    value: str, anchor: date, width: int, rest: str
) -> None:
    dates = parse_profile("basic+dates")
    ds = _patient()
    ds.AcquisitionDateTime = value
    out = _apply(dates, ds)
    moved = anchor + _observed_shift(dates)
    assert out.AcquisitionDateTime == f"{moved:%Y%m%d}"[:width] + rest


def test_dates_that_cannot_move_get_the_basic_action() -> None:
    dates = parse_profile("basic+dates")
    ds = _patient()
    with config.disable_value_validation():
        ds.StudyDate = "2020.01.15"  # ACR-NEMA form: Z
        ds.ExpiryDate = "not a date"  # not in the table: emptied rather than kept
        ds.AcquisitionDateTime = "20201315"  # no such month: X/Z/D
        ds.InstanceCoercionDateTime = "2020-01-15"  # not DT at all: X
    ds.AcquisitionDate = "00010101"  # moves before year 1: X/Z
    ds.TimezoneOffsetFromUTC = "+0100"  # SH with C: Basic X
    ds.add_new(0x04000310, "OB", b"\x01\x02")  # Certified Timestamp, OB with C: Basic X
    ds.add_new(0x00340007, "OB", b"\x01\x02")  # Frame Origin Timestamp, OB with C: Basic D
    out = _apply(dates, ds)
    assert out.StudyDate == "" and out.AcquisitionDateTime == "19000101000000"
    assert out.AcquisitionDate == "" and out.ExpiryDate == ""
    assert "InstanceCoercionDateTime" not in out
    assert "TimezoneOffsetFromUTC" not in out and 0x04000310 not in out
    assert out[0x00340007].value == bytes(8)


def test_dates_not_in_the_table_are_kept_without_the_dates_option() -> None:
    ds = _patient()
    ds.ExpiryDate = "20200115"
    ds.StudyDate = "20200115"
    out = _apply(parse_profile("basic"), ds)
    assert out.ExpiryDate == "20200115" and out.StudyDate == ""
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_empty_dates_stay_empty() -> None:
    ds = _patient()
    ds.StudyDate = ""
    ds.ExpiryDate = ""
    out = _apply(parse_profile("basic+dates"), ds)
    assert out.StudyDate == "" and out.ExpiryDate == ""


# --- pseudonyms ------------------------------------------------------------------------------


def test_uids_are_2_25_uuids_consistent_within_an_export_and_unrelated_across_keys() -> None:
    deid, other = Deidentifier(KEY, DeidOptions()), Deidentifier(OTHER_KEY, DeidOptions())
    new = deid.uid(SOURCE_UID)
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", new) and len(new) <= 64
    as_uuid = uuid.UUID(int=int(new[5:]))
    assert as_uuid.version == 8 and as_uuid.variant == uuid.RFC_4122
    assert deid.uid(SOURCE_UID) == new == deid.uid(SOURCE_UID + "\0")
    assert other.uid(SOURCE_UID) != new
    assert deid.uid(SOURCE_UID + ".2") != new


def test_one_study_keeps_its_uids_across_instances() -> None:
    instances = []
    for number in (1, 2):
        ds = _patient()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
        ds.SOPInstanceUID = f"1.2.3.4.{number}"
        ds.FrameOfReferenceUID = "1.2.3.9"
        ds.ReferencedImageSequence = Sequence([Dataset()])
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.1"
        instances.append(_apply(DeidOptions(), ds))
    first, second = instances
    assert first.StudyInstanceUID == second.StudyInstanceUID != "1.2.3"
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert first.PatientID == second.PatientID == first.PatientName


def test_multi_valued_uids_map_each_value() -> None:
    ds = _patient()
    ds.add_new(0x00209161, "UI", "1.2.3")  # Concatenation UID
    ds.add_new(0x00081155, "UI", ["1.2.3", "1.2.4"])  # Referenced SOP Instance UID
    out = _apply(DeidOptions(), ds)
    deid = Deidentifier(KEY, DeidOptions())
    assert list(out[0x00081155].value) == [deid.uid("1.2.3"), deid.uid("1.2.4")]
    assert out[0x00209161].value == deid.uid("1.2.3")


def test_patients_get_distinct_consistent_pseudonyms() -> None:
    a1, a2, b = (_apply(DeidOptions(), _patient(pid)) for pid in ("A", "A", "B"))
    assert a1.PatientID == a2.PatientID != b.PatientID
    assert a1.PatientName == a1.PatientID
    assert _apply(DeidOptions(), _patient("A"), OTHER_KEY).PatientID != a1.PatientID
    issued = _patient("A")
    issued.IssuerOfPatientID = "OTHER HOSPITAL"
    assert _apply(DeidOptions(), issued).PatientID != a1.PatientID


def test_without_patient_id_the_name_then_the_study_names_the_patient() -> None:
    def named(name: str, study: str) -> Dataset:
        ds = Dataset()
        ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "", name, study
        return _apply(parse_profile("basic+dates"), ds)

    assert named("Doe^Jane", "1.2").PatientID == named("Doe^Jane", "1.3").PatientID
    assert named("", "1.2").PatientID == named("", "1.2").PatientID != named("", "1.3").PatientID


# --- structure: sequences, private, curves, overlays, file meta ------------------------------


def test_sequences_are_cleaned_at_every_depth() -> None:
    ds = _patient()
    inner = _sample_item()
    inner.PatientName = "Doe^John"
    inner.InstitutionAddress = "1 Main Street"  # X
    middle = Dataset()
    middle.CodeMeaning = "level 2"
    middle.ContentSequence = Sequence([inner])  # D: items kept, cleaned
    ds.IssuerOfAccessionNumberSequence = Sequence([middle])  # not in the table
    ds.AcquisitionContextSequence = Sequence([_sample_item()])  # X/Z: emptied
    ds.OtherPatientIDsSequence = Sequence([_sample_item()])  # X
    out = _apply(DeidOptions(), ds)
    [item] = out.IssuerOfAccessionNumberSequence[0].ContentSequence
    deid = Deidentifier(KEY, DeidOptions())
    assert item.ReferencedSOPInstanceUID == deid.uid(SOURCE_UID)
    assert item.PatientName == out.PatientID  # the instance's patient pseudonym
    assert "InstitutionAddress" not in item and 0x00091001 not in item
    assert len(out.AcquisitionContextSequence) == 0
    assert "OtherPatientIDsSequence" not in out


def test_private_attributes_are_removed() -> None:
    ds = _patient()
    ds.add_new(0x00190010, "LO", "ACME 1.0")
    ds.add_new(0x00191001, "LO", "secret")
    ds.add_new(0x7FE10010, "LO", "VENDOR")
    out = _apply(DeidOptions(), ds)
    assert not any(element.tag.is_private for element in out)


# A tag of each repeating-group row, with a value of its VR.
REPEATING_SAMPLES = {
    "Curve Data": (0x50020005, "US", 1),
    "Overlay Data": (0x60023000, "OW", b"\0\0"),
    "Overlay Comments": (0x60024000, "LT", "marked by Dr. Who"),
}


@pytest.mark.parametrize(
    ("mask", "value", "row"), REPEATING_ROWS, ids=[row.name for _, _, row in REPEATING_ROWS]
)
def test_repeating_group_rows_are_removed(mask: int, value: int, row: ProfileRow) -> None:
    tag, vr, sample = REPEATING_SAMPLES[row.name]
    assert tag & mask == value and row.basic == "X"
    ds = _patient()
    ds.add_new(tag, vr, sample)
    assert tag not in _apply(DeidOptions(), ds)


def test_whole_overlay_groups_and_curves_go() -> None:
    ds = _patient()
    ds.add_new(0x60000010, "US", 4)  # Overlay Rows
    ds.add_new(0x60000022, "LO", "Dr. Who's marks")  # Overlay Description
    ds.add_new(0x60023000, "OW", b"\0\0")
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
    out = _apply(DeidOptions(), ds)
    assert not any(0x5000 <= element.tag.group <= 0x60FF for element in out)


def test_file_meta_follows_the_new_sop_instance_uid() -> None:
    ds = _patient()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.999"  # inconsistent input
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    out = _apply(DeidOptions(), ds)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != "1.2.3.4.5"
    assert out.file_meta.MediaStorageSOPClassUID == CT_IMAGE
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_file_meta_without_an_instance_uid_is_still_cleaned() -> None:
    ds = _patient()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.999"
    out = _apply(DeidOptions(), ds)
    assert out.file_meta.MediaStorageSOPInstanceUID == Deidentifier(KEY, DeidOptions()).uid(
        "1.2.3.4.999"
    )


# --- burned-in annotation and method attributes ---------------------------------------------


def test_burned_in_annotation_is_excluded_unless_kept() -> None:
    ds = _patient()
    ds.BurnedInAnnotation = "YES"
    result = Deidentifier(KEY, DeidOptions()).apply(ds)
    assert result.excluded and result.dataset is None
    assert result.excluded_reason is not None and "(0028,0301)" in result.excluded_reason
    assert ds.PatientID == "PID-1"  # untouched
    kept = Deidentifier(KEY, parse_profile("basic", keep_burned_in=True)).apply(ds)
    assert not kept.excluded and kept.excluded_reason is None
    assert kept.dataset is ds and ds.PatientID != "PID-1" and ds.BurnedInAnnotation == "YES"
    unmarked = _patient()
    unmarked.BurnedInAnnotation = "NO"
    assert not Deidentifier(KEY, DeidOptions()).apply(unmarked).excluded


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # as some writers send it
@pytest.mark.parametrize("marked", ["yes", "Yes", " YES"])
def test_burned_in_annotation_is_read_whatever_its_case_and_padding(marked: str) -> None:
    ds = _patient()
    ds.BurnedInAnnotation = marked
    assert Deidentifier(KEY, DeidOptions()).apply(ds).excluded


@pytest.mark.parametrize("options", PROFILES, ids=lambda o: o.profile_name)
def test_method_attributes_name_the_profile_and_options(options: DeidOptions) -> None:
    out = _apply(options, _patient())
    assert out.PatientIdentityRemoved == "YES"
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
    ]
    expected = [("113100", "DCM")]
    expected += [("113107", "DCM")] if options.retain_modified_dates else []
    expected += [("113108", "DCM")] if options.retain_patient_characteristics else []
    assert codes == expected
    meanings = [i.CodeMeaning for i in out.DeidentificationMethodCodeSequence]
    assert list(out.DeidentificationMethod) == [
        "PS3.15-2024b Table E.1-1, dicomweb_server",
        *meanings,
    ]
    assert out.LongitudinalTemporalInformationModified == (
        "MODIFIED" if options.retain_modified_dates else "REMOVED"
    )


def test_method_attributes_are_added_to_an_earlier_pass() -> None:
    ds = _patient()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Site script v1"
    earlier = Dataset()
    earlier.CodeValue, earlier.CodingSchemeDesignator = "113100", "DCM"
    earlier.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([earlier])
    out = _apply(parse_profile("basic+dates"), ds)
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.DeidentificationMethod[0] == "Site script v1"
    assert len(out.DeidentificationMethod) == 4


# --- the CLI's profile names, keys and dummies -----------------------------------------------


def test_profile_names_round_trip() -> None:
    for name in PROFILE_NAMES:
        assert parse_profile(name).profile_name == name
    assert parse_profile(" Basic+Patient+Dates ") == DeidOptions(True, True, False)
    assert parse_profile("basic", keep_burned_in=True).keep_burned_in


@pytest.mark.parametrize("name", ["", "full", "basic+", "basic+dates+dates", "dates", "basic+uids"])
def test_unknown_profile_names_are_refused_with_the_known_ones(name: str) -> None:
    with pytest.raises(BadRequestError, match="basic\\+dates\\+patient") as caught:
        parse_profile(name)
    assert "unknown de-identification profile" in caught.value.reason


def test_a_short_key_is_refused() -> None:
    with pytest.raises(BadRequestError, match="at least 16 bytes"):
        Deidentifier(b"short", DeidOptions())


@pytest.mark.parametrize(
    "vr",
    ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
     "OL", "OV", "OW", "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UL", "UN", "UR", "US",
     "UT", "UV"],
)  # fmt: skip
def test_dummy_values_are_valid_for_their_vr(vr: str) -> None:
    value = dummy_value(vr)
    assert value not in ("", None, b"")
    _assert_valid(vr, value)
    ds = Dataset()
    ds.add_new(0x00091001, vr, value)
    pydicom.dcmwrite(io.BytesIO(), ds, implicit_vr=False, little_endian=True)


# --- written and read back --------------------------------------------------------------------


def _every_row() -> Dataset:
    # Every row but the command (0000) and File Meta (0002) groups, which a data set cannot hold.
    ds = Dataset()
    for tag in sorted(TABLE):
        if tag >> 16 not in (0x0000, 0x0002):
            ds.add_new(tag, _vr(tag), _sample(tag))
    ds.SOPClassUID = CT_IMAGE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("options", PROFILES, ids=lambda o: o.profile_name)
def test_output_writes_and_reads_back(options: DeidOptions) -> None:
    ds = _every_row()
    out = _apply(options, ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back == out
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.PatientIdentityRemoved == "YES"


def test_a_read_file_is_cleaned_without_reading_its_pixel_data(tmp_path: Path) -> None:
    ds = _patient()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, "1.2.3.4.5"
    ds.IssuerOfAccessionNumberSequence = Sequence([_sample_item()])  # not in the table
    ds.ExpiryDate = "20200115"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(64 * 64 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # raw elements without VRs
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    path = tmp_path / "ct_16bit_1frame.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)

    read = pydicom.dcmread(path, defer_size=1024)
    out = _apply(parse_profile("basic+dates"), read)
    assert out.get_item(0x7FE00010, keep_deferred=True).value is None  # still deferred
    [item] = out.IssuerOfAccessionNumberSequence
    assert 0x00091001 not in item and item.CodeMeaning == "kept"
    assert out.ExpiryDate != "20200115"
    assert len(out.PixelData) == 64 * 64 * 2
