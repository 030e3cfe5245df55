"""QIDO-RS parameters → a `Query` (PS3.18 8.3.4, 10.6; PS3.4 C.2.2.2 matching)."""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from dicomweb_server.domain.attributes import (
    BINARY_VRS,
    COMPUTED_TAGS,
    MATCH_KEYS,
    MAX_MATCH_SEQUENCE_DEPTH,
    MULTI_VALUE_COLUMNS,
    NESTED_MATCH_KEYS,
    Level,
    attribute_by_tag,
    is_data_set_tag,
    keyword_for_tag,
    level_of_tag,
    matching_vr,
    resolve_tag,
)
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.errors import InvalidQueryError

__all__ = [
    "DECIMAL_VRS",
    "INTEGER_VRS",
    "Match",
    "MatchKind",
    "Query",
    "fold_for_fuzzy",
    "like_pattern",
    "parse_query",
]


class MatchKind(StrEnum):
    """The PS3.4 C.2.2.2 matching type of one key."""

    SINGLE = "single"  # exact value
    LIST = "list"  # UID list: any of `values`
    WILDCARD = "wildcard"  # `*` and `?` in values[0]
    RANGE = "range"  # lower/upper, either may be None (open-ended)
    DATETIME_RANGE = "datetime"  # a date range and a time range read as one (PS3.4 C.2.2.2.5.1)


@dataclass(frozen=True, slots=True)
class Match:
    """One matching key: `column` names the index column (attributes.Attribute.column).

    A key without a column ("") is matched unindexed, in stored DICOM JSON: `path` leads from
    a top-level attribute through sequence items to the matched one (any item, any value
    matching), and `stored` is the level whose stored attributes hold `path[0]`, or None for
    an attribute no level stores, matched in each instance's metadata. `vr` is "" when
    unknown (private data elements): values then match as text, singly or by wildcard.
    """

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
    path: tuple[int, ...] = ()
    stored: Level | None = None

    @property
    def indexed(self) -> bool:
        """Whether an index column answers this key (else it is matched in stored JSON)."""
        return bool(self.column)

    @property
    def shown(self) -> str:
        """The key as a client would write it (`Seq.Keyword`), for messages."""
        return ".".join(keyword_for_tag(t) for t in self.path or (self.tag,))


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
    # Seconds the index may spend on a search with unindexed keys before it gives up (413).
    scan_timeout: float = 5.0
    # At the enterprise root: every site searched together (the caller's readable ones);
    # empty: `site` alone (a site's root)
    sites: tuple[str, ...] = ()

    @property
    def searched_sites(self) -> tuple[str, ...]:
        """The sites whose rows may match, never empty."""
        return self.sites or (self.site,)


_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
# Numbers in DICOM JSON (PS3.18 F.2.3): matched by value, single value matching only.
INTEGER_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
DECIMAL_VRS = frozenset({"DS", "FD", "FL"})
_DECIMAL_RE = re.compile(r"[+-]?(?:\d{1,30}\.?\d{0,30}|\.\d{1,30})(?:[eE][+-]?\d{1,3})?", re.ASCII)
_DATE_RE = re.compile(r"^\d{8}$", re.ASCII)
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$", re.ASCII)
_DATETIME_RE = re.compile(
    r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$", re.ASCII
)
_CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
# Search parameters of PS3.18 Table 8.3.4-1 whose matching this server does not perform: "true"
# is answered without it, with these warnings.
_UNSUPPORTED_MATCHING = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported."
    " Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported."
    " Multiple Value Matching has not been performed.",
}
# `charset` (PS3.18 8.3.3.2): DICOM JSON is UTF-8 whatever is asked. An empty name comes from
# clients that write `?&key=value` (Weasis does).
_IGNORED_PARAMS = frozenset({"charset", ""})
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
    scan_timeout: float = 5.0,
    max_values: int = 1000,
    max_metadata_limit: int = 1000,
) -> Query:
    """Turn already percent-decoded query parameters into a Query; raise a 400 on bad input.

    `max_values` bounds the values all matching keys list together (UID and code lists
    become SQL parameters); `max_metadata_limit` the page size when rows take attributes
    from each instance's stored metadata (includefield=all, or a key no level stores).
    """
    values = 0
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
        elif name in _UNSUPPORTED_MATCHING:
            if value not in ("true", "false"):
                raise InvalidQueryError(f"{name} must be 'true' or 'false'")
            if value == "true":  # PS3.18 8.3.4.5 and 8.3.4.6 give the warning's words
                warnings.append(_UNSUPPORTED_MATCHING[name])
        elif name in _IGNORED_PARAMS:
            continue
        else:
            path = _match_path(name)
            if path is None:  # PS3.18 8.3: an unsupported parameter is ignored, with a warning
                warnings.append(f"unknown query parameter {name[:64]!r} ignored")
                continue
            if path in seen_paths:
                raise InvalidQueryError(f"matching key {name[:64]!r} is given more than once")
            seen_paths.add(path)
            include.add(path[0])
            key = _key(path, level)
            if isinstance(key, str):
                if value:
                    warnings.append(key)
                continue
            if path == (0x0020000D,) and study_instance_uid is not None:
                continue  # the path already scopes the study
            if path == (0x0020000E,) and series_instance_uid is not None:
                continue
            match = _parse_match(key.tag, key.column, key.vr, value)
            if match is None:
                continue
            if match.column in MULTI_VALUE_COLUMNS and match.kind is not MatchKind.SINGLE:
                # A wildcard must match one item's value, not the items' values joined in the
                # column: match it in the stored sequence instead.
                match = replace(match, column="", path=path, stored=_stored_level(path[0]))
            elif key.path:
                match = replace(match, path=key.path, stored=key.stored)
            values += len(match.values)
            if values > max_values:
                raise InvalidQueryError(
                    f"the matching keys list more than {max_values} values together"
                    " (DICOMWEB_MAX_QUERY_VALUES): split the query"
                )
            matches.append(match)
    if limit > max_metadata_limit and (
        include_all or any(level_of_tag(tag) is None for tag in include)
    ):
        warnings.append(
            f"limit {limit} reduced to {max_metadata_limit}, the largest page whose results"
            " carry attributes from each instance's metadata"
        )
        limit = max_metadata_limit
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
        scan_timeout=scan_timeout,
    )


def _match_path(name: str) -> tuple[int, ...] | None:
    """The tags a matching key names (`Seq.Attr` is a path), or None when a part is no keyword
    or tag: then the parameter is not one this server knows."""
    try:
        return tuple(resolve_tag(part) for part in name.split("."))
    except InvalidQueryError:
        return None


@dataclass(frozen=True, slots=True)
class _Key:
    """Where a matching key is matched: an index column, or a path into stored DICOM JSON."""

    tag: int
    vr: str
    column: str = ""
    path: tuple[int, ...] = ()
    stored: Level | None = None


_PLURAL = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
_LEVEL_NOUN = {
    Level.STUDY: "a study attribute",
    Level.SERIES: "a series attribute",
    Level.INSTANCE: "an instance attribute",
}


def _key(path: tuple[int, ...], level: Level) -> _Key | str:
    """What `path` is matched against when searching at `level`, or a warning saying why not.

    Index columns first (today's keys and two sequence keys); then attributes a level stores
    (matched in its stored attributes, if that level is this one or above it, PS3.18
    10.6.1.2); then any other attribute, in each instance's metadata (a study or series
    matches when one of its instances does). Refused with a warning: tags that are no data
    set attribute, values computed by the server, binary values, a sequence itself, and keys
    nested deeper than MAX_MATCH_SEQUENCE_DEPTH sequences.
    """
    shown = ".".join(keyword_for_tag(t) for t in path)
    unsupported = f"{shown} is not supported for matching"
    if not all(is_data_set_tag(t) for t in path):
        return f"{unsupported}: not an attribute of a stored data set"
    scope = _LEVEL_SCOPE[level]
    top, tag = path[0], path[-1]
    if len(path) == 1 and top in MATCH_KEYS:
        attribute = MATCH_KEYS[top]
        if attribute.level not in scope:
            return (
                f"{unsupported}: a {attribute.level} attribute, and this searches {_PLURAL[level]}"
            )
        return _Key(attribute.tag, attribute.vr, attribute.column or "")
    nested = NESTED_MATCH_KEYS.get((top, tag)) if len(path) == 2 else None
    if nested is not None and nested.level in scope:
        return _Key(nested.tag, nested.vr, nested.column or "")
    if len(path) - 1 > MAX_MATCH_SEQUENCE_DEPTH:
        return f"{unsupported}: sequences nested more than {MAX_MATCH_SEQUENCE_DEPTH} deep"
    for parent in path[:-1]:
        if matching_vr(parent) not in ("SQ", ""):
            raise InvalidQueryError(f"{keyword_for_tag(parent)} in {shown[:128]} is not a sequence")
    if top in COMPUTED_TAGS:
        return f"{unsupported}: computed by the server"
    stored = attribute_by_tag(top)
    if stored is not None and stored.level not in scope:
        return f"{unsupported}: {_LEVEL_NOUN[stored.level]}, and this searches {_PLURAL[level]}"
    vr = matching_vr(tag)
    if vr == "SQ":
        return f"{unsupported}: a sequence matches by its items' attributes ({shown}.Keyword=value)"
    if vr in BINARY_VRS:
        return f"{unsupported}: a binary value"
    return _Key(tag, vr, "", path, None if stored is None else stored.level)


def _stored_level(tag: int) -> Level:
    stored = attribute_by_tag(tag)
    assert stored is not None, tag  # the sequences of NESTED_MATCH_KEYS are stored
    return stored.level


def _non_negative(name: str, value: str) -> int:
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise InvalidQueryError(f"{name} must be a non-negative integer, got {value[:32]!r}")
    return int(value)


def _parse_match(tag: int, column: str, vr: str, value: str) -> Match | None:
    """One key's value → a Match (None for universal matching: an empty value, or `*` alone,
    which clients send for "any" whatever the VR, a UID or an age included)."""
    if value.strip("*") == "":
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
    if vr in INTEGER_VRS:
        if not re.fullmatch(r"[+-]?\d{1,20}", value.strip(), re.ASCII) or (
            column and len(value.strip().lstrip("+-")) > 12
        ):
            raise InvalidQueryError(f"{shown} must be an integer, got {value[:32]!r}")
        return Match(tag, column, vr, MatchKind.SINGLE, (str(int(value)),))
    if vr in DECIMAL_VRS:
        if not _DECIMAL_RE.fullmatch(value.strip()):
            raise InvalidQueryError(f"{shown} must be a decimal number, got {value[:32]!r}")
        return Match(tag, column, vr, MatchKind.SINGLE, (value.strip(),))
    if not vr and ("*" in value or "?" in value):  # unknown VR (private): text wildcards
        return Match(tag, column, vr, MatchKind.WILDCARD, (value,))
    if vr in _WILDCARD_VRS and ("*" in value or "?" in value):
        return Match(tag, column, vr, MatchKind.WILDCARD, (value,))
    if vr == "CS" and ("," in value or "\\" in value):
        items = tuple(item.strip() for item in re.split(r"[,\\]", value))
        if "" in items:
            raise InvalidQueryError(f"{shown} list {value[:40]!r} has an empty item")
        return Match(tag, column, vr, MatchKind.LIST, items)
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
        _check_values(vr, lower, shown)
        _check_values(vr, upper, shown)
        # A time range is checked once it is known not to be read with a date range: with
        # one, 230000-010000 runs from the first day's evening to the last day's morning.
        if vr != "TM" and _ends_before_it_starts(lower or None, upper or None):
            raise InvalidQueryError(f"{shown} range {value!r} ends before it starts")
        return Match(tag, column, vr, MatchKind.RANGE, (), lower or None, upper or None)
    if not pattern.fullmatch(value):
        raise InvalidQueryError(f"{shown} value {value[:40]!r} is not a valid {vr}")
    _check_values(vr, value, shown)
    return Match(tag, column, vr, MatchKind.SINGLE, (value,))


def _ends_before_it_starts(lower: str | None, upper: str | None) -> bool:
    """Whether a range's lower bound is past everything its upper bound takes in: bounds of
    different precision compare as the stored values do (`12` takes in 12:00 to 12:59:59)."""
    return lower is not None and upper is not None and lower > upper + "~"


def _check_values(vr: str, value: str, shown: str) -> None:
    """A DA, TM or DT value (already of the right shape) names a real date and time."""
    if not value:
        return
    if vr == "DA":
        _check_date(value, shown)
    elif vr == "TM":
        _check_time(value, shown, value)
    elif vr == "DT":
        _check_datetime(value, shown)


def _check_time(text: str, shown: str, value: str) -> None:
    # PS3.5 Table 6.2-1 TM: hours 00-23, minutes 00-59, seconds 00-60 (a leap second)
    for start, most in ((0, 23), (2, 59), (4, 60)):
        part = text[start : start + 2]
        if part and int(part) > most:
            raise InvalidQueryError(f"{shown} value {value!r} is not a time of day")


def _check_datetime(value: str, shown: str) -> None:
    # PS3.5 Table 6.2-1 DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX, trailing components left out
    body, offset = value, ""
    if len(value) > 4 and value[-5] in "+-":
        body, offset = value[:-5], value[-5:]
    month, day = body[4:6], body[6:8]
    if month and not 1 <= int(month) <= 12:
        raise InvalidQueryError(f"{shown} value {value!r} is not a calendar date")
    if day:
        _check_date(body[:8], shown)
    _check_time(body[8:], shown, value)
    if offset and (int(offset[1:3]) > 14 or int(offset[3:5]) > 59):
        raise InvalidQueryError(f"{shown} value {value!r} has no such UTC offset")


def _is_dt_range(value: str) -> bool:
    # A DT may carry a "-hhmm" UTC offset; a range has a '-' that is not such an offset.
    return (
        value.startswith("-")
        or value.endswith("-")
        or (
            value.count("-") >= 1
            and any(side[:4].isascii() and side[:4].isdigit() for side in value.split("-")[1:])
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


_DATE_KEYWORDS = {
    "study_date": "StudyDate",
    "performed_procedure_step_start_date": "PerformedProcedureStepStartDate",
}


def _combine_date_time(matches: list[Match]) -> tuple[Match, ...]:
    """Merge a date range and a time range on the same level into one date-time range; a
    time range left on its own must not end before it starts."""
    matches = _merge_date_time(matches)
    for match in matches:
        if match.kind is MatchKind.RANGE and match.vr == "TM":
            _check_time_range(match)
    return tuple(matches)


def _check_time_range(match: Match) -> None:
    if not _ends_before_it_starts(match.lower, match.upper):
        return
    shown = keyword_for_tag(match.tag)
    dates = {time: date for date, time in _DATE_TIME_PAIRS}.get(match.column)
    across = f": to cross midnight, give a {_DATE_KEYWORDS[dates]} range with it" if dates else ""
    raise InvalidQueryError(
        f"{shown} range '{match.lower}-{match.upper}' ends before it starts{across}"
    )


def _merge_date_time(matches: list[Match]) -> list[Match]:
    by_column = {m.column: m for m in matches if m.indexed}
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
    return matches
