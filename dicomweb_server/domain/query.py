"""QIDO-RS parameters → a `Query` (PS3.18 8.3.4, 10.6; PS3.4 C.2.2.2 matching)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dicomweb_server.domain.attributes import Level

__all__ = ["Match", "MatchKind", "Query"]


class MatchKind(StrEnum):
    """The PS3.4 C.2.2.2 matching type of one key."""

    SINGLE = "single"  # exact value
    LIST = "list"  # UID list: any of `values`
    WILDCARD = "wildcard"  # `*` and `?` in values[0]
    RANGE = "range"  # lower/upper, either may be None (open-ended)


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
