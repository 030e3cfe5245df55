"""Index rows → DICOM JSON objects, shared by the SQLite and PostgreSQL indexes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import orjson

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.domain.records import PixelLayout, pixel_from_json
from dicomweb_server.index.base import StoredInstance

__all__ = [
    "INSTANCE_COLUMNS",
    "Kept",
    "SharedRow",
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
# Whole search rows by what makes them (stored attributes and aggregates), per level: a
# worklist's study rows and a series' instance rows are built once, not once per request, and
# handed out as they are (read-only). A changed study, series or instance is a new key, never
# a stale row. Each level has its own bound, so a long instance list never pushes out the
# worklist.
_shared_rows: dict[Level, Kept[tuple[Any, ...], SharedRow]] = {}
# The columns of a search row (index/sql.py's SELECT lists) its content is built from.
_KEY_COLUMNS = {Level.STUDY: 5, Level.SERIES: 8, Level.INSTANCE: 10}


def _read_only(self: SharedRow, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("a search row is shared between requests: change a copy (dict(row))")


class SharedRow(dict[str, Any]):
    """A search row, shared by every request that finds it (so read-only: a caller changes
    `dict(row)`), that knows what it was built from (`key`: its level, stored attributes and
    aggregates) so a caller may keep what it derives from it by that key. Serialised as the
    plain dict it is."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...], values: dict[str, Any]) -> None:
        super().__init__(values)
        self.key = key

    __setitem__ = __delitem__ = pop = popitem = setdefault = update = clear = _read_only
    __ior__ = _read_only


def search_rows(level: Level, rows: Iterable[tuple[Any, ...] | Any]) -> list[dict[str, Any]]:
    """Search rows as DICOM JSON objects, shared and read-only (`SharedRow`), each built once
    per process from what it is made of."""
    kept = _shared_rows.get(level)
    if kept is None:
        kept = _shared_rows[level] = Kept(_PARSED_KEPT)
    width = _KEY_COLUMNS[level]
    out: list[dict[str, Any]] = []
    for row in rows:
        key = (level, *(row[n] for n in range(width)))
        built = kept.get(key)
        if built is None:
            built = kept.put(key, SharedRow(key, search_row(level, row, _parsed_attributes)))
        out.append(built)
    return out


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
