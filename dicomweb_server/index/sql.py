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
from dicomweb_server.errors import PayloadTooLargeError
from dicomweb_server.index.sql_json import Dialect, json_condition

__all__ = [
    "IN_LIST_MAX",
    "Dialect",
    "SearchSql",
    "build_search",
    "rows_by_id",
    "scan_budget_exceeded",
]

_ALIAS = {Level.STUDY: "s", Level.SERIES: "se", Level.INSTANCE: "i"}
_UID_COLUMN = {Level.STUDY: "study_instance_uid", Level.SERIES: "series_instance_uid"}
_PLACEHOLDERS: dict[Dialect, Callable[[int], str]] = {
    "sqlite": lambda n: "?",
    "postgres": lambda n: f"${n}",
}
_FOLD_COLUMNS = frozenset({"patient_name", "referring_physician_name"})
_COLUMN_ALIAS = {
    a.column: _ALIAS[a.level]
    for a in (*MATCH_KEYS.values(), *NESTED_MATCH_KEYS.values())
    if a.column
}


# What a search row is made of (see index/rows.py), per level, and the tables it comes from.
_SELECT = {
    Level.STUDY: (
        "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
        " s.number_of_instances, s.study_instance_uid, NULL, NULL, NULL, NULL, NULL, s.site"
    ),
    Level.SERIES: (
        "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
        " s.number_of_instances, s.study_instance_uid, se.attributes,"
        " se.number_of_instances, se.series_instance_uid, NULL, NULL, se.site"
    ),
    Level.INSTANCE: (
        "s.attributes, s.modalities_in_study, s.sop_classes_in_study, s.number_of_series,"
        " s.number_of_instances, s.study_instance_uid, se.attributes,"
        " se.number_of_instances, se.series_instance_uid, i.attributes, i.sop_instance_uid,"
        " i.site"
    ),
}
_SOURCE = {
    Level.STUDY: "studies s",
    Level.SERIES: (
        "series se JOIN studies s"
        " ON s.site = se.site AND s.study_instance_uid = se.study_instance_uid"
    ),
    Level.INSTANCE: (
        "instances i JOIN series se"
        " ON se.site = i.site AND se.series_instance_uid = i.series_instance_uid"
        " JOIN studies s ON s.site = i.site AND s.study_instance_uid = i.study_instance_uid"
    ),
}
# Values bound in one IN (...) list on SQLite (rows fetched by id, deleted, audited): well
# under its default limit on a statement's variables
IN_LIST_MAX = 500


@dataclass(frozen=True, slots=True)
class SearchSql:
    """A statement and its bound parameters; fetches limit + 1 rows to detect more.

    Its rows are the page's keys, (study version, row id, site), in order: a row's content is
    fetched by `rows_by_id` only when this process has not built it already (index/rows.py).
    `unindexed` names the keys matched in stored JSON: a search with any may scan, and the
    index bounds its time (qido_scan_timeout).
    """

    text: str
    params: list[Any]
    unindexed: tuple[str, ...] = ()


def rows_by_id(level: Level, dialect: Dialect, count: int) -> str:
    """The statement of `count` search rows of `level` by row id (bound as one array on
    PostgreSQL, one parameter each on SQLite), each with its study version and id last."""
    base = _ALIAS[level]
    if dialect == "postgres":
        wanted = f"{base}.id = ANY($1::bigint[])"
    else:
        wanted = f"{base}.id IN ({', '.join('?' * count)})"
    return f"SELECT {_SELECT[level]}, s.version, {base}.id FROM {_SOURCE[level]} WHERE {wanted}"


def build_search(query: Query, dialect: Dialect) -> SearchSql:
    """Build the search for `query` in `dialect`'s SQL (placeholders, JSON functions)."""
    params: list[Any] = []
    placeholder = _PLACEHOLDERS[dialect]

    def bind(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    level = query.level
    source = _SOURCE[level]
    base = _ALIAS[level]
    select = f"s.version, {base}.id, {base}.site"
    order = f"{base}.id"
    where = [_site_condition(base, query, bind)]
    # The UIDs of the path constrain the searched table itself (every table carries its
    # parents' UIDs), so its own index serves them whatever the planner knows of the joins:
    # on `se.`/`s.` alone, a PostgreSQL without fresh statistics walked all instances by id.
    if query.study_instance_uid is not None:
        where.append(f"{base}.study_instance_uid = {bind(query.study_instance_uid)}")
    if query.series_instance_uid is not None:
        alias = "i" if level is Level.INSTANCE else "se"
        where.append(f"{alias}.series_instance_uid = {bind(query.series_instance_uid)}")
    indexed = [m for m in query.matches if m.indexed]
    unindexed = [m for m in query.matches if not m.indexed]
    for match in indexed:
        where.append(_condition(match, query.fuzzy, bind))
    # Unindexed keys last: both planners evaluate the cheap indexed conditions (and the
    # index that serves them) first, and JSON is parsed only for rows those let through.
    where += _unindexed_conditions(query, unindexed, dialect, bind)
    # LIMIT and OFFSET are written, not bound (integers parse_query bounded): PostgreSQL's
    # generic plan of a prepared statement guesses a bound LIMIT as 10 % of the rows, and at
    # the enterprise root that made it walk every study by id for one day's 200 (issue 16).
    text = (
        f"SELECT {select} FROM {source} WHERE {' AND '.join(where)}"
        f" ORDER BY {order} LIMIT {int(query.limit) + 1} OFFSET {int(query.offset)}"
    )
    return SearchSql(text, params, tuple(m.shown for m in unindexed))


def scan_budget_exceeded(sql: SearchSql, seconds: float) -> PayloadTooLargeError:
    """The error of a search whose unindexed keys took longer than the scan budget.

    413: PS3.18's search status codes give it for a search the origin server cannot answer,
    which the user agent may repeat narrower ("the query was too broad"). The same request
    would fail the same way again, so it is no 503 (unavailable); it is well-formed, so no
    400. The reason says what would make it answerable.
    """
    keys = ", ".join(sql.unindexed)
    return PayloadTooLargeError(
        f"the query is too broad: {keys} {'is' if len(sql.unindexed) == 1 else 'are'} not"
        f" indexed, and finding matches took longer than {seconds:g} s"
        " (DICOMWEB_QIDO_SCAN_TIMEOUT); add an indexed key (PatientID, StudyDate,"
        " AccessionNumber, Modality, BodyPartExamined, ...) to narrow it"
    )


def _site_condition(alias: str, query: Query, bind: Callable[[Any], str]) -> str:
    """The site partition of the searched table: one site, or the enterprise root's list
    (each index leads with the site, so both planners probe it once per listed site)."""
    sites = query.searched_sites
    if len(sites) == 1:
        return f"{alias}.site = {bind(sites[0])}"
    return f"{alias}.site IN ({', '.join(bind(site) for site in sites)})"


def _unindexed_conditions(
    query: Query, matches: list[Match], dialect: Dialect, bind: Callable[[Any], str]
) -> list[str]:
    """Keys in stored JSON: a level's attributes, else the metadata of the level's instances.

    Keys no level stores are matched in instance metadata, all in one EXISTS at the study or
    series level, so that one instance of it holds every such value (a study with an instance
    by station A of manufacturer B, not one instance of each). The EXISTS is correlated by
    the searched row's own site and UID, and served by the instances' (site, study) and
    (site, series) indexes.
    """
    conditions = [
        json_condition(dialect, f"{_ALIAS[m.stored]}.attributes", m, query.fuzzy, bind)
        for m in matches
        if m.stored is not None
    ]
    in_metadata = [m for m in matches if m.stored is None]
    if not in_metadata:
        return conditions
    if query.level is Level.INSTANCE:
        return conditions + [
            json_condition(dialect, "i.metadata", m, query.fuzzy, bind) for m in in_metadata
        ]
    base, uid = _ALIAS[query.level], _UID_COLUMN[query.level]
    inner = [f"m.site = {base}.site", f"m.{uid} = {base}.{uid}"]
    inner += [json_condition(dialect, "m.metadata", m, query.fuzzy, bind) for m in in_metadata]
    return [*conditions, f"EXISTS (SELECT 1 FROM instances m WHERE {' AND '.join(inner)})"]


def _any_of(items: list[str]) -> str:
    """`(a OR b OR ...)` as a balanced tree: SQLite refuses an expression deeper than 1,000
    ("Expression tree is too large"), which a flat chain of a long list would be."""
    if len(items) <= 16:
        return "(" + " OR ".join(items) + ")"
    half = len(items) // 2
    return f"({_any_of(items[:half])} OR {_any_of(items[half:])})"


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
        return _any_of(items)
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
