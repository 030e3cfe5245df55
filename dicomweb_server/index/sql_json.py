"""Unindexed matching: a key without an index column, matched in stored DICOM JSON, in SQL.

A level's `attributes` and an instance's `metadata` hold the DICOM JSON model (PS3.18 F.2):
`{"00180015": {"vr": "CS", "Value": ["CHEST"]}}`, a person name's values as objects
(`{"Alphabetic": "Doe^Jane"}`), a sequence's values as items holding the same model. A key
matches when any value (of any item, for a key inside sequences) matches by the rules of
PS3.4 C.2.2.2 for its VR, as an indexed key's column does (index/sql.py).

Parsing JSON is the cost, so each condition starts with a byte search of the raw document for
what a match must contain: the key's tags and, where the value is a literal, its JSON-escaped
text. Only documents holding them are parsed (SQLite's json_each, PostgreSQL's json through
`dicomweb_json` of migration 005). Values are always bound; tags are hex digits we format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson

from dicomweb_server.domain.attributes import tag_hex
from dicomweb_server.domain.query import (
    DECIMAL_VRS,
    INTEGER_VRS,
    Match,
    MatchKind,
    fold_for_fuzzy,
    like_pattern,
)

__all__ = ["FOLD_FUNCTION", "Dialect", "json_condition"]

Dialect = Literal["sqlite", "postgres"]
Bind = Callable[[Any], str]

# The SQLite index registers fold_for_fuzzy under this name (fuzzy person-name matching).
FOLD_FUNCTION = "dicomweb_fold"
_NUMERIC_VRS = INTEGER_VRS | DECIMAL_VRS
# Combining marks removed after NFKD, as fold_for_fuzzy removes unicodedata.combining ones.
_PG_COMBINING = "[\\u0300-\\u036f\\u1ab0-\\u1aff\\u1dc0-\\u1dff\\u20d0-\\u20ff\\ufe20-\\ufe2f]"


def json_condition(dialect: Dialect, document: str, match: Match, fuzzy: bool, bind: Bind) -> str:
    """`match` against the DICOM JSON in column `document` (say `s.attributes`)."""
    needles = _needles(match, fuzzy)
    prefilter = [_contains(dialect, document, needle, bind) for needle in needles]
    source = _values(dialect, document, match.path)
    predicate = _predicate(dialect, match, fuzzy, bind)
    return " AND ".join([*prefilter, f"EXISTS (SELECT 1 FROM {source} WHERE {predicate})"])


def _contains(dialect: Dialect, document: str, needle: bytes, bind: Bind) -> str:
    if dialect == "sqlite":
        return f"instr({document}, {bind(needle)}) > 0"
    return f"position({bind(needle)}::bytea IN {document}) > 0"


def _values(dialect: Dialect, document: str, path: tuple[int, ...]) -> str:
    """FROM items: one row per value of the key (through every item of its sequences), `v`."""
    keys = [tag_hex(tag) for tag in path]
    if dialect == "sqlite":
        current = f"CAST({document} AS TEXT)"
        parts = []
        for depth, key in enumerate(keys):
            alias = "v" if depth == len(keys) - 1 else f"q{depth}"
            parts.append(f"json_each({current}, '$.\"{key}\".Value') AS {alias}")
            current = f"{alias}.value"
        return ", ".join(parts)
    current = f"dicomweb_json({document})"
    parts = []
    for depth, key in enumerate(keys):
        alias = "v" if depth == len(keys) - 1 else f"q{depth}"
        parts.append(f"json_array_elements({current} -> '{key}' -> 'Value') AS {alias}(value)")
        current = f"{alias}.value"
    return " CROSS JOIN LATERAL ".join(parts)


def _text(dialect: Dialect, vr: str) -> str:
    """The value `v` as text: a person name's alphabetic group, a number's JSON text."""
    if dialect == "sqlite":
        name = "CASE v.type WHEN 'object' THEN json_extract(v.value, '$.Alphabetic') END"
        if vr == "PN":
            return name
        if vr:
            return "CASE v.type WHEN 'text' THEN v.value END"
        return (
            "CASE v.type WHEN 'object' THEN json_extract(v.value, '$.Alphabetic')"
            " ELSE CAST(v.value AS TEXT) END"
        )
    # COLLATE "C": bytewise like the columns (migration 001), whatever the database's locale.
    if vr == "PN":
        return "(v.value ->> 'Alphabetic') COLLATE \"C\""  # NULL unless an object
    if vr:
        return "(CASE json_typeof(v.value) WHEN 'string' THEN v.value #>> '{}' END) COLLATE \"C\""
    return (
        "(CASE json_typeof(v.value) WHEN 'object' THEN v.value ->> 'Alphabetic'"
        " ELSE v.value #>> '{}' END) COLLATE \"C\""
    )


def _fold(dialect: Dialect, text: str) -> str:
    if dialect == "sqlite":
        return f"{FOLD_FUNCTION}({text})"
    return f"upper(regexp_replace(normalize({text}, NFKD), '{_PG_COMBINING}', '', 'g'))"


def _predicate(dialect: Dialect, match: Match, fuzzy: bool, bind: Bind) -> str:
    """The condition on one value `v` (PS3.4 C.2.2.2 for the key's VR)."""
    if match.vr in _NUMERIC_VRS:  # SINGLE only (domain/query.py): compared as numbers
        if dialect == "sqlite":
            number: int | float = (
                int(match.values[0]) if match.vr in INTEGER_VRS else float(match.values[0])
            )
            return f"v.type IN ('integer', 'real') AND v.value = {bind(number)}"
        return (
            "CASE json_typeof(v.value) WHEN 'number' THEN (v.value #>> '{}')::numeric END"
            f" = CAST({bind(match.values[0])} AS text)::numeric"
        )
    text = _text(dialect, match.vr)
    values = match.values
    if match.vr == "PN":
        # Trailing empty components carry nothing (PS3.5 6.2.1), as the columns are stored.
        text = f"rtrim({text}, '^ ')"
        if fuzzy:
            text = _fold(dialect, text)
            values = tuple(fold_for_fuzzy(v) for v in values)
    if match.kind is MatchKind.SINGLE and match.vr == "PN":
        # Component-wise (PS3.4 C.2.2.2.1): "Doe" matches "Doe" and "Doe^Jane".
        name = values[0].split("=", 1)[0].rstrip("^ ")
        return (
            f"({text} = {bind(name)} OR {text} LIKE {bind(like_pattern(name) + '^%')} ESCAPE '\\')"
        )
    if match.kind is MatchKind.SINGLE:
        return f"{text} = {bind(values[0])}"
    if match.kind is MatchKind.LIST:
        return f"{text} IN ({', '.join(bind(v) for v in values)})"
    if match.kind is MatchKind.WILDCARD:
        return f"{text} LIKE {bind(like_pattern(values[0]))} ESCAPE '\\'"
    parts = []
    if match.lower is not None:
        parts.append(f"{text} >= {bind(match.lower)}")
    if match.upper is not None:
        # An upper bound matches every value that starts with it ("20200131" covers times).
        parts.append(f"{text} <= {bind(match.upper + '~')}")
    return " AND ".join(parts)


def _escaped(text: str) -> bytes:
    """`text` as it appears inside a JSON string orjson wrote (escapes are per character)."""
    return orjson.dumps(text)[1:-1]


def _needles(match: Match, fuzzy: bool) -> list[bytes]:
    """Byte strings every matching document contains: the key's tags, and a literal of the
    value when there is one (a JSON string's text, or a number's; unknown VRs may be either)."""
    needles = [b'"' + tag_hex(tag).encode() + b'"' for tag in match.path]
    if match.vr in INTEGER_VRS:
        return [*needles, str(int(match.values[0])).encode()]
    if match.vr in DECIMAL_VRS:
        # orjson wrote the stored float (DS, FL, FD) as its shortest repr: equal floats, equal text.
        return [*needles, orjson.dumps(float(match.values[0]))]
    if fuzzy and match.vr == "PN":
        return needles
    quote = b'"' if match.vr else b""
    if match.kind is MatchKind.SINGLE:
        value = match.values[0]
        if match.vr == "PN":
            name = value.split("=", 1)[0].rstrip("^ ")
            return [*needles, quote + _escaped(name)] if name else needles
        return [*needles, quote + _escaped(value) + quote]
    if match.kind is MatchKind.WILDCARD:
        pieces = match.values[0].replace("?", "*").split("*")
        longest = max(range(len(pieces)), key=lambda n: len(pieces[n]))
        if not pieces[longest]:
            return needles
        # A piece with no wildcard before it starts the value; after it, ends it (a person
        # name may end in empty components, which matching ignores: no closing quote there).
        opening = quote if longest == 0 else b""
        closing = quote if longest == len(pieces) - 1 and match.vr != "PN" else b""
        return [*needles, opening + _escaped(pieces[longest]) + closing]
    return needles
