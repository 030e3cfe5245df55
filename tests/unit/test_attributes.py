from __future__ import annotations

import pytest

from dicomweb_server.domain.attributes import (
    LEVEL_ATTRIBUTES,
    MATCH_KEYS,
    Level,
    attribute_by_tag,
    keyword_for_tag,
    level_of_tag,
    resolve_tag,
    tag_hex,
)
from dicomweb_server.errors import InvalidQueryError


def test_resolve_by_keyword_or_tag() -> None:
    assert resolve_tag("PatientID") == 0x00100020
    assert resolve_tag("00100020") == 0x00100020
    assert resolve_tag("0010002a") == 0x0010002A


@pytest.mark.parametrize("key", ["NotAKeyword", "0010002", "patientid", ""])
def test_unknown_keys_are_400(key: str) -> None:
    with pytest.raises(InvalidQueryError, match="unknown attribute"):
        resolve_tag(key)


def test_required_return_keys_of_ps3_18_table_10_6_3_3_are_stored_at_study_level() -> None:
    study = {a.keyword for a in LEVEL_ATTRIBUTES[Level.STUDY]}
    assert {
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "StudyID",
    } <= study


def test_match_keys_have_columns_and_levels() -> None:
    assert MATCH_KEYS[0x00080060].column == "modality"
    assert MATCH_KEYS[0x00080061].column == "modalities_in_study"
    assert all(a.column for a in MATCH_KEYS.values())


def test_lookups() -> None:
    assert tag_hex(0x7FE00010) == "7FE00010"
    assert keyword_for_tag(0x00100010) == "PatientName"
    assert keyword_for_tag(0x00091001) == "00091001"
    assert level_of_tag(0x00200013) is Level.INSTANCE
    assert level_of_tag(0x00201209) is Level.SERIES
    assert level_of_tag(0x00180050) is None
    assert attribute_by_tag(0x00100020) is not None
    assert attribute_by_tag(0x12345678) is None


def test_issue15_data_set_tags() -> None:
    from dicomweb_server.domain.attributes import is_data_set_tag

    assert is_data_set_tag(0x00100020) and is_data_set_tag(0x00091001)
    assert is_data_set_tag(0x00090010)  # a private creator
    for tag in (0x00000900, 0x00020010, 0x00100000, 0xFFFEE000, 0x00090001, 0x0009000F):
        assert not is_data_set_tag(tag), hex(tag)


def test_issue15_matching_vr() -> None:
    from dicomweb_server.domain.attributes import matching_vr

    assert matching_vr(0x00180015) == "CS"
    assert matching_vr(0x00280106) == "US"  # "US or SS": the first decides
    assert matching_vr(0x7FE00010) == "OB"
    assert matching_vr(0x00090010) == "LO"  # private creator
    assert matching_vr(0x00091001) == ""  # private: no VR until a data set gives one
    assert matching_vr(0x00101234) == ""  # not in the dictionary


def test_issue15_series_columns_for_ai_case_selection() -> None:
    columns = {MATCH_KEYS[resolve_tag(k)].column for k in ("BodyPartExamined", "StationName")}
    assert columns == {"body_part_examined", "station_name"}
    assert attribute_by_tag(resolve_tag("ManufacturerModelName")) is not None
    assert level_of_tag(resolve_tag("InstitutionName")) is Level.SERIES
