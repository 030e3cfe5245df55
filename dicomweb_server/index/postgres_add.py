"""PostgreSQL: add one instance in its own transaction, and the row helpers both add paths share.

The instance row is inserted first (its unique key is the lock that serialises duplicate
stores), then the series and the study rows are updated or inserted, in that fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.aggregates import (
    instance_row,
    merged_series_attributes,
    merged_study,
    new_series_row,
    new_study_row,
)
from dicomweb_server.index.base import AddOutcome
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.events_postgres import append_created

if TYPE_CHECKING:
    from dicomweb_server.index.postgres import Connection

__all__: list[str] = []  # internal to the PostgreSQL index


class _RowVanishedError(Exception):
    """A row the transaction just conflicted with is gone (deleted meanwhile): start over."""


class _Rollback(Exception):
    """Leaves the add transaction without writing anything; carries the outcome."""

    def __init__(self, outcome: AddOutcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


class _InstanceValues:
    """One instance's column values, and the transaction that adds them."""

    def __init__(
        self, site: str, record: InstanceRecord, blob_key: str, size: int, digest: str
    ) -> None:
        self.site = site
        self.record = record
        self.blob_key = blob_key
        self.size = size
        self.digest = digest

    async def add(self, conn: Connection) -> AddOutcome:
        """Instance row, then series row, then study row: every adder locks in that order.

        The instance's unique key goes first. A second store of the same SOP Instance UID
        blocks there until the first commits (then sees its row) or rolls back (then inserts),
        so exactly one row results, and the second holds no other lock while it waits: no
        deadlock. The series and study rows are then locked by UPDATE (or created by INSERT
        ... ON CONFLICT DO NOTHING) and their counters and value sets read and rewritten under
        that lock, so concurrent adds to one study serialise on it and every count is exact.
        READ COMMITTED (set explicitly, whatever the server default) lets each statement see
        what concurrent adders committed while it waited.
        """
        try:
            async with conn.transaction(isolation="read_committed"):
                await self._add_in_transaction(conn)
        except _Rollback as rollback:
            return rollback.outcome
        return AddOutcome.CREATED

    async def _add_in_transaction(self, conn: Connection) -> None:
        record = self.record
        new = NewInstance(record, self.blob_key, self.size, self.digest)
        text, values = _insert("instances", "site, sop_instance_uid", instance_row(self.site, new))
        instance_id = await conn.fetchval(text, *values)
        if instance_id is None:
            raise _Rollback(await self._existing_outcome(conn))
        series_created = await self._count_into_series(conn)
        await self._count_into_study(conn, series_created)
        await append_created(conn, self.site, [(record, instance_id)])  # the outbox, last

    async def _existing_outcome(self, conn: Connection) -> AddOutcome:
        """The SOP Instance UID is taken (and committed): is it this very instance?"""
        existing = await conn.fetchrow(
            "SELECT study_instance_uid, series_instance_uid, digest FROM instances"
            " WHERE site = $1 AND sop_instance_uid = $2",
            self.site,
            self.record.sop_instance_uid,
        )
        if existing is None:  # only if it was deleted in between; the caller's retry inserts
            raise _RowVanishedError("instance")
        place = (self.record.study_instance_uid, self.record.series_instance_uid)
        if (existing[0], existing[1]) == place and existing[2] == self.digest:
            return AddOutcome.IDENTICAL
        return AddOutcome.CONFLICT

    async def _count_into_series(self, conn: Connection) -> bool:
        """Count the instance into its series (created if new); True when created."""
        record = self.record
        row = await _update_or_insert(
            conn,
            "UPDATE series SET number_of_instances = number_of_instances + 1"
            " WHERE site = $1 AND series_instance_uid = $2"
            " RETURNING id, study_instance_uid, attributes",
            (self.site, record.series_instance_uid),
            "series",
            "site, series_instance_uid",
            new_series_row(self.site, [record]),
        )
        if row is None:
            return True
        if row[1] != record.study_instance_uid:
            # PS3.4 C.6.2.1: in the information model a series sits in exactly one study.
            raise _Rollback(AddOutcome.CONFLICT)
        merged = merged_series_attributes(row[2], [record])
        if merged != row[2]:
            await conn.execute("UPDATE series SET attributes = $1 WHERE id = $2", merged, row[0])
        return False

    async def _count_into_study(self, conn: Connection, series_created: bool) -> None:
        """Count the instance (and a new series) into its study, created if new."""
        await count_into_study(conn, self.site, [self.record], 1 if series_created else 0)


async def count_into_study(
    conn: Connection, site: str, records: Sequence[InstanceRecord], new_series: int
) -> None:
    """Count `records` (of one study) and `new_series` series into their study row (created
    if new), under the row's lock; its attributes and value sets rewritten when they grow."""
    first = records[0]
    row = await _update_or_insert(
        conn,
        "UPDATE studies SET number_of_instances = number_of_instances + $3,"
        " number_of_series = number_of_series + $4"
        " WHERE site = $1 AND study_instance_uid = $2"
        " RETURNING id, attributes, modalities_in_study, sop_classes_in_study",
        (site, first.study_instance_uid, len(records), new_series),
        "studies",
        "site, study_instance_uid",
        new_study_row(site, records, new_series),
    )
    if row is None:
        return
    stored = (row[1], row[2], row[3])
    merged = merged_study(stored, records)
    if merged != stored:
        await conn.execute(
            "UPDATE studies SET attributes = $1, modalities_in_study = $2,"
            " sop_classes_in_study = $3 WHERE id = $4",
            *merged,
            row[0],
        )


def _insert(table: str, unique: str, row: dict[str, Any]) -> tuple[str, list[Any]]:
    """INSERT of `row` that does nothing on a `unique` conflict and returns the new id."""
    marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    text = (
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"
        f" ON CONFLICT ({unique}) DO NOTHING RETURNING id"
    )
    return text, list(row.values())


async def _update_or_insert(
    conn: Connection,
    update: str,
    update_args: tuple[Any, ...],
    table: str,
    unique: str,
    row: dict[str, Any],
) -> asyncpg.Record | None:
    """Run `update` (which locks the row it returns) or, with no such row yet, insert `row`.

    None means inserted. When a concurrent adder inserts the same key first, our INSERT waits
    for its commit and does nothing, and the repeated UPDATE then finds and locks its row.
    """
    found = await conn.fetchrow(update, *update_args)
    if found is not None:
        return found
    text, values = _insert(table, unique, row)
    if await conn.fetchval(text, *values) is not None:
        return None
    found = await conn.fetchrow(update, *update_args)
    if found is None:
        raise _RowVanishedError(table)
    return found
