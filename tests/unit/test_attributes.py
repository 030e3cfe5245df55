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
