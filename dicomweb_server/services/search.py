"""Search (QIDO-RS): run the query, then shape each row to the requested return keys."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from dicomweb_server.domain.attributes import LEVEL_ATTRIBUTES, Level, level_of_tag, tag_hex
from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.query import MatchKind, Query
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.index.rows import Kept, SharedRow
from dicomweb_server.services.memory_cache import MemoryCache

__all__ = ["SearchAnswer", "SearchOutcome", "SearchService"]

_LEVEL_ORDER = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}
_ALWAYS = {
    Level.STUDY: ("00080056", "00080061", "00201206", "00201208"),
    Level.SERIES: ("00080056", "00201209"),
    Level.INSTANCE: ("00080056",),
}


# Attributes index/rows.py's search_row computes for every row, whatever the level.
_COMPUTED = ("00080056", "00080061", "00080062", "00201206", "00201208", "00201209")


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """Result objects (keys not yet in order: serialise with orjson.OPT_SORT_KEYS, as
    PS3.18 F.2.2 orders attributes), some already serialised in that order (a Fragment),
    plus the Warning texts the response must carry."""

    rows: list[dict[str, Any] | orjson.Fragment]
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class SearchAnswer:
    """A whole answer body (a JSON array, attributes in tag order), with the number of results
    and the Warning texts the response must carry."""

    body: bytes
    results: int
    warnings: tuple[str, ...]


class _KeptAnswer(bytes):
    """An answer's body as kept (`MemoryCache` holds bytes), with the rest of the answer."""

    results: int
    warnings: tuple[str, ...]


# Rows as answered, serialised, per level, by what they were built from (the row's key: its
# stored bytes and aggregates), the root they point into and the keys dropped: a worklist or a
# series' instance list asked again serialises nothing, and a changed study, series or
# instance is a new key, never a stale answer.
_ANSWERS_KEPT = 4096  # serialised answers kept per process and level (~1 KB each)


# A kept answer's key prefix: it goes by its study's versions, or by the index's change count
_BY_STUDY = "study "
_BY_COUNT = "index "
_ASKED_KEPT = 4096  # keys of answers asked once, remembered per process (see _worth_keeping)


def _answers_by_level() -> dict[Level, Kept[tuple[Any, ...], orjson.Fragment]]:
    return {level: Kept(_ANSWERS_KEPT) for level in Level}


@dataclass(slots=True)
class SearchService:
    """QIDO-RS over an InstanceIndex.

    Whole answers (`answer`) are kept up to `answers_memory_bytes` per process: one scoped to
    a study by the study's version, any other by the index's change count where the index
    keeps one (SQLite). A viewer listing a study's series or a series' instances again, or a
    worklist asked again, is answered after one point query. Every change to a study replaces
    its version and moves the count, and both are read before the search, so a kept answer is
    never older than what it is kept by. An answer kept by the count is kept from its second
    ask under that count on.
    """

    index: InstanceIndex
    answers_memory_bytes: int = 0
    _answers: dict[Level, Kept[tuple[Any, ...], orjson.Fragment]] = field(
        default_factory=_answers_by_level, init=False
    )
    _whole: MemoryCache = field(init=False)
    _asked: Kept[str, bool] = field(default_factory=lambda: Kept(_ASKED_KEPT), init=False)

    def __post_init__(self) -> None:
        self._whole = MemoryCache(self.answers_memory_bytes)

    async def answer(self, query: Query, root_url: str) -> SearchAnswer:
        """Run `query` (see `search`) and serialise it: PS3.18 F.2.2 orders the attributes."""
        key = await self._kept_key(query, root_url)
        if key is not None:
            kept = self._whole.get(key)
            if isinstance(kept, _KeptAnswer):
                return SearchAnswer(kept, kept.results, kept.warnings)
        outcome = await self.search(query, root_url)
        body = orjson.dumps(outcome.rows, option=orjson.OPT_SORT_KEYS)
        answer = SearchAnswer(body, len(outcome.rows), tuple(outcome.warnings))
        if key is not None and self._worth_keeping(key):  # a copy with the rest of the answer
            copy = _KeptAnswer(body)
            copy.results, copy.warnings = answer.results, answer.warnings
            self._whole.put(key, copy)
        return answer

    def _worth_keeping(self, key: str) -> bool:
        """Whether to keep the answer of `key`. One kept by study versions, always. One kept by
        the index's change count only when asked before under that same count: while studies
        are being stored every count is new, and keeping each answer would only push the
        study-scoped ones (which other studies' stores leave valid) out of the memory."""
        if not key.startswith(_BY_COUNT):
            return True
        if self._asked.get(key) is not None:
            return True
        self._asked.put(key, True)
        return False

    async def _kept_key(self, query: Query, root_url: str) -> str | None:
        """What a whole answer to `query` is kept by, read before the search; None when it is
        not kept. A query within one study goes by that study's versions, which other
        studies' changes leave alone; any other by the index's change count where it has one
        (a worklist asked again while nothing was stored or deleted)."""
        if not self._whole.limit:
            return None
        study = _one_study(query)
        if study is not None:
            sites = query.searched_sites
            versions = await self.index.study_versions(sites, study)
            if not versions:
                return None
            kind, stamp = _BY_STUDY, ",".join(str(versions.get(site, "")) for site in sites)
        else:
            count = await self.index.change_count()
            if count is None:
                return None
            kind, stamp = _BY_COUNT, str(count)
        # A digest of it: a query's text can be as long as a URL, and the keys of answers
        # asked once are remembered too.
        whole = f"{kind}{stamp}\n{root_url}\n{query!r}".encode()
        return kind + hashlib.blake2b(whole, digest_size=20).hexdigest()

    async def search(self, query: Query, root_url: str) -> SearchOutcome:
        """Run `query`; rows carry the level's required keys, includefields and RetrieveURL.

        `root_url` is the root the request came in at. At the enterprise root (`query.sites`)
        each row's URLs point into its own site's root, so a client can tell two sites'
        copies of one study apart and fetch each.
        """
        page = await self.index.search(query)
        wanted = self._default_tags(query.level) | {tag_hex(t) for t in query.include_tags}
        # A row holds its levels' stored attributes (all wanted), the computed ones and, from
        # metadata, only what was asked: dropping the unasked computed keys is all the shaping.
        drop = () if query.include_all else tuple(k for k in _COMPUTED if k not in wanted)
        needs_metadata = query.include_all or self._needs_metadata(query)
        rows: list[dict[str, Any] | orjson.Fragment] = []
        sites = page.sites or [query.site] * len(page.rows)
        answers = self._answers[query.level]
        roots: dict[str, str] = {}
        for row, site in zip(page.rows, sites, strict=True):
            row_root = roots.get(site)
            if row_root is None:
                row_root = roots[site] = f"{root_url}/sites/{site}" if query.sites else root_url
            kept = None
            if isinstance(row, SharedRow):
                if not needs_metadata:
                    kept = (row.key, row_root, drop)
                    answer = answers.get(kept)
                    if answer is not None:
                        rows.append(answer)
                        continue
                row = dict(row)  # shared between requests: shape a copy
            if needs_metadata:
                await self._add_from_metadata(row, query, site, row_root)
            for key in drop:
                row.pop(key, None)
            row["00081190"] = {
                "vr": "UR",
                "Value": [self._retrieve_url(query.level, row, row_root)],
            }
            if kept is not None:
                serialised = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
                rows.append(answers.put(kept, orjson.Fragment(serialised)))
            else:
                rows.append(row)
        warnings = list(query.warnings)
        if page.more:
            warnings.append(
                f"there are more results than the {query.limit} returned: page with offset"
            )
        return SearchOutcome(rows, warnings)

    @staticmethod
    def _default_tags(level: Level) -> set[str]:
        tags: set[str] = set(_ALWAYS[level])
        for lvl, order in _LEVEL_ORDER.items():
            if order <= _LEVEL_ORDER[level]:
                tags |= {tag_hex(a.tag) for a in LEVEL_ATTRIBUTES[lvl]}
        return tags

    @staticmethod
    def _needs_metadata(query: Query) -> bool:
        return any(level_of_tag(t) is None for t in query.include_tags)

    async def _add_from_metadata(
        self, row: dict[str, Any], query: Query, site: str, root_url: str
    ) -> None:
        """Attributes no level stores come from the instance itself, or for a study or series
        from its first instance (a representative, as PS3.18 10.6.3.3 allows), in the row's
        own site."""
        study = row["0020000D"]["Value"][0]
        if query.level is Level.INSTANCE:
            key = InstanceKey(site, study, row["0020000E"]["Value"][0], row["00080018"]["Value"][0])
            metadata = await self.index.get_metadata(key)
        else:
            series = row["0020000E"]["Value"][0] if query.level is Level.SERIES else None
            iterator = aiter(self.index.iter_metadata(StudyKey(site, study), series))
            metadata = await anext(iterator, None)
            await _close(iterator)
        if metadata is None:
            return
        full: dict[str, Any] = orjson.loads(absolute_bulk_uris(metadata, root_url))
        for tag, value in full.items():
            number = int(tag, 16)
            wanted = number in query.include_tags
            if wanted or (query.include_all and self._belongs(number, query.level, value)):
                row.setdefault(tag, value)

    @staticmethod
    def _belongs(tag: int, level: Level, value: dict[str, Any]) -> bool:
        """For includefield=all: an attribute of this level or above, not another level's."""
        if level is Level.INSTANCE:
            return True
        if "BulkDataURI" in value:
            return False  # a representative's bulk data is not the study's or series'
        owner = level_of_tag(tag)
        return owner is None or _LEVEL_ORDER[owner] <= _LEVEL_ORDER[level]

    @staticmethod
    def _retrieve_url(level: Level, row: dict[str, Any], root_url: str) -> str:
        url = f"{root_url}/studies/{row['0020000D']['Value'][0]}"
        if level is not Level.STUDY:
            url += f"/series/{row['0020000E']['Value'][0]}"
        if level is Level.INSTANCE:
            url += f"/instances/{row['00080018']['Value'][0]}"
        return url


def _one_study(query: Query) -> str | None:
    """The one study a query can only find rows of, in each site it searches (its path's, or
    a single StudyInstanceUID match), or None."""
    if query.study_instance_uid is not None:
        return query.study_instance_uid
    for match in query.matches:
        if (
            match.column == "study_instance_uid"
            and match.kind in (MatchKind.SINGLE, MatchKind.LIST)
            and len(match.values) == 1
        ):
            return match.values[0]
    return None


async def _close(iterator: AsyncIterator[bytes]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
