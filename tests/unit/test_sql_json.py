"""Unindexed matching SQL (issue 15): byte prefilters and bound values, both dialects."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import Match, parse_query
from dicomweb_server.index.sql import build_search
from dicomweb_server.index.sql_json import Dialect, json_condition


def _match(key: str, value: str, level: Level = Level.INSTANCE) -> Match:
    (match,) = parse_query([(key, value)], level, "site").matches
    return match


def _condition(
    match: Match, dialect: Dialect = "sqlite", fuzzy: bool = False
) -> tuple[str, list[Any]]:
    params: list[Any] = []

    def bind(value: Any) -> str:
        params.append(value)
        return "?" if dialect == "sqlite" else f"${len(params)}"

    return json_condition(dialect, "d.doc", match, fuzzy, bind), params


def _needles(params: list[Any]) -> list[bytes]:
    return [p for p in params if isinstance(p, bytes)]


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("ConvolutionKernel", "B30f", [b'"00181210"', b'"B30f"']),
        ("OperatorsName", "Doe^Jane^^", [b'"00081070"', b'"Doe^Jane']),  # PN: a prefix
        ("ImageComments", "*ab*cde?f", [b'"00204000"', b"cde"]),
        ("ImageComments", "abcd*e", [b'"00204000"', b'"abcd']),
        ("ImageComments", "a*bcde", [b'"00204000"', b'bcde"']),
        ("ImageComments", "ab*ab", [b'"00204000"', b'"ab']),  # the first piece, not the last
        ("OperatorsName", "*Jane", [b'"00081070"', b"Jane"]),  # PN: empty components may follow
        ("ImageComments", 'say "hi"\\', [b'"00204000"', b'"say \\"hi\\"\\\\"']),  # JSON-escaped
        ("00091001", "7.5", [b'"00091001"', b"7.5"]),  # unknown VR: may be a number
        ("SliceThickness", "1.50", [b'"00180050"', b"1.5"]),  # as orjson writes the float
        ("SliceThickness", "70", [b'"00180050"', b"70.0"]),
        ("Rows", "+0512", [b'"00280010"', b"512"]),
        ("ImageType", "A,B", [b'"00080008"']),
        ("AcquisitionDate", "20240101-", [b'"00080022"']),
        ("AnatomicRegionSequence.CodeValue", "T1", [b'"00082218"', b'"00080100"', b'"T1"']),
    ],
)
def test_issue15_prefilter_needles(key: str, value: str, needles: list[bytes]) -> None:
    _, params = _condition(_match(key, value))
    assert _needles(params) == needles


def test_issue15_fuzzy_person_names_have_no_value_needle() -> None:
    _, params = _condition(_match("OperatorsName", "doe"), fuzzy=True)
    assert _needles(params) == [b'"00081070"']
    assert "DOE" in params


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_issue15_values_are_bound_never_in_the_text(dialect: Dialect) -> None:
    hostile = "x' OR 1=1 --"
    text, params = _condition(_match("00091001", hostile), dialect)
    assert hostile not in text and hostile in params
    text, params = _condition(_match("OperatorsName", "O'Brien*"), dialect)
    assert "O'Brien" not in text


def test_issue15_numbers_compare_as_numbers() -> None:
    _, params = _condition(_match("Rows", "512"))
    assert 512 in params
    _, params = _condition(_match("SliceThickness", "1.50"))
    assert 1.5 in params
    text, params = _condition(_match("SliceThickness", "1.50"), "postgres")
    assert "::numeric" in text and "1.50" in params and "json_typeof" in text


def test_issue15_search_sql_orders_indexed_before_unindexed_and_names_them() -> None:
    query = parse_query(
        [("PatientAge", "045Y"), ("PatientID", "P1"), ("00091001", "x")], Level.STUDY, "site"
    )
    sql = build_search(query, "postgres")
    assert sql.unindexed == ("PatientAge", "00091001")
    where = sql.text.split(" WHERE ", 1)[1]
    assert where.index("s.patient_id") < where.index("dicomweb_json(s.attributes)")
    assert where.index("s.attributes") < where.index("FROM instances m")
    assert "m.study_instance_uid = s.study_instance_uid" in where
    plain = build_search(parse_query([("PatientID", "P1")], Level.STUDY, "site"), "sqlite")
    assert plain.unindexed == () and "?" in plain.text


def test_issue16_search_writes_limit_and_offset_so_generic_plans_know_them() -> None:
    query = parse_query([("StudyDate", "20240105"), ("limit", "1000"), ("offset", "7")],
                        Level.STUDY, "site")  # fmt: skip
    sql = build_search(replace(query, sites=("a", "b")), "postgres")
    assert sql.text.endswith(" LIMIT 1001 OFFSET 7")
    assert sql.params == ["a", "b", "20240105"]
