"""SQLite: the outbox written in the add (and delete) transaction, the change feed, study.stable.

SQLite has one writer at a time and AUTOINCREMENT numbers rows in insertion order, so event
sequences follow commit order by construction. Event times are taken inside the write
transaction and never go below the latest event's, so they follow the sequence too.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dicomweb_server.domain.events import INSTANCE_CREATED, INSTANCE_DELETED, STUDY_STABLE
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.base import FeedPage
from dicomweb_server.index.events import (
    INSERT_COLUMNS,
    InstanceChange,
    created_changes,
    event_rows,
    feed_entry_from_row,
    feed_query,
    latest_query,
)

if TYPE_CHECKING:
    from dicomweb_server.domain.events import FeedEntry

__all__ = ["SqliteEventLog", "append_created", "append_deleted", "append_restored"]

T = TypeVar("T")


def _mark(_: int) -> str:
    return "?"


def _event_time(conn: sqlite3.Connection) -> float:
    """Now, or the latest event's time if the clock went back: times follow sequences."""
    row = conn.execute("SELECT time FROM events ORDER BY sequence DESC LIMIT 1").fetchone()
    now = time.time()
    return now if row is None else max(now, float(row[0]))


def _append(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], at: float) -> None:
    columns = ", ".join(INSERT_COLUMNS)
    marks = ", ".join("?" * (len(INSERT_COLUMNS) + 1))
    conn.executemany(
        f"INSERT INTO events ({columns}, time) VALUES ({marks})", [(*row, at) for row in rows]
    )


def append_created(
    conn: sqlite3.Connection, site: str, created: Sequence[tuple[InstanceRecord, int]]
) -> None:
    """In the add transaction: an instance.created event per (record, instance row id), and
    each study's activity (last change, generation) for study.stable."""
    append_restored(conn, site, created_changes(created))


def append_restored(conn: sqlite3.Connection, site: str, changes: Sequence[InstanceChange]) -> None:
    """In the add (or restore) transaction: an instance.created event per change (instances
    back in the index are created again for a consumer) and each study's activity."""
    if not changes:
        return
    at = _event_time(conn)
    _append(conn, event_rows(site, INSTANCE_CREATED, changes), at)
    conn.executemany(
        "INSERT INTO study_activity (site, study_instance_uid, last_change, generation)"
        " VALUES (?, ?, ?, 1) ON CONFLICT (site, study_instance_uid) DO UPDATE SET"
        " last_change = excluded.last_change, generation = generation + 1",
        [(site, study, at) for study in sorted({c.study_instance_uid for c in changes})],
    )


def append_deleted(conn: sqlite3.Connection, site: str, deleted: Sequence[InstanceChange]) -> None:
    """In the delete transaction (inside its BEGIN IMMEDIATE): an instance.deleted event per
    deleted instance (its row id and modality as they were), committed with the delete."""
    if deleted:
        _append(conn, event_rows(site, INSTANCE_DELETED, deleted), _event_time(conn))


def _announce(conn: sqlite3.Connection, quiet_seconds: float, limit: int) -> int:
    """One transaction: pick quiet, unannounced studies, write their study.stable events and
    mark their generation announced."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        at = _event_time(conn)
        due = conn.execute(
            "SELECT site, study_instance_uid, generation FROM study_activity"
            " WHERE generation > announced AND last_change <= ? ORDER BY last_change LIMIT ?",
            (time.time() - quiet_seconds, limit),
        ).fetchall()
        rows = []
        for site, study, _ in due:
            counts = conn.execute(
                "SELECT number_of_series, number_of_instances, modalities_in_study FROM studies"
                " WHERE site = ? AND study_instance_uid = ?",
                (site, study),
            ).fetchone()
            if counts is not None and counts[1] > 0:  # a study deleted meanwhile: nothing
                rows.append((STUDY_STABLE, site, study, None, None, None, counts[2], *counts[:2]))
        _append(conn, rows, at)
        conn.executemany(
            "UPDATE study_activity SET announced = ? WHERE site = ? AND study_instance_uid = ?",
            [(generation, site, study) for site, study, generation in due],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(rows)


class SqliteEventLog:
    """EventLog on the SQLite index (mixed into SqliteInstanceIndex, whose threads it uses)."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def read_feed(self, page: FeedPage) -> list[FeedEntry]:
        if page.sites is not None and not page.sites:
            return []
        query = feed_query(page, _mark)

        def run(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(query.text, query.params).fetchall()

        return [feed_entry_from_row(row) for row in await self._read(run)]

    async def latest_feed_entry(
        self, sites: frozenset[str] | None, metadata: bool
    ) -> FeedEntry | None:
        if sites is not None and not sites:
            return None
        query = latest_query(sites, metadata, _mark)

        def run(conn: sqlite3.Connection) -> Any:
            return conn.execute(query.text, query.params).fetchone()

        row = await self._read(run)
        return None if row is None else feed_entry_from_row(row)

    async def announce_quiet_studies(self, quiet_seconds: float, limit: int) -> int:
        def due(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM study_activity WHERE generation > announced AND last_change <= ?"
                " LIMIT 1",
                (time.time() - quiet_seconds,),
            ).fetchone()
            return row is not None

        if not await self._read(due):  # no write lock taken while nothing is due
            return 0
        return await self._write(lambda conn: _announce(conn, quiet_seconds, limit))
