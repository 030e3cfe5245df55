"""Index rows → DICOM JSON objects, shared by the SQLite and PostgreSQL indexes."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import orjson

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.domain.records import PixelLayout, pixel_from_json
from dicomweb_server.index.base import StoredInstance

__all__ = [
    "ID_COLUMN",
    "INSTANCE_COLUMNS",
    "VERSION_COLUMN",
    "Kept",
    "SharedRow",
    "found_rows",
    "index_token",
    "merge_attributes",
    "search_row",
    "search_rows",
    "stored_instance",
]

# The instance columns both indexes select for a StoredInstance, in this order.
INSTANCE_COLUMNS = (
    "site",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "blob_key",
    "size",
    "digest",
    "number_of_frames",
    "pixel",
)


_LARGE_LAYOUT = 64 << 10  # pixel layouts of this many JSON bytes or more are remembered
_LAYOUTS_KEPT = 64  # large layouts remembered per process (by object key: never stale)
_layouts: OrderedDict[str, PixelLayout | None] = OrderedDict()


def stored_instance(row: tuple[Any, ...] | Any) -> StoredInstance:
    """A row of INSTANCE_COLUMNS (a tuple or an asyncpg Record) as a StoredInstance."""
    return StoredInstance(
        key=InstanceKey(row[0], row[1], row[2], row[3]),
        sop_class_uid=row[4],
        transfer_syntax_uid=row[5],
        blob_key=row[6],
        size=int(row[7]),
        digest=row[8],
        number_of_frames=int(row[9]),
        pixel=_pixel_layout(row[6], row[10]),
    )


def _pixel_layout(blob_key: str, data: bytes | str | None) -> PixelLayout | None:
    """The layout of the stored object `blob_key`; large ones (objects of many thousand
    frames) are parsed once per process, since each frame request reads the row again."""
    if data is None or len(data) < _LARGE_LAYOUT:
        return pixel_from_json(data)
    if blob_key in _layouts:
        _layouts.move_to_end(blob_key)
        return _layouts[blob_key]
    layout = _layouts[blob_key] = pixel_from_json(data)
    while len(_layouts) > _LAYOUTS_KEPT:
        _layouts.popitem(last=False)
    return layout


def merge_attributes(stored: bytes | str, new: dict[str, Any]) -> bytes:
    """Keep what the first instance stored; fill attributes later instances add."""
    current: dict[str, Any] = orjson.loads(stored)
    added = {k: v for k, v in new.items() if k not in current}
    if not added:
        return stored if isinstance(stored, bytes) else stored.encode()
    current.update(added)
    return orjson.dumps(dict(sorted(current.items())))


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


_PARSED_KEPT = 2048  # parsed attribute blobs, and search rows per level, kept per process

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Kept(Generic[_K, _V]):
    """At most `limit` values by key, per process, the least recently used dropped first."""

    __slots__ = ("_limit", "_values")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._values: OrderedDict[_K, _V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: _K) -> _V | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> _V:
        self._values[key] = value
        if len(self._values) > self._limit:
            self._values.popitem(last=False)
        return value


class _ParsedAttributes:
    """Parsed study and series attributes by their stored bytes, kept across requests.

    A viewer's worklist asks for the same studies again and again, and a page of a series'
    instances repeats the same study and series attributes in every row: each blob is parsed
    once. The key is the blob itself, so a changed study is a new key, never a stale answer.
    Callers get a shallow copy; nested values are shared and must never be mutated.
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: Kept[bytes, dict[str, Any]] = Kept(_PARSED_KEPT)

    def __call__(self, raw: bytes | str) -> dict[str, Any]:
        key = raw if isinstance(raw, bytes) else raw.encode()
        parsed = self._kept.get(key)
        if parsed is None:
            parsed = self._kept.put(key, orjson.loads(key))
        return dict(parsed)


_parsed_attributes = _ParsedAttributes()
# Whole search rows by what makes them, per level: a worklist's study rows and a series'
# instance rows are built once, not once per request, and handed out as they are
# (read-only). The key is the row's index, level, study version and own id: a study row
# takes a version no other write ever had each time it is written, and every change to a
# study's series or instances rewrites its study row in the same transaction, so an unchanged
# version means an unchanged row (the metadata documents rely on the same). Each level has its
# own bound, so a long instance list never pushes out the worklist.
_shared_rows: dict[Level, Kept[tuple[Any, ...], SharedRow]] = {}
# Where a search row (index/sql.py's SELECT lists) carries its study's version and its own id.
VERSION_COLUMN, ID_COLUMN = 12, 13


def _read_only(self: SharedRow, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("a search row is shared between requests: change a copy (dict(row))")


class SharedRow(dict[str, Any]):
    """A search row, shared by every request that finds it (so read-only: a caller changes
    `dict(row)`), that knows what it was built from (`key`: its index, level, study version
    and id) so a caller may keep what it derives from it by that key. Serialised as the
    plain dict it is."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...], values: dict[str, Any]) -> None:
        super().__init__(values)
        self.key = key

    __setitem__ = __delitem__ = pop = popitem = setdefault = update = clear = _read_only
    __ior__ = _read_only


def _kept(level: Level) -> Kept[tuple[Any, ...], SharedRow]:
    kept = _shared_rows.get(level)
    if kept is None:
        kept = _shared_rows[level] = Kept(_PARSED_KEPT)
    return kept


def index_token() -> int:
    """A number for one opened index, never another's in this process: row ids and versions
    are only unique within one database, and a process may open several (tests, tools)."""
    return next(_tokens)


_tokens = itertools.count(1)


def search_rows(
    level: Level, rows: Iterable[tuple[Any, ...] | Any], token: int = 0
) -> list[SharedRow]:
    """Search rows (index/sql.py's `rows_by_id`) of the index `token` as DICOM JSON objects,
    shared and read-only (`SharedRow`), each built once per process and version."""
    kept = _kept(level)
    out: list[SharedRow] = []
    for row in rows:
        key = (token, level, row[VERSION_COLUMN], row[ID_COLUMN])
        built = kept.get(key)
        if built is None:
            built = kept.put(key, SharedRow(key, search_row(level, row, _parsed_attributes)))
        out.append(built)
    return out


async def found_rows(
    level: Level,
    keys: Sequence[tuple[Any, ...] | Any],
    fetch: Callable[[list[int]], Awaitable[Sequence[tuple[Any, ...] | Any]]],
    token: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """A search's page from its keys ((study version, row id, site) in order, index/sql.py)
    in the index `token`: the rows this process built already, and `fetch`ed by id the ones
    it has not. Returns the rows and each one's site. A row gone between the two reads
    (deleted) is left out; one changed between them is answered as it is now."""
    kept = _kept(level)
    found: list[SharedRow | None] = []
    missing: list[int] = []
    for key in keys:
        row = kept.get((token, level, key[0], key[1]))
        found.append(row)
        if row is None:
            missing.append(int(key[1]))
    fetched: dict[int, SharedRow] = {}
    if missing:
        built = search_rows(level, await fetch(missing), token)
        fetched = {row.key[3]: row for row in built}
    rows: list[dict[str, Any]] = []
    sites: list[str] = []
    for key, row in zip(keys, found, strict=True):
        if row is None and (row := fetched.get(int(key[1]))) is None:
            continue
        rows.append(row)
        sites.append(str(key[2]))
    return rows, sites


def search_row(
    level: Level,
    row: tuple[Any, ...] | Any,
    parsed: Callable[[bytes | str], dict[str, Any]] = orjson.loads,
) -> dict[str, Any]:
    """One search row (see index/sql.py's SELECT lists) as a DICOM JSON object."""
    result: dict[str, Any] = parsed(row[0])
    modalities = [m for m in str(row[1]).split("\\") if m]
    sop_classes = [c for c in str(row[2]).split("\\") if c]
    result["00080061"] = _values("CS", modalities)
    result["00080062"] = _values("UI", sop_classes)
    result["00201206"] = {"vr": "IS", "Value": [int(row[3])]}
    result["00201208"] = {"vr": "IS", "Value": [int(row[4])]}
    if level is not Level.STUDY:
        result.update(parsed(row[6]))
        result["00201209"] = {"vr": "IS", "Value": [int(row[7])]}
    if level is Level.INSTANCE:
        result.update(orjson.loads(row[9]))
    result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    return result
