"""The audit trail on SQLite (mixed into SqliteInstanceIndex, whose threads it uses).

Append-only by triggers (migrations/sqlite/010_audit.sql); the expiry alone deletes, inside a
BEGIN IMMEDIATE transaction (so one process at a time) holding the marker row the triggers ask
for. SQLite has one writer at a time, so no other connection can ever see the marker.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dicomweb_server.domain.audit import AuditPage, AuditQuery, AuditRecord, AuditStudy
from dicomweb_server.index.audit import (
    EVENT_COLUMNS,
    EXPIRY_BATCH,
    STUDY_COLUMNS,
    event_values,
    group_studies,
    page_of,
    search_sql,
    studies_sql,
    study_values,
)
from dicomweb_server.index.sql import IN_LIST_MAX

__all__ = ["SqliteAuditLog"]

T = TypeVar("T")


def _mark(_: int) -> str:
    return "?"


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


_INSERT_EVENT = _insert("audit_events", EVENT_COLUMNS)
_INSERT_STUDY = _insert("audit_studies", STUDY_COLUMNS)


def _append(conn: sqlite3.Connection, records: Sequence[AuditRecord]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for record in records:
            event_id = int(conn.execute(_INSERT_EVENT, event_values(record)).lastrowid or 0)
            record.id = event_id
            conn.executemany(_INSERT_STUDY, study_values(event_id, record))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _expire_batch(conn: sqlite3.Connection, before: float) -> int:
    """One transaction: the marker, up to EXPIRY_BATCH records that ended before `before`
    and their study rows, the marker gone again."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO audit_expiry (before) VALUES (?)", (before,))
        doomed = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM audit_events WHERE end_time < ? ORDER BY end_time LIMIT ?",
                (before, EXPIRY_BATCH),
            )
        ]
        for start in range(0, len(doomed), IN_LIST_MAX):
            chunk = doomed[start : start + IN_LIST_MAX]
            marks = ", ".join("?" * len(chunk))
            conn.execute(f"DELETE FROM audit_studies WHERE event_id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM audit_events WHERE id IN ({marks})", chunk)
        conn.execute("DELETE FROM audit_expiry")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(doomed)


class SqliteAuditLog:
    """AuditLog on the SQLite index."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def append_audit_records(self, records: Sequence[AuditRecord]) -> None:
        if records:
            await self._write(lambda conn: _append(conn, records))

    async def query_audit_records(self, query: AuditQuery) -> AuditPage:
        sql = search_sql(query, _mark)

        def run(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            rows = conn.execute(sql.text, sql.params).fetchall()
            ids = [row[0] for row in rows[: query.limit]]
            found: list[Any] = []
            for start in range(0, len(ids), IN_LIST_MAX):
                studies = studies_sql(ids[start : start + IN_LIST_MAX], _mark)
                found += conn.execute(studies.text, studies.params).fetchall()
            return rows, found

        rows, studies = await self._read(run)
        return page_of(rows, group_studies(studies), query.limit)

    async def expire_audit_records(self, before: float) -> int | None:
        removed = 0
        while True:
            batch = await self._write(lambda conn: _expire_batch(conn, before))
            removed += batch
            if batch < EXPIRY_BATCH:
                return removed

    async def study_patients(
        self, site: str | None, study_instance_uids: Sequence[str]
    ) -> list[AuditStudy]:
        uids = list(dict.fromkeys(study_instance_uids))

        def run(conn: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            for start in range(0, len(uids), IN_LIST_MAX):
                chunk = uids[start : start + IN_LIST_MAX]
                marks = ", ".join("?" * len(chunk))
                text = (
                    "SELECT study_instance_uid, site, patient_id, issuer_of_patient_id"
                    f" FROM studies WHERE study_instance_uid IN ({marks})"
                )
                if site is None:
                    rows += conn.execute(text, chunk).fetchall()
                else:
                    rows += conn.execute(text + " AND site = ?", [*chunk, site]).fetchall()
            return rows

        if not uids:
            return []
        return [AuditStudy(*row) for row in await self._read(run)]
