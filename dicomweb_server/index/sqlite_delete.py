"""SQLite: delete into the trash, restore, purge rows, rejections, holds and leases (issue 18).

Every change runs in one BEGIN IMMEDIATE transaction on the writer thread, as adds do: SQLite
has one writer at a time, so a delete and a concurrent store into the same study serialise
on the database lock and each sees the other's committed rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dicomweb_server.domain.lifecycle import Hold, StudyFacts
from dicomweb_server.errors import ConflictError, NotFoundError
from dicomweb_server.index.base import DeleteTarget, Judge, Rejection, TrashedInstance
from dicomweb_server.index.events import InstanceChange
from dicomweb_server.index.events_sqlite import append_deleted, append_restored
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
from dicomweb_server.index.sql import IN_LIST_MAX

__all__ = ["SqliteLifecycle"]

T = TypeVar("T")
_LOOP_READ_MAX_KEYS = 100  # rejection lookups run on the event loop up to this many ids
_INSTANCE_COLUMNS = ", ".join(INSTANCE_ROW_COLUMNS)


class SqliteLifecycle:
    """Lifecycle, RejectionLog and LegalHolds for SqliteInstanceIndex (a mixin)."""

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _point_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

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
        return await self._write(
            lambda conn: _in_transaction(
                conn, lambda: _delete(conn, target, who, reason, now, judge, rejection)
            )
        )

    async def restore_instances(
        self, site: str, study_instance_uid: str, series_instance_uid: str | None
    ) -> int:
        return await self._write(
            lambda conn: _in_transaction(
                conn, lambda: _restore(conn, site, study_instance_uid, series_instance_uid)
            )
        )

    async def trashed_before(
        self, cutoff: float, site: str | None, limit: int, after: int = 0
    ) -> list[TrashedInstance]:
        text = (
            f"SELECT {', '.join(TRASHED_COLUMNS)}, study_row FROM deleted_instances"
            " WHERE deleted_at < ? AND id > ?"
        )
        params: list[Any] = [cutoff, after]
        if site is not None:
            text += " AND site = ?"
            params.append(site)
        text += " ORDER BY id LIMIT ?"
        params.append(limit)

        def run(conn: sqlite3.Connection) -> list[TrashedInstance]:
            holds = conn.execute(ALL_HOLDS).fetchall()
            rows = conn.execute(text, params).fetchall()
            return held_trash(rows, [hold_from_row(hold) for hold in holds])

        return await self._read(run)

    async def forget_trashed(self, ids: Sequence[int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for start in range(0, len(ids), IN_LIST_MAX):
                chunk = list(ids[start : start + IN_LIST_MAX])
                conn.execute(f"DELETE FROM deleted_instances WHERE id IN ({_marks(chunk)})", chunk)

        await self._write(lambda conn: _in_transaction(conn, lambda: run(conn)))

    async def blob_keys_in_use(self, keys: Sequence[str]) -> set[str]:
        def run(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(keys), IN_LIST_MAX):
                chunk = list(keys[start : start + IN_LIST_MAX])
                rows = conn.execute(
                    f"SELECT blob_key FROM instances WHERE blob_key IN ({_marks(chunk)})", chunk
                ).fetchall()
                found.update(str(row[0]) for row in rows)
            return found

        return await self._read(run)

    async def blob_keys_in_trash(self, keys: Sequence[str], excluding: Sequence[int]) -> set[str]:
        skipped = set(excluding)

        def run(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(keys), IN_LIST_MAX):
                chunk = list(keys[start : start + IN_LIST_MAX])
                rows = conn.execute(
                    "SELECT id, blob_key FROM deleted_instances"
                    f" WHERE blob_key IN ({_marks(chunk)})",
                    chunk,
                ).fetchall()
                found.update(str(key) for row_id, key in rows if int(row_id) not in skipped)
            return found

        return await self._read(run)

    async def trash_references(self, blob_key: str) -> bool:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT 1 FROM deleted_instances WHERE blob_key = ? LIMIT 1", (blob_key,)
            ).fetchone()
        )
        return row is not None

    async def mark_deletions(
        self, blob_keys: Sequence[str], now: float, forget_before: float
    ) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("DELETE FROM blob_deletions WHERE started < ?", (forget_before,))
            insert = "INSERT INTO blob_deletions (blob_key, started) VALUES (?, ?)"
            return [int(conn.execute(insert, (key, now)).lastrowid or 0) for key in blob_keys]

        return await self._write(lambda conn: _in_transaction(conn, lambda: run(conn)))

    async def end_deletions(self, ids: Sequence[int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for start in range(0, len(ids), IN_LIST_MAX):
                chunk = list(ids[start : start + IN_LIST_MAX])
                conn.execute(f"DELETE FROM blob_deletions WHERE id IN ({_marks(chunk)})", chunk)
            conn.execute("UPDATE blob_deletion_epoch SET epoch = epoch + 1")

        await self._write(lambda conn: _in_transaction(conn, lambda: run(conn)))

    async def deletion_state(self, blob_keys: Sequence[str]) -> tuple[int, set[str]]:
        def run(conn: sqlite3.Connection) -> tuple[int, set[str]]:
            # The marks first: a deleter removes its marks and advances the epoch in one
            # transaction, so a mark gone by the first read has its epoch seen by the second.
            marked: set[str] = set()
            for start in range(0, len(blob_keys), IN_LIST_MAX):
                chunk = list(blob_keys[start : start + IN_LIST_MAX])
                rows = conn.execute(
                    f"SELECT blob_key FROM blob_deletions WHERE blob_key IN ({_marks(chunk)})",
                    chunk,
                ).fetchall()
                marked.update(str(row[0]) for row in rows)
            epoch = int(conn.execute("SELECT epoch FROM blob_deletion_epoch").fetchone()[0])
            return epoch, marked

        return await self._read(run)

    async def forget_cache_entries(self, prefix: str) -> None:
        pattern = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        await self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM derived_cache WHERE key LIKE ? ESCAPE '!'", (pattern,)
                ).rowcount
            )
        )

    async def uid_level(self, site: str, uid: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            for level, table, column in _LEVELS:
                found = conn.execute(
                    f"SELECT 1 FROM {table} WHERE site = ? AND {column} = ? LIMIT 1", (site, uid)
                ).fetchone()
                if found is not None:
                    return level
            return None

        return await self._read(run)

    async def expired_studies(
        self, site: str, before_day: str, received_before: float, limit: int
    ) -> list[str]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT study_instance_uid FROM studies WHERE site = ? AND ("
                "(length(study_date) = 8 AND study_date < ?)"
                " OR ((study_date IS NULL OR length(study_date) <> 8) AND received < ?))"
                " ORDER BY id LIMIT ?",
                (site, before_day, received_before, limit),
            ).fetchall()
        )
        return [str(row[0]) for row in rows]

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "INSERT INTO maintenance_leases (name, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until"
                " WHERE maintenance_leases.until < ? OR maintenance_leases.holder = ?",
                (name, holder, until, now, holder),
            ).rowcount
            return bool(changed)

        return await self._write(run)

    async def rejected_among(self, site: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        def run(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(sop_instance_uids), IN_LIST_MAX):
                chunk = list(sop_instance_uids[start : start + IN_LIST_MAX])
                rows = conn.execute(
                    "SELECT sop_instance_uid, code FROM rejections WHERE site = ?"
                    f" AND sop_instance_uid IN ({_marks(chunk)})",
                    [site, *chunk],
                ).fetchall()
                found.update((str(sop), str(code)) for sop, code in rows)
            return found

        if len(sop_instance_uids) > _LOOP_READ_MAX_KEYS:
            return await self._read(run)  # a long list's lookups are CPU the loop would hold
        return await self._point_read(run)  # one STOW batch's (DICOMWEB_STORE_INDEX_BATCH)

    async def add_hold(self, hold: Hold) -> Hold:
        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                f"INSERT INTO legal_holds ({', '.join(HOLD_COLUMNS[1:])})"
                f" VALUES ({_marks(HOLD_COLUMNS[1:])})",
                _hold_values(hold),
            )
            return int(cursor.lastrowid or 0)

        hold_id = await self._write(run)
        return Hold(hold_id, *_hold_values(hold))

    async def list_holds(self) -> list[Hold]:
        rows = await self._read(lambda conn: conn.execute(ALL_HOLDS).fetchall())
        return [hold_from_row(row) for row in rows]

    async def remove_hold(self, hold_id: int) -> Hold | None:
        def run(conn: sqlite3.Connection) -> Hold | None:
            row = conn.execute(
                f"SELECT {', '.join(HOLD_COLUMNS)} FROM legal_holds WHERE id = ?", (hold_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM legal_holds WHERE id = ?", (hold_id,))
            return hold_from_row(row)

        return await self._write(lambda conn: _in_transaction(conn, lambda: run(conn)))


_LEVELS = (
    ("study", "studies", "study_instance_uid"),
    ("series", "series", "series_instance_uid"),
    ("instance", "instances", "sop_instance_uid"),
)


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


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _in_transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _row_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def _delete(
    conn: sqlite3.Connection,
    target: DeleteTarget,
    who: str,
    reason: str,
    now: float,
    judge: Judge,
    rejection: Rejection | None,
) -> list[TrashedInstance]:
    """Judge the study, record the rejection (if any), move the rows, recount."""
    site, study = target.site, target.study_instance_uid
    where = "site = ? AND study_instance_uid = ?"
    params: list[Any] = [site, study]
    if target.series_instance_uid is not None:
        where += " AND series_instance_uid = ?"
        params.append(target.series_instance_uid)
    if target.sop_instance_uids is not None:
        where += f" AND sop_instance_uid IN ({_marks(target.sop_instance_uids)})"
        params.extend(target.sop_instance_uids)
    rows = conn.execute(
        f"SELECT id, series_instance_uid, sop_instance_uid FROM instances WHERE {where}"
        " ORDER BY sop_instance_uid",
        params,
    ).fetchall()
    cursor = conn.execute(
        "SELECT * FROM studies WHERE site = ? AND study_instance_uid = ?", params[:2]
    )
    found = cursor.fetchone()
    study_row = None if found is None else _row_dict(cursor, found)
    if study_row is not None:
        judge(_facts(study_row), _holds(conn, study_row))
    if not rows or study_row is None:
        if rejection is not None:
            _record_rejections(conn, site, study, rejection.references, rejection, now, who)
            return []
        raise NotFoundError(not_found(study, target.series_instance_uid, target.sop_instance_uids))
    by_series: dict[str, list[int]] = {}
    for row_id, series_uid, _ in rows:
        by_series.setdefault(series_uid, []).append(int(row_id))
    modalities = _modalities(conn, site, sorted(by_series))
    trashed = _record_deleted(conn, site, by_series, study_row, who, reason, now)
    if rejection is not None:
        moved = tuple((t.key.series_instance_uid, t.key.sop_instance_uid) for t in trashed)
        _record_rejections(conn, site, study, rejection.references + moved, rejection, now, who)
    _recount(conn, site, study, sorted(by_series))
    # The outbox: one instance.deleted per row that left, committed with the delete
    append_deleted(
        conn,
        site,
        [
            InstanceChange(study, series_uid, sop, int(row_id), modalities.get(series_uid, ""))
            for row_id, series_uid, sop in rows
        ],
    )
    return trashed


def _modalities(conn: sqlite3.Connection, site: str, series_uids: list[str]) -> dict[str, str]:
    """Each series' modality (webhook filters match it), by Series Instance UID."""
    found: dict[str, str] = {}
    for start in range(0, len(series_uids), IN_LIST_MAX):
        chunk = series_uids[start : start + IN_LIST_MAX]
        found.update(
            (uid, str(modality or ""))
            for uid, modality in conn.execute(
                "SELECT series_instance_uid, modality FROM series WHERE site = ?"
                f" AND series_instance_uid IN ({_marks(chunk)})",
                [site, *chunk],
            )
        )
    return found


def _facts(study_row: dict[str, Any]) -> StudyFacts:
    return StudyFacts(
        site=study_row["site"],
        study_instance_uid=study_row["study_instance_uid"],
        patient_id=study_row["patient_id"],
        issuer_of_patient_id=study_row["issuer_of_patient_id"],
        study_date=study_row["study_date"],
        received=float(study_row["received"] or 0.0),
    )


def _holds(conn: sqlite3.Connection, study_row: dict[str, Any]) -> list[Hold]:
    """The holds that may cover the study (the Judge decides which do)."""
    rows = conn.execute(
        f"SELECT {', '.join(HOLD_COLUMNS)} FROM legal_holds"
        " WHERE study_instance_uid = ? OR patient_id = ? ORDER BY id",
        (study_row["study_instance_uid"], study_row["patient_id"]),
    ).fetchall()
    return [hold_from_row(row) for row in rows]


def _record_rejections(
    conn: sqlite3.Connection,
    site: str,
    study: str,
    references: tuple[tuple[str, str], ...],
    rejection: Rejection,
    now: float,
    who: str,
) -> None:
    conn.executemany(
        "INSERT INTO rejections (site, sop_instance_uid, study_instance_uid,"
        " series_instance_uid, code, note_sop_instance_uid, rejected_at, rejected_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, sop_instance_uid) DO NOTHING",
        [
            (site, sop, study, series, rejection.code, rejection.note_sop_instance_uid, now, who)
            for series, sop in references
        ],
    )


def _record_deleted(
    conn: sqlite3.Connection,
    site: str,
    by_series: dict[str, list[int]],
    study_row: dict[str, Any],
    who: str,
    reason: str,
    now: float,
) -> list[TrashedInstance]:
    """Move the instance rows (by series) into the trash, with their series and study rows
    (the one place instances leave the index; the caller writes their deletion events)."""
    study_snapshot = snapshot(study_row)
    trashed: list[TrashedInstance] = []
    for series_uid in sorted(by_series):
        cursor = conn.execute(
            "SELECT * FROM series WHERE site = ? AND series_instance_uid = ?", (site, series_uid)
        )
        series_snapshot = snapshot(_row_dict(cursor, cursor.fetchone()))
        ids = by_series[series_uid]
        for start in range(0, len(ids), IN_LIST_MAX):
            chunk = ids[start : start + IN_LIST_MAX]
            first = conn.execute("SELECT COALESCE(MAX(id), 0) FROM deleted_instances").fetchone()
            conn.execute(
                f"INSERT INTO deleted_instances ({_INSTANCE_COLUMNS}, deleted_at, deleted_by,"
                f" reason, series_row, study_row) SELECT {_INSTANCE_COLUMNS}, ?, ?, ?, ?, ?"
                f" FROM instances WHERE id IN ({_marks(chunk)}) ORDER BY sop_instance_uid",
                [now, who, reason, series_snapshot, study_snapshot, *chunk],
            )
            conn.execute(f"DELETE FROM instances WHERE id IN ({_marks(chunk)})", chunk)
            rows = conn.execute(
                f"SELECT {', '.join(TRASHED_COLUMNS)} FROM deleted_instances WHERE id > ?"
                " ORDER BY id",
                (int(first[0]),),
            ).fetchall()
            trashed.extend(trashed_from_row(row) for row in rows)
    return trashed


def _recount(conn: sqlite3.Connection, site: str, study: str, series_uids: list[str]) -> None:
    """Series and study rows from what is left: counts and value sets; empty rows go."""
    for series_uid in series_uids:
        left = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE site = ? AND series_instance_uid = ?",
            (site, series_uid),
        ).fetchone()[0]
        if left:
            conn.execute(
                "UPDATE series SET number_of_instances = ?"
                " WHERE site = ? AND series_instance_uid = ?",
                (left, site, series_uid),
            )
        else:
            conn.execute(
                "DELETE FROM series WHERE site = ? AND series_instance_uid = ?", (site, series_uid)
            )
    key = (site, study)
    instances = conn.execute(
        "SELECT COUNT(*) FROM instances WHERE site = ? AND study_instance_uid = ?", key
    ).fetchone()[0]
    if not instances:
        conn.execute("DELETE FROM studies WHERE site = ? AND study_instance_uid = ?", key)
        return
    modalities = conn.execute(
        "SELECT DISTINCT modality FROM series WHERE site = ? AND study_instance_uid = ?", key
    ).fetchall()
    sop_classes = conn.execute(
        "SELECT DISTINCT sop_class_uid FROM instances WHERE site = ? AND study_instance_uid = ?",
        key,
    ).fetchall()
    series_count = conn.execute(
        "SELECT COUNT(*) FROM series WHERE site = ? AND study_instance_uid = ?", key
    ).fetchone()[0]
    conn.execute(
        "UPDATE studies SET number_of_instances = ?, number_of_series = ?,"
        " modalities_in_study = ?, sop_classes_in_study = ?"
        " WHERE site = ? AND study_instance_uid = ?",
        (
            instances,
            series_count,
            joined_set(row[0] for row in modalities),
            joined_set(row[0] for row in sop_classes),
            *key,
        ),
    )


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    cursor = conn.execute(f"SELECT * FROM {table} LIMIT 0")
    return [column[0] for column in cursor.description]


def _restore(conn: sqlite3.Connection, site: str, study: str, series: str | None) -> int:
    """Move the newest trashed copy of each instance back, recreating series and study rows
    from their snapshots when the delete removed them; lift the instances' rejections."""
    where = "site = ? AND study_instance_uid = ?"
    params: list[Any] = [site, study]
    if series is not None:
        where += " AND series_instance_uid = ?"
        params.append(series)
    rows = conn.execute(
        "SELECT id, series_instance_uid, sop_instance_uid, series_row, study_row"
        f" FROM deleted_instances WHERE {where} ORDER BY deleted_at DESC, id DESC",
        params,
    ).fetchall()
    if not rows:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise NotFoundError(f"the trash of site {site} holds nothing of {what}")
    newest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        newest.setdefault(row[2], row)
    sops = list(newest)
    for start in range(0, len(sops), IN_LIST_MAX):
        chunk = sops[start : start + IN_LIST_MAX]
        again = conn.execute(
            f"SELECT sop_instance_uid FROM instances WHERE site = ?"
            f" AND sop_instance_uid IN ({_marks(chunk)}) LIMIT 1",
            [site, *chunk],
        ).fetchone()
        if again is not None:
            raise ConflictError(
                f"restore refused: SOP Instance {again[0]} was stored again after it was"
                " deleted; delete that copy first"
            )
    chosen = list(newest.values())
    study_columns = _columns(conn, "studies")
    if (
        conn.execute(
            "SELECT 1 FROM studies WHERE site = ? AND study_instance_uid = ?", (site, study)
        ).fetchone()
        is None
    ):
        _insert(conn, "studies", unsnapshot(chosen[0][4], study_columns))
    series_columns = _columns(conn, "series")
    for series_uid in sorted({row[1] for row in chosen}):
        owner = conn.execute(
            "SELECT study_instance_uid FROM series WHERE site = ? AND series_instance_uid = ?",
            (site, series_uid),
        ).fetchone()
        if owner is None:
            snap = next(row[3] for row in chosen if row[1] == series_uid)
            _insert(conn, "series", unsnapshot(snap, series_columns))
        elif owner[0] != study:
            raise ConflictError(
                f"restore refused: series {series_uid} now belongs to study {owner[0]}"
            )
    ids = sorted(int(row[0]) for row in chosen)
    for start in range(0, len(ids), IN_LIST_MAX):
        id_chunk = ids[start : start + IN_LIST_MAX]
        conn.execute(
            f"INSERT INTO instances ({_INSTANCE_COLUMNS}) SELECT {_INSTANCE_COLUMNS}"
            f" FROM deleted_instances WHERE id IN ({_marks(id_chunk)}) ORDER BY id",
            id_chunk,
        )
        conn.execute(f"DELETE FROM deleted_instances WHERE id IN ({_marks(id_chunk)})", id_chunk)
    for start in range(0, len(sops), IN_LIST_MAX):
        chunk = sops[start : start + IN_LIST_MAX]
        conn.execute(
            f"DELETE FROM rejections WHERE site = ? AND sop_instance_uid IN ({_marks(chunk)})",
            [site, *chunk],
        )
    series_uids = sorted({row[1] for row in chosen})
    _recount(conn, site, study, series_uids)
    modalities = _modalities(conn, site, series_uids)
    back: list[InstanceChange] = []
    for start in range(0, len(sops), IN_LIST_MAX):
        chunk = sops[start : start + IN_LIST_MAX]
        back.extend(
            InstanceChange(study, series_uid, sop, int(row_id), modalities.get(series_uid, ""))
            for row_id, series_uid, sop in conn.execute(
                "SELECT id, series_instance_uid, sop_instance_uid FROM instances WHERE site = ?"
                f" AND sop_instance_uid IN ({_marks(chunk)}) ORDER BY id",
                [site, *chunk],
            )
        )
    append_restored(conn, site, back)  # the instances are back: created again for consumers
    return len(chosen)


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    conn.execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({_marks(list(row))})",
        tuple(row.values()),
    )
