"""A study's or series' instances in order, the same way on both indexes (a mixin).

The order (series row, instance number, none first, then row id) is found on small columns
only, a page at a time by keyset paging (`_order`, per backend); the wanted columns are then
fetched by row id a batch at a time (`_by_row`, per backend). Sorting the small columns keeps
every metadata blob out of the sort, which on SQLite used to go through a temporary B-tree
for each batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from dicomweb_server.domain.identifiers import StudyKey
from dicomweb_server.index.base import StoredInstance
from dicomweb_server.index.rows import INSTANCE_COLUMNS, stored_instance

__all__ = ["OrderedInstances"]

_ITER_BATCH = 64  # instance rows fetched per query when iterating
_ORDER_PAGE = 1024  # instances ordered per query when iterating (small columns only)


class OrderedInstances:
    """`iter_instances`, `iter_metadata`, `list_instances` and `metadata_by_row` over a
    backend's `_order` and `_by_row`."""

    async def _order(
        self,
        study: StudyKey,
        series_instance_uid: str | None,
        after: tuple[int, int, int] | None,
        most: int,
    ) -> Sequence[Sequence[Any]]:
        """Up to `most` (series row, instance number, row, digest) in order, after `after`."""
        raise NotImplementedError

    async def _by_row(self, columns: str, rows: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """`columns` of the instance rows `rows`, by row (a row deleted meanwhile is absent)."""
        raise NotImplementedError

    async def _iter(
        self, columns: str, study: StudyKey, series_instance_uid: str | None
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Rows in order: a page of the order, then its rows `_ITER_BATCH` at a time. No
        connection or transaction is held between queries, so a slow client pins nothing."""
        after: tuple[int, int, int] | None = None
        while True:
            page = await self._order(study, series_instance_uid, after, _ORDER_PAGE)
            for start in range(0, len(page), _ITER_BATCH):
                ids = [int(entry[2]) for entry in page[start : start + _ITER_BATCH]]
                found = await self._by_row(columns, ids)
                for row_id in ids:
                    row = found.get(row_id)
                    if row is not None:
                        yield row
            if len(page) < _ORDER_PAGE:
                return
            last = page[-1]
            after = (int(last[0]), int(last[1]), int(last[2]))

    async def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        columns = ", ".join(f"i.{c}" for c in INSTANCE_COLUMNS)
        async for row in self._iter(columns, study, series_instance_uid):
            yield stored_instance(row)

    async def iter_metadata(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[bytes]:
        async for row in self._iter("i.metadata", study, series_instance_uid):
            yield bytes(row[0])

    async def list_instances(
        self, study: StudyKey, series_instance_uid: str | None, most: int
    ) -> list[tuple[int, str]] | None:
        page = await self._order(study, series_instance_uid, None, most + 1)
        return None if len(page) > most else [(int(entry[2]), str(entry[3])) for entry in page]

    async def metadata_by_row(self, rows: Sequence[int]) -> dict[int, bytes]:
        found = await self._by_row("i.metadata", rows)
        return {row_id: bytes(row[0]) for row_id, row in found.items()}
