"""QIDO-RS parameters → a `Query` (PS3.18 8.3.4, 10.6; PS3.4 C.2.2.2 matching)."""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from dicomweb_server.domain.attributes import (
    MATCH_KEYS,
    NESTED_MATCH_KEYS,
    Attribute,
    Level,
    keyword_for_tag,
    resolve_tag,
)
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.errors import InvalidQueryError

__all__ = ["Match", "MatchKind", "Query", "fold_for_fuzzy", "like_pattern", "parse_query"]


class MatchKind(StrEnum):
    """The PS3.4 C.2.2.2 matching type of one key."""

    SINGLE = "single"  # exact value
    LIST = "list"  # UID list: any of `values`
    WILDCARD = "wildcard"  # `*` and `?` in values[0]
    RANGE = "range"  # lower/upper, either may be None (open-ended)
    DATETIME_RANGE = "datetime"  # a date range and a time range read as one (PS3.4 C.2.2.2.5.1)


@dataclass(frozen=True, slots=True)
class Match:
    """One matching key: `column` names the index column (attributes.Attribute.column)."""

    tag: int
    column: str
    vr: str
    kind: MatchKind
    values: tuple[str, ...] = ()
    lower: str | None = None
    upper: str | None = None
    # DATETIME_RANGE only: the time column and its bounds, applied at the date bounds.
    time_column: str | None = None
    lower_time: str | None = None
    upper_time: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A search at one level, scoped by the path's UIDs, with paging and return keys."""

    level: Level
    site: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    matches: tuple[Match, ...]
    include_tags: frozenset[int]
    include_all: bool
    fuzzy: bool
    limit: int
    offset: int
    warnings: tuple[str, ...] = ()


_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DATETIME_RE = re.compile(
    r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$"
)
_CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_LEVEL_SCOPE: dict[Level, frozenset[Level]] = {
    Level.STUDY: frozenset({Level.STUDY}),
    Level.SERIES: frozenset({Level.STUDY, Level.SERIES}),
    Level.INSTANCE: frozenset({Level.STUDY, Level.SERIES, Level.INSTANCE}),
}


def parse_query(
    params: Iterable[tuple[str, str]],
    level: Level,
    site: str,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    *,
    default_limit: int = 1000,
    max_limit: int = 10_000,
    max_offset: int = 10_000_000,
) -> Query:
    """Turn already percent-decoded query parameters into a Query; raise a 400 on bad input."""
    matches: list[Match] = []
    include: set[int] = set()
    include_all = False
    fuzzy = False
    limit = default_limit
    offset = 0
    warnings: list[str] = []
    seen_paths: set[tuple[int, ...]] = set()
    for name, value in params:
        if name == "limit":
            limit = _non_negative(name, value)
            if limit == 0:
                raise InvalidQueryError("limit must be a positive integer")
            if limit > max_limit:
                warnings.append(f"limit {limit} reduced to the server maximum of {max_limit}")
                limit = max_limit
        elif name == "offset":
            offset = _non_negative(name, value)
            if offset > max_offset:
                raise InvalidQueryError(f"offset must be at most {max_offset}")
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise InvalidQueryError("fuzzymatching must be 'true' or 'false'")
            fuzzy = value == "true"
        elif name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    include_all = True
                elif item:
                    include.add(resolve_tag(item))
        else:
            path = tuple(resolve_tag(part) for part in name.split("."))
            tag = path[-1] if len(path) > 1 else path[0]
            if path in seen_paths:
                raise InvalidQueryError(f"matching key {name[:64]!r} is given more than once")
            seen_paths.add(path)
            include.add(path[0])
            attribute: Attribute | None
            if len(path) > 1:
                attribute = NESTED_MATCH_KEYS.get((path[0], path[1])) if len(path) == 2 else None
            else:
                attribute = MATCH_KEYS.get(tag)
            if attribute is None or attribute.level not in _LEVEL_SCOPE[level]:
                if value:
                    shown = ".".join(keyword_for_tag(t) for t in path)
                    warnings.append(f"{shown} is not supported for matching")
                continue
            if attribute.tag == 0x0020000D and study_instance_uid is not None:
                continue  # the path already scopes the study
            if attribute.tag == 0x0020000E and series_instance_uid is not None:
                continue
            match = _parse_match(attribute.tag, attribute.column or "", attribute.vr, value)
            if match is not None:
                matches.append(match)
    if fuzzy:
        warnings.append(
            "fuzzymatching: person names match case- and accent-insensitively and by"
            " component; phonetic matching is not supported"
        )
    return Query(
        level=level,
        site=site,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        matches=_combine_date_time(matches),
        include_tags=frozenset(include),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        warnings=tuple(warnings),
    )


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit() or len(value) > 12:
        raise InvalidQueryError(f"{name} must be a non-negative integer, got {value[:32]!r}")
    return int(value)


def _parse_match(tag: int, column: str, vr: str, value: str) -> Match | None:
    """One key's value → a Match (None for universal matching: an empty value)."""
    if value == "":
        return None
    shown = keyword_for_tag(tag)
    if vr == "UI":
        uids = tuple(v.strip() for v in re.split(r"[,\\]", value))
        for uid in uids:
            validate_uid(uid, shown)
        kind = MatchKind.LIST if len(uids) > 1 else MatchKind.SINGLE
        return Match(tag, column, vr, kind, uids)
    if vr in _RANGE_VRS:
        return _parse_range(tag, column, vr, value, shown)
    if vr == "IS":
        if not re.fullmatch(r"[+-]?\d{1,12}", value.strip()):
            raise InvalidQueryError(f"{shown} must be an integer, got {value[:32]!r}")
        return Match(tag, column, vr, MatchKind.SINGLE, (str(int(value)),))
    if vr in _WILDCARD_VRS and ("*" in value or "?" in value):
        if value.strip("*") == "":
            return None  # "*" alone is universal matching
        return Match(tag, column, vr, MatchKind.WILDCARD, (value,))
    if vr == "CS" and ("," in value or "\\" in value):
        return Match(tag, column, vr, MatchKind.LIST, tuple(re.split(r"[,\\]", value)))
    return Match(tag, column, vr, MatchKind.SINGLE, (value,))


def _parse_range(tag: int, column: str, vr: str, value: str, shown: str) -> Match:
    pattern = {"DA": _DATE_RE, "TM": _TIME_RE, "DT": _DATETIME_RE}[vr]
    if vr == "DA":
        value = value.replace(".", "")  # ACR-NEMA style 2020.01.31 still arrives
    if ("-" in value and vr != "DT") or (vr == "DT" and _is_dt_range(value)):
        lower, _, upper = value.partition("-")
        for part in (lower, upper):
            if part and not pattern.fullmatch(part):
                raise InvalidQueryError(f"{shown} range {value[:40]!r} is not valid {vr} values")
        if not lower and not upper:
            raise InvalidQueryError(f"{shown} range {value!r} has neither bound")
        if vr == "DA":
            _check_date(lower, shown)
            _check_date(upper, shown)
        if lower and upper and lower > upper:
            raise InvalidQueryError(f"{shown} range {value!r} ends before it starts")
        return Match(tag, column, vr, MatchKind.RANGE, (), lower or None, upper or None)
    if not pattern.fullmatch(value):
        raise InvalidQueryError(f"{shown} value {value[:40]!r} is not a valid {vr}")
    if vr == "DA":
        _check_date(value, shown)
    return Match(tag, column, vr, MatchKind.SINGLE, (value,))


def _is_dt_range(value: str) -> bool:
    # A DT may carry a "-hhmm" UTC offset; a range has a '-' that is not such an offset.
    return (
        value.startswith("-")
        or value.endswith("-")
        or (
            value.count("-") >= 1
            and any(len(side) >= 4 and side[:4].isdigit() for side in value.split("-")[1:])
        )
    )


def _check_date(value: str, shown: str) -> None:
    if not value:
        return
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError as exc:
        raise InvalidQueryError(f"{shown} value {value!r} is not a calendar date") from exc


def fold_for_fuzzy(value: str) -> str:
    """Case- and accent-insensitive form of a person name, for fuzzy matching."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern with ESCAPE '\\': % and _ match literally."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# Date and time keys read together when both are ranges (PS3.4 C.2.2.2.5.1).
_DATE_TIME_PAIRS = (
    ("study_date", "study_time"),
    ("performed_procedure_step_start_date", "performed_procedure_step_start_time"),
)


def _combine_date_time(matches: list[Match]) -> tuple[Match, ...]:
    """Merge a date range and a time range on the same level into one date-time range."""
    by_column = {m.column: m for m in matches}
    for date_column, time_column in _DATE_TIME_PAIRS:
        date, time = by_column.get(date_column), by_column.get(time_column)
        if date is None or time is None:
            continue
        if date.kind is not MatchKind.RANGE or time.kind is not MatchKind.RANGE:
            continue
        combined = Match(
            date.tag,
            date_column,
            date.vr,
            MatchKind.DATETIME_RANGE,
            (),
            date.lower,
            date.upper,
            time_column,
            time.lower if date.lower else None,
            time.upper if date.upper else None,
        )
        matches = [m for m in matches if m is not date and m is not time] + [combined]
    return tuple(matches)
