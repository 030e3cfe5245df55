from __future__ import annotations

import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import MatchKind, fold_for_fuzzy, like_pattern, parse_query
from dicomweb_server.errors import InvalidIdentifierError, InvalidQueryError


def q(*pairs: tuple[str, str], level: Level = Level.STUDY, **kwargs):  # type: ignore[no-untyped-def]
    return parse_query(list(pairs), level, "default", **kwargs)


def test_defaults() -> None:
    query = q()
    assert (query.limit, query.offset, query.fuzzy, query.matches) == (1000, 0, False, ())


def test_ohif_style_request() -> None:
    query = q(
        ("PatientName", "*abc*"),
        ("00100020", ""),
        ("includefield", "00081030,00080060"),
        ("limit", "101"),
        ("offset", "0"),
        ("fuzzymatching", "false"),
    )
    assert [m.kind for m in query.matches] == [MatchKind.WILDCARD]
    assert {0x00081030, 0x00080060, 0x00100010, 0x00100020} <= query.include_tags
    assert query.limit == 101


@pytest.mark.parametrize(
    ("value", "lower", "upper"),
    [
        ("20200101-20201231", "20200101", "20201231"),
        ("20200101-", "20200101", None),
        ("-20201231", None, "20201231"),
    ],
)
def test_date_ranges(value: str, lower: str | None, upper: str | None) -> None:
    (match,) = q(("StudyDate", value)).matches
    assert (match.kind, match.lower, match.upper) == (MatchKind.RANGE, lower, upper)


def test_time_range_and_single_date() -> None:
    (match,) = q(("StudyTime", "0800-1200")).matches
    assert (match.lower, match.upper) == ("0800", "1200")
    (match,) = q(("StudyDate", "20240229")).matches
    assert match.kind is MatchKind.SINGLE


@pytest.mark.parametrize(
    "pair",
    [
        ("StudyDate", "2024-01-01"),
        ("StudyDate", "20240230"),
        ("StudyDate", "20240201-20240101"),
        ("StudyDate", "-"),
        ("StudyTime", "25x"),
        ("limit", "-1"),
        ("limit", "0"),
        ("limit", "1e3"),
        ("offset", "abc"),
        ("fuzzymatching", "yes"),
        ("Bogus", "1"),
    ],
)
def test_invalid_values_are_400(pair: tuple[str, str]) -> None:
    with pytest.raises(InvalidQueryError):
        q(pair)


def test_integer_keys_must_be_integers() -> None:
    with pytest.raises(InvalidQueryError, match="integer"):
        q(("SeriesNumber", "one"), level=Level.SERIES)


def test_uid_list_and_invalid_uid() -> None:
    (match,) = q(("StudyInstanceUID", "1.2,1.3\\1.4")).matches
    assert match.kind is MatchKind.LIST and match.values == ("1.2", "1.3", "1.4")
    with pytest.raises(InvalidIdentifierError):
        q(("StudyInstanceUID", "1.2,abc"))


def test_wildcards_only_on_vrs_that_allow_them() -> None:
    (match,) = q(("AccessionNumber", "A*")).matches
    assert match.kind is MatchKind.WILDCARD
    assert q(("PatientName", "*")).matches == ()  # universal
    with pytest.raises(InvalidQueryError):
        q(("StudyDate", "2024*"))


def test_level_scoping_of_keys() -> None:
    assert q(("Modality", "CT"), level=Level.SERIES).matches[0].column == "modality"
    query = q(("Modality", "CT"), level=Level.STUDY)  # a series key at study level
    assert query.matches == () and "not supported for matching" in query.warnings[0]
    query = q(("StudyInstanceUID", "1.2"), level=Level.SERIES, study_instance_uid="1.2")
    assert query.matches == ()  # the path already scopes it


def test_limit_above_maximum_warns() -> None:
    query = q(("limit", "50000"), max_limit=100)
    assert query.limit == 100 and "reduced" in query.warnings[0]


def test_repeated_key_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="more than once"):
        q(("PatientID", "a"), ("00100020", "b"))


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("a_b%c*d?") == "a\\_b\\%c%d_"
    assert like_pattern("x\\y") == "x\\\\y"


def test_fold_for_fuzzy() -> None:
    assert fold_for_fuzzy("Müller^José") == "MULLER^JOSE"


def test_sequence_keys_by_keyword_or_tag_path() -> None:
    for key in ("RequestAttributesSequence.RequestedProcedureID", "00400275.00401001"):
        (match,) = q((key, "RP-7"), level=Level.SERIES).matches
        assert (match.column, match.kind, match.values) == (
            "requested_procedure_id",
            MatchKind.SINGLE,
            ("RP-7",),
        )
    query = q(("00400275.00400009", "SPS-1"), level=Level.SERIES)
    assert query.matches[0].column == "scheduled_procedure_step_id"
    assert 0x00400275 in query.include_tags


def test_unsupported_sequence_key_warns() -> None:
    query = q(("ReferencedStudySequence.ReferencedSOPInstanceUID", "1.2"))
    assert query.matches == () and "not supported for matching" in query.warnings[0]


def test_date_and_time_ranges_combine_into_one_datetime_range() -> None:
    (match,) = q(("StudyDate", "20060705-20060707"), ("StudyTime", "1000-1800")).matches
    assert match.kind is MatchKind.DATETIME_RANGE
    assert (match.lower, match.lower_time, match.upper, match.upper_time) == (
        "20060705",
        "1000",
        "20060707",
        "1800",
    )
    assert match.time_column == "study_time"


def test_single_date_with_time_range_stays_separate() -> None:
    matches = q(("StudyDate", "20060705"), ("StudyTime", "1000-1800")).matches
    assert {m.kind for m in matches} == {MatchKind.SINGLE, MatchKind.RANGE}


def test_fuzzy_matching_says_what_it_does() -> None:
    query = q(("fuzzymatching", "true"))
    assert query.fuzzy and "phonetic matching is not supported" in query.warnings[0]
