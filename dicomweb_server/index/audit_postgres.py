"""The audit trail on PostgreSQL (mixed into PostgresInstanceIndex, whose pool it uses).

Append-only by triggers (migrations/postgres/009_audit.sql): UPDATE, DELETE and TRUNCATE are
refused unless `audit_expire()` set its cutoff for the transaction. The expiry runs under a
transaction-level advisory lock taken with try: a process finding it held skips its turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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

if TYPE_CHECKING:
    from dicomweb_server.index.postgres import Connection

__all__ = ["PostgresAuditLog"]

T = TypeVar("T")

# pg_try_advisory_xact_lock key of the expiry: "dwaudit" in ASCII
_EXPIRY_LOCK_KEY = 0x64_7761_7564_6974
_EVENT_TYPES = (
    "float8",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "int4",
    "text",
    "text",
)
_STUDY_TYPES = ("int8", "float8", "text", "text", "text", "text")
assert len(_EVENT_TYPES) == len(EVENT_COLUMNS) and len(_STUDY_TYPES) == len(STUDY_COLUMNS)


def _unnest(types: Sequence[str], first: int = 1) -> str:
    return ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(types, start=first))


# Ids taken first, so each record's study rows can name it (RETURNING order is not promised)
_IDS = "SELECT nextval(pg_get_serial_sequence('audit_events', 'id')) FROM generate_series(1, $1)"
_INSERT_EVENTS = (
    f"INSERT INTO audit_events (id, {', '.join(EVENT_COLUMNS)}) OVERRIDING SYSTEM VALUE"
    f" SELECT * FROM unnest({_unnest(('int8', *_EVENT_TYPES))})"
)
_INSERT_STUDIES = (
    f"INSERT INTO audit_studies ({', '.join(STUDY_COLUMNS)})"
    f" SELECT * FROM unnest({_unnest(_STUDY_TYPES)})"
)


def _mark(n: int) -> str:
    return f"${n}"


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


class PostgresAuditLog:
    """AuditLog on the PostgreSQL index."""

    if TYPE_CHECKING:

        async def _with_connection(
            self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool = True
        ) -> T: ...

    async def append_audit_records(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return

        async def run(conn: Connection) -> None:
            async with conn.transaction():
                ids = [row[0] for row in await conn.fetch(_IDS, len(records))]
                events = [(i, *event_values(r)) for i, r in zip(ids, records, strict=True)]
                await conn.execute(_INSERT_EVENTS, *_columns(events, len(EVENT_COLUMNS) + 1))
                studies = [
                    row for i, r in zip(ids, records, strict=True) for row in study_values(i, r)
                ]
                if studies:
                    await conn.execute(_INSERT_STUDIES, *_columns(studies, len(STUDY_COLUMNS)))
            for event_id, record in zip(ids, records, strict=True):
                record.id = int(event_id)

        # No retry on a lost connection: the first attempt may have committed.
        await self._with_connection(run, retry=False)

    async def query_audit_records(self, query: AuditQuery) -> AuditPage:
        sql = search_sql(query, _mark)

        async def run(conn: Connection) -> tuple[list[Any], list[Any]]:
            rows = await conn.fetch(sql.text, *sql.params)
            ids = [int(row[0]) for row in rows[: query.limit]]
            if not ids:
                return list(rows), []
            studies = studies_sql(ids, _mark)
            return list(rows), list(await conn.fetch(studies.text, *studies.params))

        rows, studies = await self._with_connection(run)
        return page_of(rows, group_studies(studies), query.limit)

    async def expire_audit_records(self, before: float) -> int | None:
        async def batch(conn: Connection) -> int | None:
            async with conn.transaction():
                if not await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1)", _EXPIRY_LOCK_KEY
                ):
                    return None
                return int(await conn.fetchval("SELECT audit_expire($1, $2)", before, EXPIRY_BATCH))

        removed = 0
        while True:
            done = await self._with_connection(batch)
            if done is None:
                return None if removed == 0 else removed
            removed += done
            if done < EXPIRY_BATCH:
                return removed

    async def study_patients(
        self, site: str | None, study_instance_uids: Sequence[str]
    ) -> list[AuditStudy]:
        uids = list(dict.fromkeys(study_instance_uids))
        if not uids:
            return []
        text = (
            "SELECT study_instance_uid, site, patient_id, issuer_of_patient_id FROM studies"
            " WHERE study_instance_uid = ANY($1::text[])"
        )

        async def run(conn: Connection) -> list[Any]:
            if site is None:
                return list(await conn.fetch(text, uids))
            return list(await conn.fetch(text + " AND site = $2", uids, site))

        return [AuditStudy(*row) for row in await self._with_connection(run)]
