"""domain/rejection.py and domain/lifecycle.py (issue 18): pure rules, fully covered."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from dicomweb_server.domain.blob_keys import derived_prefix
from dicomweb_server.domain.lifecycle import (
    Hold,
    HoldConflictError,
    RetentionConflictError,
    StudyFacts,
    check_deletable,
    is_expired,
    study_day,
    years_before,
)
from dicomweb_server.domain.rejection import (
    KEY_OBJECT_SELECTION_DOCUMENT,
    RejectedReference,
    RejectionCode,
    parse_rejection_code,
    rejection_note,
)
from dicomweb_server.errors import BadRequestError

NOW = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()


def _value(vr: str, *values: object) -> dict[str, object]:
    return {"vr": vr, "Value": list(values)}


def _note(
    code: str = "113001", scheme: str = "DCM", sop_class: str = KEY_OBJECT_SELECTION_DOCUMENT
):
    ref = lambda sop: {"00081150": _value("UI", "1.2"), "00081155": _value("UI", sop)}  # noqa: E731
    return {
        "00080016": _value("UI", sop_class),
        "00080018": _value("UI", "9.9"),
        "0040A043": _value(
            "SQ", {"00080100": _value("SH", code), "00080102": _value("SH", scheme)}
        ),
        "0040A375": _value(
            "SQ",
            {
                "0020000D": _value("UI", "1.1"),
                "00081115": _value(
                    "SQ",
                    {
                        "0020000E": _value("UI", "2.1"),
                        "00081199": _value("SQ", ref("3.1"), ref("3.2"), ref("3.1")),
                    },
                    {
                        "0020000E": _value("UI", "2.2"),
                        "00081199": _value("SQ", ref("9.9"), ref("bad uid")),
                    },
                ),
            },
            {
                "0020000D": _value("UI", "1.2"),
                "00081115": _value(
                    "SQ", {"0020000E": _value("UI", "2.3"), "00081199": _value("SQ", ref("3.3"))}
                ),
            },
        ),
    }


def test_issue18_rejection_note_lists_each_named_instance_once() -> None:
    note = rejection_note(_note())
    assert note is not None
    assert str(note.code) == "113001^DCM" and note.code.meaning == "Rejected for Quality Reasons"
    assert note.references == (
        RejectedReference("1.1", "2.1", "3.1"),
        RejectedReference("1.1", "2.1", "3.2"),
        RejectedReference("1.2", "2.3", "3.3"),
    )  # the note itself and a malformed UID are left out
    assert note.studies() == ["1.1", "1.2"]


def test_issue18_only_a_key_object_with_a_rejection_title_is_a_note() -> None:
    assert rejection_note(_note(sop_class="1.2.840.10008.5.1.4.1.1.2")) is None
    assert rejection_note(_note(code="113000")) is None  # "Of Interest"
    assert rejection_note(_note(scheme="99X")) is None
    untitled = _note()
    del untitled["0040A043"]
    assert rejection_note(untitled) is None
    odd = _note()
    odd["00080016"] = {"vr": "UI", "Value": [7]}
    assert rejection_note(odd) is None
    empty = _note()
    empty["0040A375"] = {"vr": "SQ"}
    note = rejection_note(empty)
    assert note is not None and note.references == ()


def test_issue18_rejection_codes_from_the_reject_resource() -> None:
    assert parse_rejection_code("113039^DCM") == RejectionCode("113039", "DCM")
    for text in ("113001", "113001^99X", "1^DCM", ""):
        with pytest.raises(BadRequestError, match="113001\\^DCM"):
            parse_rejection_code(text)


def _facts(study_date: str | None = "20200101", received: float = NOW) -> StudyFacts:
    return StudyFacts("a", "1.2.3", "PAT", "ISS", study_date, received)


def test_issue18_a_study_ages_from_its_date_else_from_when_it_was_received() -> None:
    assert study_day(_facts("20200102")) == date(2020, 1, 2)
    received = datetime(2021, 5, 6, tzinfo=UTC).timestamp()
    for odd in (None, "", "2020", "20201345"):
        assert study_day(_facts(odd, received)) == date(2021, 5, 6)
    assert years_before(NOW, 4) == date(2020, 3, 1)
    leap = datetime(2024, 2, 29, tzinfo=UTC).timestamp()
    assert years_before(leap, 1) == date(2023, 2, 28)
    assert is_expired(_facts("20190101"), 5, NOW)
    assert not is_expired(_facts("20240101"), 1, NOW)


def test_issue18_holds_and_minimum_retention_refuse_with_their_reason() -> None:
    check_deletable(_facts(), [], now=NOW)
    check_deletable(_facts("20100101"), [], now=NOW, min_retain_years=10)
    with pytest.raises(
        RetentionConflictError, match="younger than site a's minimum retention of 10 years"
    ):
        check_deletable(_facts("20200101"), [], now=NOW, min_retain_years=10)
    study = Hold(7, "case 1", NOW, "op", study_instance_uid="1.2.3")
    with pytest.raises(
        HoldConflictError, match=r"legal hold 7 \(study 1.2.3 in every site\): case 1"
    ):
        check_deletable(_facts(), [study], now=NOW)
    patient = Hold(8, "suit", NOW, "op", site="a", patient_id="PAT", issuer_of_patient_id="ISS")
    with pytest.raises(HoldConflictError, match=r"patient PAT \(issuer ISS\) in site a"):
        check_deletable(_facts(), [patient], now=NOW)
    others = [
        Hold(1, "x", NOW, "op", site="b", patient_id="PAT"),
        Hold(2, "x", NOW, "op", study_instance_uid="9.9"),
        Hold(3, "x", NOW, "op", patient_id="OTHER"),
        Hold(4, "x", NOW, "op", patient_id="PAT", issuer_of_patient_id="ELSE"),
        Hold(5, "x", NOW, "op"),
    ]
    check_deletable(_facts(), others, now=NOW)
    assert Hold(6, "x", NOW, "op", patient_id="PAT").covers(_facts())
    assert Hold(6, "x", NOW, "op", patient_id="PAT").subject == "patient PAT in every site"


def test_issue18_derived_data_prefixes() -> None:
    assert derived_prefix("a", "1.2") == "a/cache/1.2/"
    assert derived_prefix("a", "1.2", "3.4", "5.6") == "a/cache/1.2/3.4/5.6/"
