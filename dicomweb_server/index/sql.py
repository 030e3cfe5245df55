"""QIDO `Query` → SQL shared by the SQLite and PostgreSQL indexes (values always bound)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomweb_server.domain.attributes import (
    MATCH_KEYS,
    MULTI_VALUE_COLUMNS,
    NESTED_MATCH_KEYS,
    Level,
)
from dicomweb_server.domain.query import Match, MatchKind, Query, fold_for_fuzzy, like_pattern

__all__ = ["SearchSql", "build_search"]

_ALIAS = {Level.STUDY: "s", Level.SERIES: "se", Level.INSTANCE: "i"}
_FOLD_COLUMNS = frozenset({"patient_name", "referring_physician_name"})
_COLUMN_ALIAS = {
    a.column: _ALIAS[a.level]
    for a in (*MATCH_KEYS.values(), *NESTED_MATCH_KEYS.values())
    if a.column
}


@dataclass(frozen=True, slots=True)
class SearchSql:
    """A statement and its bound parameters; fetches limit + 1 rows to detect more."""

    text: str
    params: list[Any]


def build_search(query: Query, placeholder: Callable[[int], str]) -> SearchSql:
    """Build the search for `query`; `placeholder(n)` renders the n-th (1-based) parameter."""
    params: list[Any] = []

    def bind(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    level = query.level
    if level is Level.STUDY:
        select = (
            "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
            " s.number_of_instances, s.study_instance_uid, NULL, NULL, NULL, NULL, NULL"
        )
        source = "studies s"
        order = "s.id"
    elif level is Level.SERIES:
        select = (
            "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
            " s.number_of_instances, s.study_instance_uid, se.attributes,"
            " se.number_of_instances, se.series_instance_uid, NULL, NULL"
        )
        source = (
            "series se JOIN studies s"
            " ON s.site = se.site AND s.study_instance_uid = se.study_instance_uid"
        )
        order = "se.id"
    else:
        select = (
            "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
            " s.number_of_instances, s.study_instance_uid, se.attributes,"
            " se.number_of_instances, se.series_instance_uid, i.attributes, i.sop_instance_uid"
        )
        source = (
            "instances i JOIN series se"
            " ON se.site = i.site AND se.series_instance_uid = i.series_instance_uid"
            " JOIN studies s ON s.site = i.site AND s.study_instance_uid = i.study_instance_uid"
        )
        order = "i.id"
    base = _ALIAS[level]
    where = [f"{base}.site = {bind(query.site)}"]
    # The UIDs of the path constrain the searched table itself (every table carries its
    # parents' UIDs), so its own index serves them whatever the planner knows of the joins:
    # on `se.`/`s.` alone, a PostgreSQL without fresh statistics walked all instances by id.
    if query.study_instance_uid is not None:
        where.append(f"{base}.study_instance_uid = {bind(query.study_instance_uid)}")
    if query.series_instance_uid is not None:
        alias = "i" if level is Level.INSTANCE else "se"
        where.append(f"{alias}.series_instance_uid = {bind(query.series_instance_uid)}")
    for match in query.matches:
        where.append(_condition(match, query.fuzzy, bind))
    text = (
        f"SELECT {select} FROM {source} WHERE {' AND '.join(where)}"
        f" ORDER BY {order} LIMIT {bind(query.limit + 1)} OFFSET {bind(query.offset)}"
    )
    return SearchSql(text, params)


def _condition(match: Match, fuzzy: bool, bind: Callable[[Any], str]) -> str:
    if match.column == "modalities_in_study" and match.kind in (MatchKind.SINGLE, MatchKind.LIST):
        # The study row keeps its series' modalities backslash-joined (the returned value):
        # matching any item there filters the rows an index already chose, with no subquery
        # for a planner to get wrong (PostgreSQL without fresh statistics took 250 ms).
        items = [
            f"('\\' || s.modalities_in_study || '\\')"
            f" LIKE {bind('%' + chr(92) + _bang_escape(v) + chr(92) + '%')} ESCAPE '!'"
            for v in match.values
        ]
        return "(" + " OR ".join(items) + ")"
    if match.column == "modalities_in_study":
        inner = _value_condition("x.modality", match, bind)
        return (
            "EXISTS (SELECT 1 FROM series x WHERE x.site = s.site"
            f" AND x.study_instance_uid = s.study_instance_uid AND {inner})"
        )
    alias = _COLUMN_ALIAS[match.column]
    column = f"{alias}.{match.column}"
    if match.kind is MatchKind.DATETIME_RANGE:
        return _datetime_range(column, f"{alias}.{match.time_column}", match, bind)
    if match.column in MULTI_VALUE_COLUMNS and match.kind is MatchKind.SINGLE:
        # Any item's value equals the key (PS3.4 C.2.2.2.6); the values are backslash-joined.
        pattern = "%\\" + _bang_escape(match.values[0]) + "\\%"
        return f"('\\' || {column} || '\\') LIKE {bind(pattern)} ESCAPE '!'"
    if (
        fuzzy
        and match.column in _FOLD_COLUMNS
        and match.kind in (MatchKind.SINGLE, MatchKind.WILDCARD)
    ):
        folded = Match(
            match.tag,
            match.column,
            match.vr,
            match.kind,
            tuple(fold_for_fuzzy(v) for v in match.values),
        )
        return _value_condition(f"{column}_fold", folded, bind)
    return _value_condition(column, match, bind)


def _bang_escape(value: str) -> str:
    """Escape LIKE wildcards with '!' (for patterns that hold a literal backslash)."""
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _datetime_range(
    date_column: str, time_column: str, match: Match, bind: Callable[[Any], str]
) -> str:
    """A date range and a time range read as one date-time range (PS3.4 C.2.2.2.5.1).

    Each value is bound at each use: SQLite's `?` placeholders are positional.
    """
    parts = []
    if match.lower is not None:
        if match.lower_time is None:
            parts.append(f"{date_column} >= {bind(match.lower)}")
        else:
            parts.append(
                f"({date_column} > {bind(match.lower)} OR ({date_column} = {bind(match.lower)}"
                f" AND {time_column} >= {bind(match.lower_time)}))"
            )
    if match.upper is not None:
        if match.upper_time is None:
            parts.append(f"{date_column} <= {bind(match.upper)}")
        else:
            parts.append(
                f"({date_column} < {bind(match.upper)} OR ({date_column} = {bind(match.upper)}"
                f" AND {time_column} <= {bind(match.upper_time + '~')}))"
            )
    return "(" + " AND ".join(parts) + ")"


def _value_condition(column: str, match: Match, bind: Callable[[Any], str]) -> str:
    if match.kind is MatchKind.SINGLE and match.vr == "PN":
        # Component-wise (PS3.4 C.2.2.2.1): "Doe" matches "Doe" and "Doe^Jane". Only the first
        # component group is compared, and trailing empty components carry nothing.
        name = match.values[0].split("=", 1)[0].rstrip("^ ")
        prefix = like_pattern(name) + "^%"
        # The leading plain prefix LIKE is implied by the OR but, unlike it, lets both
        # databases search the name index by range instead of scanning every row.
        return (
            f"({column} LIKE {bind(like_pattern(name) + '%')} ESCAPE '\\'"
            f" AND ({column} = {bind(name)} OR {column} LIKE {bind(prefix)} ESCAPE '\\'))"
        )
    if match.kind is MatchKind.SINGLE:
        value: Any = int(match.values[0]) if match.vr == "IS" else match.values[0]
        return f"{column} = {bind(value)}"
    if match.kind is MatchKind.LIST:
        return f"{column} IN ({', '.join(bind(v) for v in match.values)})"
    if match.kind is MatchKind.WILDCARD:
        return f"{column} LIKE {bind(like_pattern(match.values[0]))} ESCAPE '\\'"
    parts = []
    if match.lower is not None:
        parts.append(f"{column} >= {bind(match.lower)}")
    if match.upper is not None:
        # An upper bound matches every value that starts with it ("20200131" covers times).
        parts.append(f"{column} <= {bind(match.upper + '~')}")
    return "(" + " AND ".join(parts) + ")"
