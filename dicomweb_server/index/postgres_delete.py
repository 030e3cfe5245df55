"""PostgreSQL: delete into the trash, restore, purge rows, rejections, holds and leases (issue 18).

A delete locks in the order every add path locks (index/postgres_add.py): the instance rows
(by SOP Instance UID), then their series rows (by Series Instance UID), then the study row.
A concurrent STOW into the same study therefore waits for the delete (or the delete for it)
and never deadlocks with it; counts and value sets are recomputed from the rows that remain
under those locks, and READ COMMITTED lets each statement see what the other committed. Two
deletes of the same thing serialise on the instance rows: the second finds none (a 404).
Holds are read under a SHARE lock of their table, so a hold added concurrently either
commits first (and is seen) or waits for the delete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from dicomweb_server.domain.lifecycle import Hold, StudyFacts
from dicomweb_server.errors import ConflictError, NotFoundError
from dicomweb_server.index.base import DeleteTarget, Judge, Rejection, TrashedInstance
from dicomweb_server.index.events import InstanceChange
from dicomweb_server.index.events_postgres import append_deleted, append_restored
from dicomweb_server.index.lifecycle_rows import (
    ALL_HOLDS,
    HOLD_COLUMNS,
    INSTANCE_ROW_COLUMNS,
    TRASHED_COLUMNS,
    held_trash,
    hold_from_row,
    joined_set,
    not_found,
    snapshot,
    trashed_from_row,
    unsnapshot,
)

if TYPE_CHECKING:
    from dicomweb_server.index.postgres import Connection

__all__ = ["PostgresLifecycle"]

T = TypeVar("T")
_INSTANCE_COLUMNS = ", ".join(INSTANCE_ROW_COLUMNS)
_LEVELS = (
    ("study", "studies", "study_instance_uid"),
    ("series", "series", "series_instance_uid"),
    ("instance", "instances", "sop_instance_uid"),
)


class PostgresLifecycle:
    """Lifecycle, RejectionLog and LegalHolds for PostgresInstanceIndex (a mixin)."""

    async def _with_connection(
        self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool = True
    ) -> T:
        raise NotImplementedError

    async def _transaction(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """`body` in one READ COMMITTED transaction, run again if it collided."""
        from dicomweb_server.index.postgres import _retry_collisions

        async def run(conn: Connection) -> T:
            async def attempt() -> T:
                async with conn.transaction(isolation="read_committed"):
                    return await body(conn)

            return await _retry_collisions("lifecycle", attempt)

        return await self._with_connection(run)

    async def _fetch(self, text: str, *args: Any) -> list[asyncpg.Record]:
        async def run(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(text, *args)

        return await self._with_connection(run)

    async def delete_instances(
        self,
        target: DeleteTarget,
        *,
        who: str,
        reason: str,
        now: float,
        judge: Judge,
        rejection: Rejection | None = None,
    ) -> list[TrashedInstance]:
        return await self._transaction(
            lambda conn: _delete(conn, target, who, reason, now, judge, rejection)
        )

    async def restore_instances(
        self, site: str, study_instance_uid: str, series_instance_uid: str | None
    ) -> int:
        return await self._transaction(
            lambda conn: _restore(conn, site, study_instance_uid, series_instance_uid)
        )

    async def trashed_before(
        self, cutoff: float, site: str | None, limit: int, after: int = 0
    ) -> list[TrashedInstance]:
        text = (
            f"SELECT {', '.join(TRASHED_COLUMNS)}, study_row FROM deleted_instances"
            " WHERE deleted_at < $1 AND id > $2"
        )
        args: list[Any] = [cutoff, after]
        if site is not None:
            text += " AND site = $3"
            args.append(site)
        text += f" ORDER BY id LIMIT ${len(args) + 1}"
        holds = await self._fetch(ALL_HOLDS)
        rows = await self._fetch(text, *args, limit)
        return held_trash(rows, [hold_from_row(hold) for hold in holds])

    async def forget_trashed(self, ids: Sequence[int]) -> None:
        await self._fetch(
            "DELETE FROM deleted_instances WHERE id = ANY($1::bigint[]) RETURNING id", list(ids)
        )

    async def blob_keys_in_use(self, keys: Sequence[str]) -> set[str]:
        rows = await self._fetch(
            "SELECT DISTINCT blob_key FROM instances WHERE blob_key = ANY($1::text[])", list(keys)
        )
        return {str(row[0]) for row in rows}

    async def blob_keys_in_trash(self, keys: Sequence[str], excluding: Sequence[int]) -> set[str]:
        rows = await self._fetch(
            "SELECT DISTINCT blob_key FROM deleted_instances WHERE blob_key = ANY($1::text[])"
            " AND NOT id = ANY($2::bigint[])",
            list(keys),
            list(excluding),
        )
        return {str(row[0]) for row in rows}

    async def trash_references(self, blob_key: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM deleted_instances WHERE blob_key = $1 LIMIT 1", blob_key
        )
        return bool(rows)

    async def mark_deletions(
        self, blob_keys: Sequence[str], now: float, forget_before: float
    ) -> list[int]:
        async def body(conn: Connection) -> list[int]:
            await conn.execute("DELETE FROM blob_deletions WHERE started < $1", forget_before)
            rows = await conn.fetch(
                "INSERT INTO blob_deletions (blob_key, started)"
                " SELECT unnest($1::text[]), $2 RETURNING id",
                list(blob_keys),
                now,
            )
            return [int(row[0]) for row in rows]

        return await self._transaction(body)

    async def end_deletions(self, ids: Sequence[int]) -> None:
        async def body(conn: Connection) -> None:
            await conn.execute("DELETE FROM blob_deletions WHERE id = ANY($1::bigint[])", list(ids))
            await conn.execute("UPDATE blob_deletion_epoch SET epoch = epoch + 1")

        await self._transaction(body)

    async def deletion_state(self, blob_keys: Sequence[str]) -> tuple[int, set[str]]:
        rows = await self._fetch(
            "SELECT epoch, NULL FROM blob_deletion_epoch UNION ALL"
            " SELECT NULL, blob_key FROM blob_deletions WHERE blob_key = ANY($1::text[])",
            list(blob_keys),
        )
        epoch = next(int(row[0]) for row in rows if row[0] is not None)
        return epoch, {str(row[1]) for row in rows if row[1] is not None}

    async def forget_cache_entries(self, prefix: str) -> None:
        pattern = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        await self._fetch(
            "DELETE FROM derived_cache WHERE key LIKE $1 ESCAPE '!' RETURNING key", pattern
        )

    async def uid_level(self, site: str, uid: str) -> str | None:
        for level, table, column in _LEVELS:
            if await self._fetch(
                f"SELECT 1 FROM {table} WHERE site = $1 AND {column} = $2 LIMIT 1", site, uid
            ):
                return level
        return None

    async def expired_studies(
        self, site: str, before_day: str, received_before: float, limit: int
    ) -> list[str]:
        rows = await self._fetch(
            "SELECT study_instance_uid FROM studies WHERE site = $1 AND ("
            "(length(study_date) = 8 AND study_date < $2)"
            " OR ((study_date IS NULL OR length(study_date) <> 8) AND received < $3))"
            " ORDER BY id LIMIT $4",
            site,
            before_day,
            received_before,
            limit,
        )
        return [str(row[0]) for row in rows]

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        rows = await self._fetch(
            "INSERT INTO maintenance_leases (name, holder, until) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
            " WHERE maintenance_leases.until < $4 OR maintenance_leases.holder = $2"
            " RETURNING name",
            name,
            holder,
            until,
            now,
        )
        return bool(rows)

    async def rejected_among(self, site: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT sop_instance_uid, code FROM rejections WHERE site = $1"
            " AND sop_instance_uid = ANY($2::text[])",
            site,
            list(sop_instance_uids),
        )
        return {str(row[0]): str(row[1]) for row in rows}

    async def add_hold(self, hold: Hold) -> Hold:
        columns = HOLD_COLUMNS[1:]
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        rows = await self._fetch(
            f"INSERT INTO legal_holds ({', '.join(columns)}) VALUES ({marks})"
            f" RETURNING {', '.join(HOLD_COLUMNS)}",
            *_hold_values(hold),
        )
        return hold_from_row(rows[0])

    async def list_holds(self) -> list[Hold]:
        rows = await self._fetch(ALL_HOLDS)
        return [hold_from_row(row) for row in rows]

    async def remove_hold(self, hold_id: int) -> Hold | None:
        rows = await self._fetch(
            f"DELETE FROM legal_holds WHERE id = $1 RETURNING {', '.join(HOLD_COLUMNS)}", hold_id
        )
        return hold_from_row(rows[0]) if rows else None


def _hold_values(hold: Hold) -> tuple[Any, ...]:
    return (
        hold.reason,
        hold.created,
        hold.created_by,
        hold.site,
        hold.patient_id,
        hold.issuer_of_patient_id,
        hold.study_instance_uid,
    )


async def _delete(
    conn: Connection,
    target: DeleteTarget,
    who: str,
    reason: str,
    now: float,
    judge: Judge,
    rejection: Rejection | None,
) -> list[TrashedInstance]:
    """Lock instances, series, study (the add paths' order); judge; move; recount."""
    site, study = target.site, target.study_instance_uid
    await conn.execute("LOCK TABLE legal_holds IN SHARE MODE")
    where = "site = $1 AND study_instance_uid = $2"
    args: list[Any] = [site, study]
    if target.series_instance_uid is not None:
        args.append(target.series_instance_uid)
        where += f" AND series_instance_uid = ${len(args)}"
    if target.sop_instance_uids is not None:
        args.append(list(target.sop_instance_uids))
        where += f" AND sop_instance_uid = ANY(${len(args)}::text[])"
    rows = await conn.fetch(
        f"SELECT id, series_instance_uid, sop_instance_uid FROM instances WHERE {where}"
        " ORDER BY sop_instance_uid FOR UPDATE",
        *args,
    )
    by_series: dict[str, list[int]] = {}
    for row in rows:
        by_series.setdefault(row[1], []).append(int(row[0]))
    series_rows = await conn.fetch(
        "SELECT * FROM series WHERE site = $1 AND series_instance_uid = ANY($2::text[])"
        " ORDER BY series_instance_uid FOR UPDATE",
        site,
        sorted(by_series),
    )
    study_row = await conn.fetchrow(
        "SELECT * FROM studies WHERE site = $1 AND study_instance_uid = $2 FOR UPDATE",
        site,
        study,
    )
    if study_row is not None:
        holds = await conn.fetch(
            f"SELECT {', '.join(HOLD_COLUMNS)} FROM legal_holds"
            " WHERE study_instance_uid = $1 OR patient_id = $2 ORDER BY id",
            study,
            study_row["patient_id"],
        )
        judge(_facts(study_row), [hold_from_row(hold) for hold in holds])
    if not rows or study_row is None:
        if rejection is not None:
            await _record_rejections(conn, site, study, rejection.references, rejection, now, who)
            return []
        raise NotFoundError(not_found(study, target.series_instance_uid, target.sop_instance_uids))
    snapshots = {row["series_instance_uid"]: snapshot(dict(row)) for row in series_rows}
    trashed = await _record_deleted(
        conn, by_series, snapshots, snapshot(dict(study_row)), who, reason, now
    )
    if rejection is not None:
        moved = tuple((t.key.series_instance_uid, t.key.sop_instance_uid) for t in trashed)
        await _record_rejections(
            conn, site, study, rejection.references + moved, rejection, now, who
        )
    await _recount(conn, site, study, sorted(by_series))
    modalities = {row["series_instance_uid"]: row["modality"] or "" for row in series_rows}
    # The outbox, last (it serialises commits): one instance.deleted per row that left
    await append_deleted(
        conn,
        site,
        [
            InstanceChange(study, row[1], row[2], int(row[0]), modalities.get(row[1], ""))
            for row in rows
        ],
    )
    return trashed


def _facts(study_row: asyncpg.Record) -> StudyFacts:
    return StudyFacts(
        site=study_row["site"],
        study_instance_uid=study_row["study_instance_uid"],
        patient_id=study_row["patient_id"],
        issuer_of_patient_id=study_row["issuer_of_patient_id"],
        study_date=study_row["study_date"],
        received=float(study_row["received"]),
    )


async def _record_rejections(
    conn: Connection,
    site: str,
    study: str,
    references: tuple[tuple[str, str], ...],
    rejection: Rejection,
    now: float,
    who: str,
) -> None:
    if not references:
        return
    await conn.execute(
        "INSERT INTO rejections (site, sop_instance_uid, study_instance_uid,"
        " series_instance_uid, code, note_sop_instance_uid, rejected_at, rejected_by)"
        " SELECT $1, r.sop, $2, r.series, $3, $4, $5, $6"
        " FROM unnest($7::text[], $8::text[]) AS r(series, sop)"
        " ON CONFLICT (site, sop_instance_uid) DO NOTHING",
        site,
        study,
        rejection.code,
        rejection.note_sop_instance_uid,
        now,
        who,
        [series for series, _ in references],
        [sop for _, sop in references],
    )


async def _record_deleted(
    conn: Connection,
    by_series: dict[str, list[int]],
    series_snapshots: dict[str, bytes],
    study_snapshot: bytes,
    who: str,
    reason: str,
    now: float,
) -> list[TrashedInstance]:
    """Move the (locked) instance rows into the trash, series by series, one statement each
    (the one place instances leave the index; the caller writes their deletion events)."""
    trashed: list[TrashedInstance] = []
    for series_uid in sorted(by_series):
        rows = await conn.fetch(
            "WITH moved AS (DELETE FROM instances WHERE id = ANY($1::bigint[])"
            f" RETURNING {_INSTANCE_COLUMNS})"
            f" INSERT INTO deleted_instances ({_INSTANCE_COLUMNS}, deleted_at, deleted_by,"
            f" reason, series_row, study_row) SELECT {_INSTANCE_COLUMNS}, $2, $3, $4, $5, $6"
            f" FROM moved ORDER BY sop_instance_uid RETURNING {', '.join(TRASHED_COLUMNS)}",
            by_series[series_uid],
            now,
            who,
            reason,
            series_snapshots[series_uid],
            study_snapshot,
        )
        trashed.extend(trashed_from_row(row) for row in rows)
    return trashed


async def _recount(conn: Connection, site: str, study: str, series_uids: list[str]) -> None:
    """Series and study rows from what is left (rows locked): counts, value sets; empty go."""
    for series_uid in series_uids:
        left = await conn.fetchval(
            "SELECT COUNT(*) FROM instances WHERE site = $1 AND series_instance_uid = $2",
            site,
            series_uid,
        )
        if left:
            await conn.execute(
                "UPDATE series SET number_of_instances = $3"
                " WHERE site = $1 AND series_instance_uid = $2",
                site,
                series_uid,
                left,
            )
        else:
            await conn.execute(
                "DELETE FROM series WHERE site = $1 AND series_instance_uid = $2",
                site,
                series_uid,
            )
    instances = await conn.fetchval(
        "SELECT COUNT(*) FROM instances WHERE site = $1 AND study_instance_uid = $2", site, study
    )
    if not instances:
        await conn.execute(
            "DELETE FROM studies WHERE site = $1 AND study_instance_uid = $2", site, study
        )
        return
    modalities = await conn.fetch(
        "SELECT DISTINCT modality FROM series WHERE site = $1 AND study_instance_uid = $2",
        site,
        study,
    )
    sop_classes = await conn.fetch(
        "SELECT DISTINCT sop_class_uid FROM instances WHERE site = $1 AND study_instance_uid = $2",
        site,
        study,
    )
    series_count = await conn.fetchval(
        "SELECT COUNT(*) FROM series WHERE site = $1 AND study_instance_uid = $2", site, study
    )
    await conn.execute(
        "UPDATE studies SET number_of_instances = $3, number_of_series = $4,"
        " modalities_in_study = $5, sop_classes_in_study = $6"
        " WHERE site = $1 AND study_instance_uid = $2",
        site,
        study,
        instances,
        series_count,
        joined_set(row[0] for row in modalities),
        joined_set(row[0] for row in sop_classes),
    )


async def _columns(conn: Connection, table: str) -> list[str]:
    statement = await conn.prepare(f"SELECT * FROM {table} LIMIT 0")
    return [attribute.name for attribute in statement.get_attributes()]


async def _restore(conn: Connection, site: str, study: str, series: str | None) -> int:
    """Move the newest trashed copy of each instance back, in the add paths' lock order
    (instance rows, series rows, study row); recreate removed series and study rows from
    their snapshots; lift the instances' rejections."""
    where = "site = $1 AND study_instance_uid = $2"
    args: list[Any] = [site, study]
    if series is not None:
        args.append(series)
        where += " AND series_instance_uid = $3"
    rows = await conn.fetch(
        "SELECT id, series_instance_uid, sop_instance_uid, series_row, study_row"
        f" FROM deleted_instances WHERE {where} ORDER BY deleted_at DESC, id DESC FOR UPDATE",
        *args,
    )
    if not rows:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise NotFoundError(f"the trash of site {site} holds nothing of {what}")
    newest: dict[str, asyncpg.Record] = {}
    for row in rows:
        newest.setdefault(row[2], row)
    chosen = sorted(newest.values(), key=lambda row: row[2])
    ids = [int(row[0]) for row in chosen]
    inserted = await conn.fetch(
        f"INSERT INTO instances ({_INSTANCE_COLUMNS}) SELECT {_INSTANCE_COLUMNS}"
        " FROM deleted_instances WHERE id = ANY($1::bigint[]) ORDER BY sop_instance_uid"
        " ON CONFLICT (site, sop_instance_uid) DO NOTHING"
        " RETURNING sop_instance_uid, id, series_instance_uid",
        ids,
    )
    if len(inserted) != len(ids):
        back = {row[0] for row in inserted}
        again = next(row[2] for row in chosen if row[2] not in back)
        raise ConflictError(
            f"restore refused: SOP Instance {again} was stored again after it was deleted;"
            " delete that copy first"
        )
    series_columns = await _columns(conn, "series")
    for series_uid in sorted({row[1] for row in chosen}):
        snap = next(row[3] for row in chosen if row[1] == series_uid)
        await _insert_missing(conn, "series", "site, series_instance_uid", snap, series_columns)
        owner = await conn.fetchval(
            "SELECT study_instance_uid FROM series WHERE site = $1 AND series_instance_uid = $2"
            " FOR UPDATE",
            site,
            series_uid,
        )
        if owner != study:
            raise ConflictError(
                f"restore refused: series {series_uid} now belongs to study {owner}"
            )
    study_columns = await _columns(conn, "studies")
    await _insert_missing(conn, "studies", "site, study_instance_uid", chosen[0][4], study_columns)
    await conn.fetchval(
        "SELECT id FROM studies WHERE site = $1 AND study_instance_uid = $2 FOR UPDATE",
        site,
        study,
    )
    await conn.execute("DELETE FROM deleted_instances WHERE id = ANY($1::bigint[])", ids)
    await conn.execute(
        "DELETE FROM rejections WHERE site = $1 AND sop_instance_uid = ANY($2::text[])",
        site,
        [row[2] for row in chosen],
    )
    series_uids = sorted({row[1] for row in chosen})
    await _recount(conn, site, study, series_uids)
    modalities = {
        row[0]: row[1] or ""
        for row in await conn.fetch(
            "SELECT series_instance_uid, modality FROM series"
            " WHERE site = $1 AND series_instance_uid = ANY($2::text[])",
            site,
            series_uids,
        )
    }
    # The instances are back: created again for consumers (last: it serialises commits)
    await append_restored(
        conn,
        site,
        [
            InstanceChange(study, row[2], row[0], int(row[1]), modalities.get(row[2], ""))
            for row in sorted(inserted, key=lambda row: int(row[1]))
        ],
    )
    return len(chosen)


async def _insert_missing(
    conn: Connection, table: str, unique: str, data: bytes, columns: list[str]
) -> None:
    """Insert the snapshot's row unless a row with its key exists."""
    row = unsnapshot(data, columns)
    marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"
        f" ON CONFLICT ({unique}) DO NOTHING",
        *row.values(),
    )
