"""What each query level indexes, matches on and returns (PS3.18 10.6.3, Tables 10.6.3-3/4/5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pydicom import datadict

from dicomweb_server.errors import InvalidQueryError

__all__ = [
    "BINARY_VRS",
    "COMPUTED_TAGS",
    "LEVEL_ATTRIBUTES",
    "MATCH_KEYS",
    "MAX_MATCH_SEQUENCE_DEPTH",
    "MULTI_VALUE_COLUMNS",
    "NESTED_MATCH_KEYS",
    "Attribute",
    "Level",
    "attribute_by_tag",
    "is_data_set_tag",
    "keyword_for_tag",
    "level_of_tag",
    "matching_vr",
    "resolve_tag",
    "tag_hex",
]


class Level(StrEnum):
    """A QIDO-RS query / information-model level."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute we store at one level; `column` is set when it is a match key."""

    tag: int
    keyword: str
    vr: str
    level: Level
    column: str | None = None


def _a(keyword: str, level: Level, column: str | None = None) -> Attribute:
    tag = datadict.tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(tag, keyword, datadict.dictionary_VR(tag), level, column)


_S, _SE, _I = Level.STUDY, Level.SERIES, Level.INSTANCE

# Each level stores these attributes (as DICOM JSON) and matches on those with a column.
_ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient and study (Table 10.6.3-3 plus what worklists ask for)
    _a("SpecificCharacterSet", _S),
    _a("StudyDate", _S, "study_date"),
    _a("StudyTime", _S, "study_time"),
    _a("AccessionNumber", _S, "accession_number"),
    _a("ReferringPhysicianName", _S, "referring_physician_name"),
    _a("TimezoneOffsetFromUTC", _S),
    _a("StudyDescription", _S, "study_description"),
    _a("ProcedureCodeSequence", _S),
    _a("NameOfPhysiciansReadingStudy", _S),
    _a("PatientName", _S, "patient_name"),
    _a("PatientID", _S, "patient_id"),
    _a("IssuerOfPatientID", _S, "issuer_of_patient_id"),
    _a("PatientBirthDate", _S, "patient_birth_date"),
    _a("PatientSex", _S, "patient_sex"),
    _a("OtherPatientIDsSequence", _S),
    _a("PatientAge", _S),
    _a("PatientSize", _S),
    _a("PatientWeight", _S),
    _a("StudyInstanceUID", _S, "study_instance_uid"),
    _a("StudyID", _S, "study_id"),
    # Series (Table 10.6.3-4)
    _a("Modality", _SE, "modality"),
    _a("SeriesDescription", _SE, "series_description"),
    _a("SeriesNumber", _SE, "series_number"),
    _a("SeriesInstanceUID", _SE, "series_instance_uid"),
    _a("SeriesDate", _SE),
    _a("SeriesTime", _SE),
    # What AI tools select cases by (issue 15): the General Series and General Equipment
    # modules (PS3.3 C.7.3.1, C.7.5.1) are series-level, so these are series columns.
    _a("BodyPartExamined", _SE, "body_part_examined"),
    _a("Laterality", _SE),
    _a("Manufacturer", _SE, "manufacturer"),
    _a("ManufacturerModelName", _SE, "manufacturer_model_name"),
    _a("InstitutionName", _SE, "institution_name"),
    _a("StationName", _SE, "station_name"),
    _a("ProtocolName", _SE, "protocol_name"),
    _a("PerformedProcedureStepStartDate", _SE, "performed_procedure_step_start_date"),
    _a("PerformedProcedureStepStartTime", _SE, "performed_procedure_step_start_time"),
    _a("RequestAttributesSequence", _SE),
    # Instance (Table 10.6.3-5)
    _a("SOPClassUID", _I, "sop_class_uid"),
    _a("SOPInstanceUID", _I, "sop_instance_uid"),
    _a("InstanceNumber", _I, "instance_number"),
    _a("ImageType", _I),
    _a("ContentDate", _I),
    _a("ContentTime", _I),
    _a("Rows", _I),
    _a("Columns", _I),
    _a("BitsAllocated", _I),
    _a("NumberOfFrames", _I),
)

LEVEL_ATTRIBUTES: dict[Level, tuple[Attribute, ...]] = {
    level: tuple(a for a in _ATTRIBUTES if a.level is level) for level in Level
}

# Match keys by tag; ModalitiesInStudy is matched against the study's series.
MATCH_KEYS: dict[int, Attribute] = {a.tag: a for a in _ATTRIBUTES if a.column is not None}
_MODALITIES_IN_STUDY = Attribute(0x00080061, "ModalitiesInStudy", "CS", _S, "modalities_in_study")
MATCH_KEYS[_MODALITIES_IN_STUDY.tag] = _MODALITIES_IN_STUDY

# Sequence matching (PS3.18 Table 10.6.1-5, PS3.4 C.2.2.2.6): keys inside the series-level
# Request Attributes Sequence, matched against the values of every item.
_REQUEST_ATTRIBUTES = 0x00400275
NESTED_MATCH_KEYS: dict[tuple[int, int], Attribute] = {
    (_REQUEST_ATTRIBUTES, 0x00401001): Attribute(
        0x00401001, "RequestedProcedureID", "SH", _SE, "requested_procedure_id"
    ),
    (_REQUEST_ATTRIBUTES, 0x00400009): Attribute(
        0x00400009, "ScheduledProcedureStepID", "SH", _SE, "scheduled_procedure_step_id"
    ),
}
# Columns holding several values joined by backslash (DICOM's value separator).
MULTI_VALUE_COLUMNS = frozenset(a.column for a in NESTED_MATCH_KEYS.values())

# Attributes the server computes rather than stores per instance.
COMPUTED_TAGS: dict[int, Level] = {
    0x00080056: _S,  # InstanceAvailability (every level)
    0x00080061: _S,  # ModalitiesInStudy
    0x00080062: _S,  # SOPClassesInStudy
    0x00081190: _S,  # RetrieveURL (every level)
    0x00201206: _S,  # NumberOfStudyRelatedSeries
    0x00201208: _S,  # NumberOfStudyRelatedInstances
    0x00201209: _SE,  # NumberOfSeriesRelatedInstances
}

# Sequence matching on any attribute (PS3.18 8.3.4.1 `Sequence.Attribute`) reaches at most this
# many sequences deep: `Seq.Attr` and `Seq.Seq.Attr`; deeper keys are answered with a warning.
MAX_MATCH_SEQUENCE_DEPTH = 2

# Values of these VRs are bulk or binary (InlineBinary / BulkDataURI in DICOM JSON): never matched.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

_BY_TAG: dict[int, Attribute] = {a.tag: a for a in _ATTRIBUTES}
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_KEYWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def tag_hex(tag: int) -> str:
    """The 8-digit upper-case hex form DICOM JSON uses as a key."""
    return f"{tag:08X}"


def resolve_tag(key: str) -> int:
    """Map a keyword (`PatientID`) or tag number (`00100020`) to a tag, or raise a 400."""
    if _TAG_RE.match(key):
        return int(key, 16)
    tag = datadict.tag_for_keyword(key) if _KEYWORD_RE.match(key) else None
    if tag is None:
        raise InvalidQueryError(f"unknown attribute {key[:64]!r}: use a DICOM keyword or tag")
    return int(tag)


def keyword_for_tag(tag: int) -> str:
    """The dictionary keyword of `tag`, or its hex form when it has none (private tags)."""
    return datadict.keyword_for_tag(tag) or tag_hex(tag)


def attribute_by_tag(tag: int) -> Attribute | None:
    """The stored attribute with this tag, if any level stores it."""
    return _BY_TAG.get(tag)


def level_of_tag(tag: int) -> Level | None:
    """The level that stores or computes `tag`, if any."""
    attr = _BY_TAG.get(tag)
    if attr is not None:
        return attr.level
    return COMPUTED_TAGS.get(tag)


def is_data_set_tag(tag: int) -> bool:
    """Whether `tag` can name an attribute of a stored data set (PS3.5 7.1, 7.8).

    Command (0000) and file meta (0002) groups, group lengths, item and delimiter tags
    (FFFE) and the reserved private elements (gggg,0001-000F) are not attributes of one.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if group in (0x0000, 0x0002, 0xFFFE) or element == 0:
        return False
    return not (group & 1 and 0x0001 <= element <= 0x000F)


def matching_vr(tag: int) -> str:
    """The VR whose matching rules apply to `tag`; "" when unknown (private data elements).

    A private creator (gggg,0010-00FF) is LO; of a dictionary's alternatives ("US or SS")
    the first decides; a private or unknown tag has no VR until a data set gives it one.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        return "LO" if 0x0010 <= element <= 0x00FF else ""
    try:
        return str(datadict.dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return ""
