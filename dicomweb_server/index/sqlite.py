"""The embedded index: one SQLite file in WAL mode, queried from worker threads; keyed point
reads (a frame's instance, a study's version) run on the event loop while none of them waits
(`LoopReads`)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import orjson

from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.query import Query, fold_for_fuzzy
from dicomweb_server.domain.records import (
    InstanceRecord,
)
from dicomweb_server.domain.sites import Site
from dicomweb_server.errors import ConflictError, IndexUnavailableError, NotFoundError
from dicomweb_server.index.aggregates import (
    instance_row,
    merged_series_attributes,
    merged_study,
    new_series_row,
    new_study_row,
)
from dicomweb_server.index.api_keys import (
    API_KEY_COLUMNS,
    ApiKeyRecord,
    api_key_from_row,
    api_key_values,
)
from dicomweb_server.index.audit_sqlite import SqliteAuditLog
from dicomweb_server.index.base import AddOutcome, Connections, Counts, SearchPage, StoredInstance
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.events_sqlite import SqliteEventLog, append_created
from dicomweb_server.index.ordered import OrderedInstances
from dicomweb_server.index.rows import (
    INSTANCE_COLUMNS,
    found_rows,
    index_token,
    stored_instance,
)
from dicomweb_server.index.site_rows import SITE_COLUMNS, site_from_row, site_values
from dicomweb_server.index.sql import (
    IN_LIST_MAX,
    build_search,
    rows_by_id,
    scan_budget_exceeded,
)
from dicomweb_server.index.sql_json import FOLD_FUNCTION
from dicomweb_server.index.sqlite_delete import SqliteLifecycle
from dicomweb_server.index.threads import Workers
from dicomweb_server.index.webhooks_sqlite import SqliteWebhookLedger

__all__ = ["SqliteInstanceIndex"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
_READERS = 4
_CLAIM_BATCH = 1000  # derived-cache entries evicted per claim, at most (callers repeat)
_PROGRESS_STEPS = 1000  # VM steps between scan-budget checks (tens of microseconds)
LOOP_READ_PAUSE_SECONDS = 60.0  # how long point reads stay on the threads after one waited
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class LoopReads:
    """Whether a point read may run on the event loop's own thread, skipping the hop to a
    reader thread and back.

    The hop costs more CPU than the read (in process, a frame request took 340 µs of CPU
    with it and 210 µs without). A read on the loop holds every other request of the
    process while it runs, so it is only done while such reads do not wait: one that spent
    longer than `max_seconds` off the CPU (pages read from a slow disk or a network file
    system, a lock, a machine too busy to run it) sends point reads back to the threads for
    `pause_seconds`. The bound is above what the GIL and a busy scheduler take: under STOW
    at full load on two cores, 5 % of these reads spent 2–10 ms off the CPU and none more
    than 14 ms, and a read on a thread would wait for them too. `max_seconds` of 0 keeps
    every read on the threads.
    """

    def __init__(
        self,
        max_seconds: float,
        pause_seconds: float = LOOP_READ_PAUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self.max_seconds = max_seconds
        self.pause_seconds = pause_seconds
        self._clock = clock
        self._wall = wall
        self._cpu = cpu
        self._paused_until = 0.0
        self.pauses = 0  # reads that sent the others to the threads, for tests

    def allowed(self) -> bool:
        return self.max_seconds > 0 and self._clock() >= self._paused_until

    def start(self) -> tuple[float, float]:
        """The clocks as a read on the loop starts (wall time, this thread's CPU time)."""
        return self._wall(), self._cpu()

    def finish(self, started: tuple[float, float]) -> None:
        """A read on the loop that started at `started` is over: count its time off the CPU."""
        wall, cpu = started
        self.record((self._wall() - wall) - (self._cpu() - cpu))

    def record(self, waited: float) -> None:
        """A read on the loop spent `waited` seconds off the CPU."""
        if waited <= self.max_seconds:
            return
        self.pauses += 1
        self._paused_until = self._clock() + self.pause_seconds
        _log.info(
            "index point reads go to the reader threads for %.0f s: one on the event loop"
            " waited %.1f ms (DICOMWEB_SQLITE_LOOP_READ_MAX_MS=%g)",
            self.pause_seconds,
            waited * 1000,
            self.max_seconds * 1000,
        )


def _unavailable(exc: sqlite3.Error) -> IndexUnavailableError:
    return IndexUnavailableError(f"index unavailable: {exc}")


def _busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused for a lock another connection holds (a thread can wait it out)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("dicomweb_server.index") / "migrations" / "sqlite"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class SqliteInstanceIndex(
    SqliteLifecycle, SqliteAuditLog, SqliteEventLog, SqliteWebhookLedger, OrderedInstances
):
    """InstanceIndex on SQLite: one writer thread, a few reader threads, WAL for both.

    Deletion, restore, rejections and holds (issue 18) live in index/sqlite_delete.py.
    """

    def __init__(self, path: Path, *, loop_read_max_seconds: float = 0.0) -> None:
        self._path = path
        self.loop_reads = LoopReads(loop_read_max_seconds)
        self._local = threading.local()
        self._writer = Workers(1, "sqlite-writer")
        self._readers = Workers(_READERS, "sqlite-reader")
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._rows_token = index_token()  # search rows kept by this database's ids

    @classmethod
    async def open(cls, path: Path, *, loop_read_max_seconds: float = 0.0) -> SqliteInstanceIndex:
        """Open (creating and migrating as needed) the index at `path`. With
        `loop_read_max_seconds` above 0, point reads run on the event loop until one waits
        longer than that off the CPU (`LoopReads`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        index = cls(path, loop_read_max_seconds=loop_read_max_seconds)
        await index._write(index._migrate)
        return index

    def _connection(self, *, waits: bool = True) -> sqlite3.Connection:
        """This thread's connection: one that waits for locks (the worker threads), or one
        that never does (reads on the event loop: a busy database sends them to a thread)."""
        name = "conn" if waits else "loop_conn"
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=30 if waits else 0,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA case_sensitive_like=ON")
            if waits:  # WAL is the file's own once set: the loop's connection writes nothing
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
            setattr(self._local, name, conn)
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, workers: Workers, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            return fn(self._connection())

        try:
            return await workers.run(call)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, fn)

    async def _point_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of a few rows by key: on the event loop while `loop_reads` allows it,
        else (or when the database is busy) on a reader thread."""
        guard = self.loop_reads
        if not guard.allowed():
            return await self._read(fn)
        started = guard.start()
        try:
            return fn(self._connection(waits=False))
        except sqlite3.Error as exc:
            if not _busy(exc):
                raise _unavailable(exc) from exc
        finally:
            guard.finish(started)
        return await self._read(fn)  # busy: a thread waits for the lock, the loop does not

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply every migration not yet applied, each in its own transaction.

        Applied versions are recorded one by one (as on PostgreSQL), not as one high-water
        mark, so a migration numbered below one already applied (branches merged in another
        order) is still applied. Worker processes open one file at the same moment: the first
        migrates while the others wait on the lock, then find nothing left to apply.
        """
        with open(self._path.with_name(self._path.name + ".migrate-lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            if not done:  # an index migrated before versions were recorded one by one
                high = conn.execute("PRAGMA user_version").fetchone()[0]
                done = set(range(1, high + 1))
            for version, script in _migrations():
                if version in done:
                    continue
                # (executescript commits any open transaction: BEGIN goes inside the script)
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\n"
                    f"INSERT INTO schema_migrations (version) VALUES ({version});\nCOMMIT;"
                )
            known = [version for version, _ in _migrations()]
            conn.executemany(
                "INSERT OR IGNORE INTO schema_migrations (version) VALUES (?)",
                [(version,) for version in known if version in done],
            )
            conn.execute(f"PRAGMA user_version = {max(known, default=0)}")  # for sqlite3 tools

    async def add_instance(
        self, site: str, record: InstanceRecord, blob_key: str, size: int, digest: str
    ) -> AddOutcome:
        new = NewInstance(record=record, blob_key=blob_key, size=size, digest=digest)
        return (await self._write(lambda conn: _add_batch(conn, site, [new])))[0]

    async def add_instances(self, site: str, instances: Sequence[NewInstance]) -> list[AddOutcome]:
        """Add a batch in one transaction: one write lock and one commit for many instances."""
        return await self._write(lambda conn: _add_batch(conn, site, instances))

    async def search(self, query: Query) -> SearchPage:
        sql = build_search(query, "sqlite")

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if not sql.unindexed:
                return conn.execute(sql.text, sql.params).fetchall()
            if not getattr(self._local, "fold", False):
                conn.create_function(FOLD_FUNCTION, 1, _fold, deterministic=True)
                self._local.fold = True
            # Unindexed keys may scan: the progress handler (called every _PROGRESS_STEPS
            # virtual machine steps) interrupts the statement once the budget is spent.
            deadline = time.monotonic() + query.scan_timeout
            conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
            try:
                return conn.execute(sql.text, sql.params).fetchall()
            except sqlite3.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise scan_budget_exceeded(sql, query.scan_timeout) from exc
                raise
            finally:
                conn.set_progress_handler(None, 0)

        keys = await self._read(run)
        more = len(keys) > query.limit

        async def fetch(ids: list[int]) -> list[tuple[Any, ...]]:
            def by_id(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
                found: list[tuple[Any, ...]] = []
                for start in range(0, len(ids), IN_LIST_MAX):
                    batch = ids[start : start + IN_LIST_MAX]
                    text = rows_by_id(query.level, "sqlite", len(batch))
                    found += conn.execute(text, batch).fetchall()
                return found

            return await self._read(by_id)

        rows, sites = await found_rows(query.level, keys[: query.limit], fetch, self._rows_token)
        return SearchPage(rows, more, sites)

    async def _order(
        self,
        study: StudyKey,
        series_instance_uid: str | None,
        after: tuple[int, int, int] | None,
        most: int,
    ) -> list[tuple[int, int, int, str]]:
        """Up to `most` (series row, instance number, row, digest) in `iter_instances` order,
        after the `after` key: the sort carries these small columns only, never a blob."""
        params: list[Any] = [study.site]
        if series_instance_uid is None:
            params.append(study.study_instance_uid)
            text = (
                "SELECT se.id, COALESCE(i.instance_number, -2147483648), i.id, i.digest"
                " FROM instances i JOIN series se ON se.site = i.site"
                " AND se.series_instance_uid = i.series_instance_uid"
                " WHERE i.site = ? AND i.study_instance_uid = ?"
            )
            if after is not None:
                text += " AND (se.id, COALESCE(i.instance_number, -2147483648), i.id) > (?, ?, ?)"
                params += after
            text += " ORDER BY 1, 2, 3 LIMIT ?"
        else:
            # One series: its rows come by the (site, series, number) index (the `+` keeps the
            # planner off the study index), and its series row is the same for all of them.
            params += [series_instance_uid, study.study_instance_uid]
            text = (
                "SELECT 0, COALESCE(i.instance_number, -2147483648), i.id, i.digest"
                " FROM instances i WHERE i.site = ? AND i.series_instance_uid = ?"
                " AND +i.study_instance_uid = ?"
            )
            if after is not None:
                text += " AND (COALESCE(i.instance_number, -2147483648), i.id) > (?, ?)"
                params += after[1:]
            text += " ORDER BY 2, 3 LIMIT ?"
        params.append(most)

        def run(conn: sqlite3.Connection) -> list[tuple[int, int, int, str]]:
            return conn.execute(text, params).fetchall()

        return await self._read(run)

    async def _by_row(self, columns: str, rows: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        marks = ", ".join("?" * len(rows))
        text = f"SELECT i.id, {columns} FROM instances i WHERE i.id IN ({marks})"

        def run(conn: sqlite3.Connection) -> dict[int, tuple[Any, ...]]:
            return {row[0]: row[1:] for row in conn.execute(text, list(rows))}

        return await self._read(run)

    async def _instance_row(self, columns: str, key: InstanceKey) -> tuple[Any, ...] | None:
        """`columns` of one instance row, or None."""

        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(
                f"SELECT {columns} FROM instances WHERE site = ? AND sop_instance_uid = ?"
                " AND series_instance_uid = ? AND study_instance_uid = ?",
                (key.site, key.sop_instance_uid, key.series_instance_uid, key.study_instance_uid),
            ).fetchone()
            return row

        return await self._point_read(run)

    async def get_instance(self, key: InstanceKey) -> StoredInstance | None:
        row = await self._instance_row(", ".join(INSTANCE_COLUMNS), key)
        return None if row is None else stored_instance(row)

    async def get_metadata(self, key: InstanceKey) -> bytes | None:
        row = await self._instance_row("metadata", key)
        return None if row is None else bytes(row[0])

    async def get_bulk_span(self, key: InstanceKey, path: str) -> tuple[int, int] | None:
        row = await self._instance_row("bulk", key)
        if row is None or row[0] is None:
            return None
        span = orjson.loads(row[0]).get(path)
        return None if span is None else (int(span[0]), int(span[1]))

    async def series_exists(self, key: SeriesKey) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM series WHERE site = ? AND series_instance_uid = ?"
                " AND study_instance_uid = ?",
                (key.site, key.series_instance_uid, key.study_instance_uid),
            ).fetchone()
            return row is not None

        return await self._point_read(run)

    async def study_versions(self, sites: Sequence[str], study_instance_uid: str) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                f"SELECT site, version FROM studies WHERE site IN ({', '.join('?' * len(sites))})"
                " AND study_instance_uid = ?",
                (*sites, study_instance_uid),
            ).fetchall()
            return {str(site): int(version) for site, version in rows}

        return await self._point_read(run) if sites else {}

    async def change_count(self) -> int | None:
        def run(conn: sqlite3.Connection) -> int:
            # fetchall: a statement left unfinished would hold its read snapshot open, and
            # this connection would go on reading the same number.
            rows = conn.execute("SELECT value FROM study_version_counter WHERE id = 1").fetchall()
            return int(rows[0][0])

        return await self._point_read(run)

    async def iter_blob_keys(self, site: str | None = None) -> AsyncIterator[str]:
        after = 0
        while True:

            def run(conn: sqlite3.Connection, after: int = after) -> list[Any]:
                if site is None:
                    return conn.execute(
                        "SELECT id, blob_key FROM instances WHERE id > ? ORDER BY id LIMIT 1000",
                        (after,),
                    ).fetchall()
                return conn.execute(
                    "SELECT id, blob_key FROM instances WHERE site = ? AND id > ?"
                    " ORDER BY id LIMIT 1000",
                    (site, after),
                ).fetchall()

            batch = await self._read(run)
            for _, key in batch:
                yield str(key)
            if len(batch) < 1000:
                return
            after = int(batch[-1][0])

    async def note_cache_use(
        self, added: Sequence[tuple[str, int, float]], used: Sequence[tuple[str, float]]
    ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO derived_cache (key, size, last_used) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET size = excluded.size,"
                    " last_used = excluded.last_used",
                    added,
                )
                conn.executemany(
                    "UPDATE derived_cache SET last_used = ? WHERE key = ?",
                    [(at, key) for key, at in used],
                )
                total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM derived_cache").fetchone()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return int(total[0])

        return await self._write(run)

    async def claim_cache_victims(self, at_least: int) -> list[tuple[str, int]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                claimed: list[tuple[str, int]] = []
                freed = 0
                oldest = conn.execute(
                    "SELECT key, size FROM derived_cache ORDER BY last_used, key LIMIT ?",
                    (_CLAIM_BATCH,),
                )
                for key, size in oldest:
                    if freed >= at_least:
                        break
                    claimed.append((str(key), int(size)))
                    freed += int(size)
                conn.executemany(
                    "DELETE FROM derived_cache WHERE key = ?", [(key,) for key, _ in claimed]
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return claimed

        return await self._write(run)

    async def list_sites(self) -> list[Site]:
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(SITE_COLUMNS)} FROM sites ORDER BY name"
            ).fetchall()
        )
        return [site_from_row(row) for row in rows]

    async def get_site(self, name: str) -> Site | None:
        row = await self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(SITE_COLUMNS)} FROM sites WHERE name = ?", (name,)
            ).fetchone()
        )
        return None if row is None else site_from_row(row)

    async def add_site(self, site: Site) -> None:
        marks = ", ".join("?" * len(SITE_COLUMNS))

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO sites ({', '.join(SITE_COLUMNS)}) VALUES ({marks})",
                    site_values(site),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"site {site.name!r} already exists") from None

        await self._write(run)

    async def update_site(self, site: Site) -> None:
        columns = SITE_COLUMNS[1:]

        def run(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                f"UPDATE sites SET {', '.join(f'{c} = ?' for c in columns)} WHERE name = ?",
                (*site_values(site)[1:], site.name),
            ).rowcount
            if not changed:
                raise NotFoundError(f"site {site.name!r} does not exist")

        await self._write(run)

    async def remove_site(self, name: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone() is None:
                    raise NotFoundError(f"site {name!r} does not exist")
                held = conn.execute("SELECT 1 FROM studies WHERE site = ? LIMIT 1", (name,))
                if held.fetchone() is not None:
                    raise ConflictError(f"site {name!r} holds studies: it cannot be removed")
                conn.execute("DELETE FROM sites WHERE name = ?", (name,))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._write(run)

    async def sites_holding_study(self, study_instance_uid: str) -> list[str]:
        rows = await self._point_read(  # each request at the enterprise root over many sites
            lambda conn: conn.execute(
                "SELECT site FROM studies WHERE study_instance_uid = ? ORDER BY site",
                (study_instance_uid,),
            ).fetchall()
        )
        return [str(row[0]) for row in rows]

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        marks = ", ".join("?" * len(API_KEY_COLUMNS))

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO api_keys ({', '.join(API_KEY_COLUMNS)}) VALUES ({marks})",
                    api_key_values(record),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"an API key named {record.name!r} exists already") from None

        await self._write(run)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._point_read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(API_KEY_COLUMNS)} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else api_key_from_row(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(API_KEY_COLUMNS)} FROM api_keys ORDER BY name"
            ).fetchall()
        )
        return [api_key_from_row(row) for row in rows]

    async def revoke_api_key(self, name: str, when: datetime) -> ApiKeyRecord | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            conn.execute(
                "UPDATE api_keys SET revoked = COALESCE(revoked, ?) WHERE name = ?",
                (when.timestamp(), name),
            )
            row: tuple[Any, ...] | None = conn.execute(
                f"SELECT {', '.join(API_KEY_COLUMNS)} FROM api_keys WHERE name = ?", (name,)
            ).fetchone()
            return row

        row = await self._write(run)
        return None if row is None else api_key_from_row(row)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1 FROM studies LIMIT 1").fetchall())

    async def counts(self) -> Counts:
        """Exact counts (SQLite counts a table by its smallest index: an embedded store's size)."""

        def run(conn: sqlite3.Connection) -> tuple[int, int, int]:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM studies), (SELECT count(*) FROM series),"
                " (SELECT count(*) FROM instances)"
            ).fetchone()
            return int(row[0]), int(row[1]), int(row[2])

        return Counts(*await self._read(run))

    def connections(self) -> Connections:
        # The writer's, each reader thread's, and the event loop's own (reads that never wait)
        return Connections(len(self._connections), None, 2 + _READERS)

    async def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()

        self._writer.shutdown()
        self._readers.shutdown()
        await asyncio.to_thread(close_all)


def _fold(value: str | None) -> str | None:
    """fold_for_fuzzy as an SQL function (person names in stored JSON, fuzzy matching)."""
    return None if value is None else fold_for_fuzzy(value)


def _add_batch(
    conn: sqlite3.Connection, site: str, instances: Sequence[NewInstance]
) -> list[AddOutcome]:
    """Each instance in order, in one IMMEDIATE transaction: conflict checks, the instance
    row, then the aggregates.

    An instance that is not CREATED writes nothing (`_add_in_transaction` decides before its
    first write), so the others' rows commit as if each had been added alone. The created
    ones' events (the outbox) are written last, in the same transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        created: list[tuple[InstanceRecord, int]] = []
        outcomes = [_add_in_transaction(conn, site, new, created) for new in instances]
        append_created(conn, site, created)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT" if AddOutcome.CREATED in outcomes else "ROLLBACK")
    return outcomes


def _add_in_transaction(
    conn: sqlite3.Connection,
    site: str,
    new: NewInstance,
    created: list[tuple[InstanceRecord, int]],
) -> AddOutcome:
    """Judge the instance, then write its row and count it into its series and study; a
    created one is appended to `created` with its row id."""
    record = new.record
    existing = conn.execute(
        "SELECT study_instance_uid, series_instance_uid, digest FROM instances"
        " WHERE site = ? AND sop_instance_uid = ?",
        (site, record.sop_instance_uid),
    ).fetchone()
    if existing is not None:
        same_place = tuple(existing[:2]) == (record.study_instance_uid, record.series_instance_uid)
        same = same_place and existing[2] == new.digest
        return AddOutcome.IDENTICAL if same else AddOutcome.CONFLICT
    series_row = conn.execute(
        "SELECT study_instance_uid, attributes FROM series"
        " WHERE site = ? AND series_instance_uid = ?",
        (site, record.series_instance_uid),
    ).fetchone()
    if series_row is not None and series_row[0] != record.study_instance_uid:
        return AddOutcome.CONFLICT  # PS3.4 C.6.2.1: a series sits in exactly one study
    study_row = conn.execute(
        "SELECT attributes, modalities_in_study, sop_classes_in_study FROM studies"
        " WHERE site = ? AND study_instance_uid = ?",
        (site, record.study_instance_uid),
    ).fetchone()
    new_series = 1 if series_row is None else 0
    if study_row is None:
        _insert(conn, "studies", new_study_row(site, [record], new_series))
    else:
        attributes, modalities, sop_classes = merged_study(tuple(study_row), [record])
        conn.execute(
            "UPDATE studies SET number_of_instances = number_of_instances + 1,"
            " number_of_series = number_of_series + ?, modalities_in_study = ?,"
            " sop_classes_in_study = ?, attributes = ? WHERE site = ? AND study_instance_uid = ?",
            (new_series, modalities, sop_classes, attributes, site, record.study_instance_uid),
        )
    if series_row is None:
        _insert(conn, "series", new_series_row(site, [record]))
    else:
        conn.execute(
            "UPDATE series SET number_of_instances = number_of_instances + 1, attributes = ?"
            " WHERE site = ? AND series_instance_uid = ?",
            (
                merged_series_attributes(series_row[1], [record]),
                site,
                record.series_instance_uid,
            ),
        )
    created.append((record, _insert(conn, "instances", instance_row(site, new))))
    return AddOutcome.CREATED


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    """Insert `row`; its id."""
    marks = ", ".join("?" * len(row))
    cursor = conn.execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values())
    )
    return int(cursor.lastrowid or 0)
