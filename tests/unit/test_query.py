from __future__ import annotations

import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import Match, MatchKind, fold_for_fuzzy, like_pattern, parse_query
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
        ("emptyvaluematching", "yes"),
        ("multiplevaluematching", "1"),
    ],
)
def test_invalid_values_are_400(pair: tuple[str, str]) -> None:
    with pytest.raises(InvalidQueryError):
        q(pair)


@pytest.mark.parametrize(
    "name", ["Bogus", "returnempty", "orderby", "ReferencedStudySequence.Nonsense"]
)
def test_unknown_parameters_are_ignored_with_a_warning_ps3_18_8_3(name: str) -> None:
    query = q((name, "1"), ("PatientID", "P1"))
    assert [m.column for m in query.matches] == ["patient_id"]
    assert query.warnings == (f"unknown query parameter {name!r} ignored",)


def test_empty_names_and_charset_are_ignored_silently() -> None:
    query = q(("", ""), ("charset", "utf-8"), ("PatientID", "P1"))
    assert len(query.matches) == 1 and query.warnings == ()


@pytest.mark.parametrize("name", ["emptyvaluematching", "multiplevaluematching"])
def test_unsupported_matching_options_warn_only_when_asked_ps3_18_8_3_4_5(name: str) -> None:
    assert q((name, "false")).warnings == ()
    (warning,) = q((name, "true")).warnings
    assert warning.startswith(f"The {name} parameter is not supported.")
    assert warning.endswith("has not been performed.")


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
    key = "ReferencedStudySequence.ReferencedSeriesSequence.ReferencedImageSequence.CodeValue"
    query = q((key, "1.2"))
    assert query.matches == () and "not supported for matching" in query.warnings[0]
    assert "nested more than 2 deep" in query.warnings[0]


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


# --- issue 15: any attribute ------------------------------------------------------------------


def _one(pair: tuple[str, str], level: Level = Level.STUDY) -> Match:
    query = q(pair, level=level)
    assert query.warnings == (), query.warnings
    (match,) = query.matches
    return match


@pytest.mark.parametrize(
    ("key", "column"),
    [
        ("BodyPartExamined", "body_part_examined"),
        ("ProtocolName", "protocol_name"),
        ("Manufacturer", "manufacturer"),
        ("ManufacturerModelName", "manufacturer_model_name"),
        ("StationName", "station_name"),
        ("InstitutionName", "institution_name"),
        ("SeriesDescription", "series_description"),
    ],
)
def test_issue15_series_keys_have_index_columns(key: str, column: str) -> None:
    match = _one((key, "X"), Level.SERIES)
    assert (match.column, match.indexed, match.path) == (column, True, ())
    assert _one((key, "X"), Level.INSTANCE).column == column  # and at the level below


def test_issue15_stored_attribute_without_column_matches_in_its_level() -> None:
    match = _one(("PatientAge", "045Y"))
    assert (match.indexed, match.path, match.stored, match.vr) == (
        False,
        (0x00101010,),
        Level.STUDY,
        "AS",
    )
    assert _one(("SeriesDate", "20240101"), Level.INSTANCE).stored is Level.SERIES


def test_issue15_attribute_no_level_stores_matches_in_metadata() -> None:
    for level in Level:
        match = _one(("SliceThickness", "1.5"), level)
        assert (match.stored, match.path, match.kind) == (None, (0x00180050,), MatchKind.SINGLE)
    assert 0x00180050 in q(("SliceThickness", "1.5")).include_tags


def test_issue15_private_tags_match_as_text_or_wildcard() -> None:
    match = _one(("00091001", "cohort-A"))
    assert (match.vr, match.kind, match.stored, match.shown) == (
        "",
        MatchKind.SINGLE,
        None,
        "00091001",
    )
    assert _one(("00091001", "cohort-*")).kind is MatchKind.WILDCARD
    assert q(("00091001", "*")).matches == ()  # universal
    creator = _one(("00090010", "ACME 1.0"))
    assert (creator.vr, creator.kind) == ("LO", MatchKind.SINGLE)


@pytest.mark.parametrize(
    ("pair", "kind", "values"),
    [
        (("PatientWeight", " 70.50 "), MatchKind.SINGLE, ("70.50",)),  # DS
        (("PatientWeight", "-1e3"), MatchKind.SINGLE, ("-1e3",)),
        (("ExposureTime", "+12"), MatchKind.SINGLE, ("12",)),  # IS
        (("Rows", "512"), MatchKind.SINGLE, ("512",)),  # US, stored at instance level
        (("ReferencedFrameNumber", "3"), MatchKind.SINGLE, ("3",)),  # IS, 1-n
        (("OperatorsName", "Doe^J*"), MatchKind.WILDCARD, ("Doe^J*",)),  # PN
        (("ImageComments", "a?c"), MatchKind.WILDCARD, ("a?c",)),  # LT
        (("PatientAge", "04*"), MatchKind.SINGLE, ("04*",)),  # AS: no wildcards
        (("ImageType", "AXIAL,LOCALIZER"), MatchKind.LIST, ("AXIAL", "LOCALIZER")),  # CS
        (("FrameOfReferenceUID", "1.2\\1.3"), MatchKind.LIST, ("1.2", "1.3")),  # UI
        (("AcquisitionDate", "20240101-"), MatchKind.RANGE, ()),
        (("AcquisitionTime", "-1200"), MatchKind.RANGE, ()),
        (("AcquisitionDateTime", "20240101120000-20240102"), MatchKind.RANGE, ()),
    ],
)
def test_issue15_matching_rules_follow_the_vr(
    pair: tuple[str, str], kind: MatchKind, values: tuple[str, ...]
) -> None:
    match = _one(pair, Level.INSTANCE)
    assert (match.kind, match.values, match.indexed) == (kind, values, False)


@pytest.mark.parametrize(
    "pair",
    [
        ("PatientWeight", "heavy"),
        ("PatientWeight", "7*"),  # no wildcards on numbers
        ("Rows", "1.5"),
        ("ExposureTime", "123456789012345678901"),
        ("AcquisitionDate", "2024*"),
        ("AcquisitionDate", "20240231"),
        ("FrameOfReferenceUID", "1.2.x"),
    ],
)
def test_issue15_malformed_values_of_unindexed_keys_are_400(pair: tuple[str, str]) -> None:
    with pytest.raises((InvalidQueryError, InvalidIdentifierError)):
        q(pair, level=Level.INSTANCE)


def test_issue15_integer_columns_keep_their_twelve_digit_bound() -> None:
    assert _one(("ExposureTime", "1234567890123"), Level.INSTANCE).values == ("1234567890123",)
    with pytest.raises(InvalidQueryError, match="integer"):
        q(("InstanceNumber", "1234567890123"), level=Level.INSTANCE)


def test_issue15_sequence_keys_through_any_sequence() -> None:
    match = _one(("ProcedureCodeSequence.CodeValue", "P-1"))
    assert (match.path, match.stored, match.vr) == ((0x00081032, 0x00080100), Level.STUDY, "SH")
    match = _one(("00082218.00080100", "T-D3000"), Level.SERIES)  # AnatomicRegionSequence
    assert (match.stored, match.shown) == (None, "AnatomicRegionSequence.CodeValue")
    key = "RequestAttributesSequence.ScheduledProtocolCodeSequence.CodeValue"
    match = _one((key, "PC-1"), Level.SERIES)
    assert (len(match.path), match.stored) == (3, Level.SERIES)
    match = _one(("00091010.00100020", "X"), Level.INSTANCE)  # through a private sequence
    assert match.path == (0x00091010, 0x00100020)
    assert _one(("00091010.00091001", "x*")).vr == ""


def test_issue15_a_key_through_a_non_sequence_is_400() -> None:
    with pytest.raises(InvalidQueryError, match=r"PatientName in PatientName\.PatientID"):
        q(("PatientName.PatientID", "x"))


@pytest.mark.parametrize(
    ("key", "level", "why"),
    [
        ("00100000", Level.STUDY, "not an attribute"),  # group length
        ("00020010", Level.STUDY, "not an attribute"),  # file meta
        ("00000900", Level.STUDY, "not an attribute"),  # command
        ("FFFEE000", Level.STUDY, "not an attribute"),  # item
        ("00090005", Level.STUDY, "not an attribute"),  # reserved private element
        ("ProcedureCodeSequence.00100000", Level.STUDY, "not an attribute"),
        ("NumberOfStudyRelatedInstances", Level.STUDY, "computed"),
        ("SOPClassesInStudy", Level.STUDY, "computed"),
        ("PixelData", Level.INSTANCE, "binary"),
        ("RedPaletteColorLookupTableData", Level.INSTANCE, "binary"),
        ("ProcedureCodeSequence", Level.STUDY, "items"),
        ("Manufacturer", Level.STUDY, "a series attribute, and this searches studies"),
        ("ImageType", Level.SERIES, "an instance attribute, and this searches series"),
        ("RequestAttributesSequence.RequestedProcedureID", Level.STUDY, "a series attribute"),
    ],
)
def test_issue15_what_is_not_matched_still_warns(key: str, level: Level, why: str) -> None:
    query = q((key, "1"), level=level)
    assert query.matches == ()
    (warning,) = query.warnings
    assert "not supported for matching" in warning and why in warning
    assert q((key, ""), level=level).warnings == ()  # universal matching says nothing


def test_issue15_unindexed_date_and_time_do_not_merge_into_a_datetime_range() -> None:
    matches = q(
        ("SeriesDate", "20240101-20240102"), ("SeriesTime", "1000-1200"), level=Level.SERIES
    )
    assert {m.kind for m in matches.matches} == {MatchKind.RANGE}


def test_issue15_scan_timeout_travels_with_the_query() -> None:
    assert q().scan_timeout == 5.0
    assert q(scan_timeout=0.25).scan_timeout == 0.25


def test_issue15_wildcard_on_a_joined_sequence_column_matches_in_the_stored_items() -> None:
    (match,) = q(("00400275.00401001", "RP-2*"), level=Level.SERIES).matches
    assert (match.indexed, match.path, match.stored) == (
        False,
        (0x00400275, 0x00401001),
        Level.SERIES,
    )
    (match,) = q(("00400275.00401001", "RP-2"), level=Level.SERIES).matches
    assert match.column == "requested_procedure_id"


def test_issue15_a_uid_inside_a_sequence_is_matched_even_under_a_study_path() -> None:
    query = q(("ReferencedStudySequence.StudyInstanceUID", "1.2"), study_instance_uid="1.3")
    (match,) = query.matches
    assert match.path == (0x00081110, 0x0020000D)


def test_path_scoped_uids_offset_bound_and_includefield_all() -> None:
    query = q(
        ("SeriesInstanceUID", "1.2"),
        ("includefield", "all"),
        level=Level.INSTANCE,
        series_instance_uid="1.2",
    )
    assert query.matches == () and query.include_all
    with pytest.raises(InvalidQueryError, match="offset"):
        q(("offset", "11"), max_offset=10)


def test_ps3_4_c_2_2_2_5_1_a_date_and_time_range_may_cross_midnight() -> None:
    """23:00 on the first day to 01:00 on the last: the time bounds go with the date bounds,
    so the time range alone ends "before" it starts and that is no error."""
    query = q(("StudyDate", "20240301-20240302"), ("StudyTime", "230000-010000"))
    (match,) = query.matches
    assert match.kind is MatchKind.DATETIME_RANGE
    assert (match.lower, match.lower_time, match.upper, match.upper_time) == (
        "20240301",
        "230000",
        "20240302",
        "010000",
    )


def test_a_time_range_on_its_own_must_not_end_before_it_starts() -> None:
    with pytest.raises(InvalidQueryError, match="give a StudyDate range with it"):
        q(("StudyTime", "230000-010000"))
    with pytest.raises(InvalidQueryError, match="give a StudyDate range with it"):
        q(("StudyDate", "20240301"), ("StudyTime", "2300-0100"))
    with pytest.raises(InvalidQueryError, match="ends before it starts"):  # never merged
        q(("SeriesDate", "20240301-20240302"), ("SeriesTime", "2300-0100"), level=Level.SERIES)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyTime", "1200-12"),  # 12:00 to 12:59:59.999999
        ("StudyTime", "12-120000"),
        ("StudyTime", "0930-09"),
        ("AcquisitionDateTime", "20240301-2024"),  # 1 March to the end of 2024
        ("AcquisitionDateTime", "2024-20241231235959"),
        ("StudyDate", "20240301-20240301"),
    ],
)
def test_range_bounds_of_different_precision_are_valid(key: str, value: str) -> None:
    (match,) = q((key, value), level=Level.INSTANCE).matches
    assert match.kind is MatchKind.RANGE


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyTime", "25"),
        ("StudyTime", "2599"),
        ("StudyTime", "1261"),
        ("StudyTime", "120061"),
        ("StudyTime", "240000"),
        ("StudyTime", "0800-2400"),
        ("StudyTime", "1300-12"),  # after all of 12:xx
        ("AcquisitionDateTime", "20241301-"),
        ("AcquisitionDateTime", "202400"),
        ("AcquisitionDateTime", "20240230"),
        ("AcquisitionDateTime", "2024030125"),
        ("AcquisitionDateTime", "20240301120000+1500"),
        ("AcquisitionDateTime", "20240301120000-0070"),
        ("AcquisitionDateTime", "2025-2024"),
    ],
)
def test_ps3_5_times_and_datetimes_that_name_no_real_time_are_400(key: str, value: str) -> None:
    with pytest.raises(InvalidQueryError):
        q((key, value), level=Level.INSTANCE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyTime", "235960"),  # a leap second
        ("StudyTime", "000000.000001"),
        ("AcquisitionDateTime", "20240229"),
        ("AcquisitionDateTime", "20240301120000.5+0100"),
    ],
)
def test_ps3_5_real_times_and_datetimes_are_taken(key: str, value: str) -> None:
    (match,) = q((key, value), level=Level.INSTANCE).matches
    assert match.values == (value,)


@pytest.mark.parametrize(
    "key", ["PatientAge", "StudyInstanceUID", "StudyDate", "PatientWeight", "PatientName"]
)
def test_a_star_alone_is_universal_matching_whatever_the_vr(key: str) -> None:
    """STATEMENT: universal matching is an empty value or `*`, for every key."""
    assert q((key, "*"), level=Level.INSTANCE).matches == ()
    assert q((key, "**"), level=Level.INSTANCE).matches == ()
