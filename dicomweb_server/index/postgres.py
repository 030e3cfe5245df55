"""The PostgreSQL index: an asyncpg pool, versioned migrations, duplicate-safe concurrent adds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import orjson

from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.query import Query
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.domain.sites import Site
from dicomweb_server.errors import (
    ConflictError,
    DicomwebError,
    IndexUnavailableError,
    NotFoundError,
)
from dicomweb_server.index.aggregates import INT4_MAX, INT4_MIN, as_text
from dicomweb_server.index.api_keys import (
    API_KEY_COLUMNS,
    ApiKeyRecord,
    api_key_from_row,
    api_key_values,
)
from dicomweb_server.index.audit_postgres import PostgresAuditLog
from dicomweb_server.index.base import AddOutcome, Connections, Counts, SearchPage, StoredInstance
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.events_postgres import PostgresEventLog
from dicomweb_server.index.ordered import OrderedInstances
from dicomweb_server.index.postgres_add import _InstanceValues, _RowVanishedError
from dicomweb_server.index.postgres_delete import PostgresLifecycle
from dicomweb_server.index.postgres_write import add_batch
from dicomweb_server.index.rows import (
    INSTANCE_COLUMNS,
    found_rows,
    index_token,
    stored_instance,
)
from dicomweb_server.index.site_rows import SITE_COLUMNS, site_from_row, site_values
from dicomweb_server.index.sql import build_search, rows_by_id, scan_budget_exceeded
from dicomweb_server.index.turn_batch import TurnBatch
from dicomweb_server.index.webhooks_postgres import PostgresWebhookLedger

__all__ = ["PostgresInstanceIndex", "migrate"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # Both a pooled connection and the bare one `migrate` opens run the same statements.
    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record] | asyncpg.Connection[asyncpg.Record]

T = TypeVar("T")

# Held for the migration transaction so that servers starting together migrate one at a time.
_MIGRATION_LOCK_KEY = 0x6469_636F_6D77_6562  # "dicomweb" in ASCII
_MAX_CONNECT_TIMEOUT = 10.0  # seconds to open one connection, at most
_ADD_ATTEMPTS = 5  # serialization failures / deadlocks retried before giving up
_RETRY_DELAY = 0.02  # seconds, doubled per attempt, jittered
_BLOB_KEY_BATCH = 1000
_CLAIM_BATCH = 1000  # derived-cache entries evicted per claim, at most (callers repeat)
_CLOSE_TIMEOUT = 10.0
# counts(): tables with fewer rows than this (by the planner's estimate) are counted exactly,
# with a count that stops at this many rows; larger ones report the estimate.
_EXACT_COUNT_ROWS = 10_000
_COUNTED = ("studies", "series", "instances")
_NO_NUMBER = INT4_MIN  # sorts instances without InstanceNumber first, as SQLite does
_SERVER_SETTINGS = {
    "application_name": "dicomweb_server",
    # ESCAPE '\' in index/sql.py relies on a backslash in a literal being itself.
    "standard_conforming_strings": "on",
}
_BY_KEY = (
    "site = $1 AND sop_instance_uid = $2 AND series_instance_uid = $3 AND study_instance_uid = $4"
)
_INSTANCE_BY_KEY = f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances WHERE {_BY_KEY}"
# The rows of several keys by one statement (arrays of site, SOP, series and study UIDs)
_INSTANCES_BY_KEYS = (
    f"SELECT {', '.join('i.' + column for column in INSTANCE_COLUMNS)}"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(site, sop, series, study)"
    " JOIN instances i ON i.site = k.site AND i.sop_instance_uid = k.sop"
    " AND i.series_instance_uid = k.series AND i.study_instance_uid = k.study"
)
# A dropped connection: the server restarted or killed our backend. A fresh one may work.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)

# A connection that cannot be trusted any more: lost, or its protocol state is broken (as when
# the server's goodbye arrives on an idle connection just before its end of stream does).
_BROKEN = (*_CONNECTION_LOST, asyncpg.exceptions.InternalClientError)


# Two transactions collided; PostgreSQL rolled one back and it may simply run again.
_COLLISION = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    _RowVanishedError,
)


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, script) of each `NNN_name.sql` under migrations/postgres, in order."""
    folder = resources.files("dicomweb_server.index") / "migrations" / "postgres"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


async def migrate(dsn: str, *, command_timeout: float = 30) -> list[int]:
    """Apply the migrations `dsn` lacks; return the versions applied now (oldest first)."""
    with _translate_errors(command_timeout):
        conn = await asyncpg.connect(
            dsn,
            timeout=min(command_timeout, _MAX_CONNECT_TIMEOUT),
            command_timeout=command_timeout,
            server_settings=_SERVER_SETTINGS,
        )
        try:
            return await _apply_migrations(conn)
        finally:
            await conn.close()


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Hand a released connection back to the pool as it is, without a reset query.

    asyncpg's default reset runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: a second round trip after each of our one-statement calls. Nothing of
    ours leaves session state behind: settings are `SET LOCAL`, advisory locks are
    transaction locks, no cursor outlives its transaction and nothing listens
    (tests/unit/test_postgres_session_state.py checks the sources). The pool still rolls back
    a transaction left open before it calls this.
    """


async def _apply_migrations(conn: Connection) -> list[int]:
    """One transaction under an advisory lock: concurrent starters wait, then find it done."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, script in _migrations():
            if version in done:
                continue
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    if applied:
        log.info("applied index migrations %s", applied)
    return applied


class PostgresInstanceIndex(
    PostgresLifecycle,
    PostgresAuditLog,
    PostgresEventLog,
    PostgresWebhookLedger,
    OrderedInstances,
):
    """InstanceIndex on PostgreSQL through an asyncpg pool, safe across many server processes.

    Deletion, restore, rejections and holds (issue 18) live in index/postgres_delete.py.
    """

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], command_timeout: float, acquire_timeout: float
    ) -> None:
        self._pool = pool
        self._timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._rows_token = index_token()  # search rows kept by this database's ids
        # Instance rows asked for in one turn of the loop (a viewer's frames): one query
        self._instance_rows: TurnBatch[InstanceKey, asyncpg.Record] = TurnBatch(
            self._instance_rows_by_key
        )

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 30,
        acquire_timeout: float | None = None,
    ) -> PostgresInstanceIndex:
        """Connect a pool to `dsn` and migrate the schema; raise IndexUnavailableError if down.

        `acquire_timeout` bounds the wait for a free connection (default: `command_timeout`).
        """
        with _translate_errors(command_timeout):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                timeout=min(command_timeout, _MAX_CONNECT_TIMEOUT),
                server_settings=_SERVER_SETTINGS,
                reset=_keep_session,
            )
        index = cls(pool, command_timeout, acquire_timeout or command_timeout)
        try:
            await index._with_connection(_apply_migrations, retry=False)
        except BaseException:
            pool.terminate()
            raise
        return index

    async def _with_connection(
        self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool = True
    ) -> T:
        """Run `fn` on a pooled connection, once more on a fresh one if the first was dropped.

        Pooled connections die with their server; the pool replaces them on the next acquire,
        so a restarted PostgreSQL is picked up without anyone reopening the index.
        """
        with _translate_errors(self._timeout):
            attempts = 2 if retry else 1
            for attempt in range(1, attempts + 1):
                conn = await self._acquire()
                try:
                    return await fn(conn)
                except _BROKEN:
                    # Never hand a connection in an unknown state back to the pool (a lost one
                    # is back in it already, detached, which terminate() reports).
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                    # Its siblings most likely died with it (a server restart): replace them all.
                    await self._pool.expire_connections()
                    if attempt == attempts:
                        raise
                    log.info("PostgreSQL connection lost; retrying on a fresh one")
                finally:
                    await self._pool.release(conn, timeout=self._acquire_timeout)
        raise AssertionError("unreachable")

    async def refresh_statistics(self, added: int) -> None:
        """ANALYZE the searched tables when `added` instances pass autovacuum's own bar for
        `instances` (`autovacuum_analyze_threshold` plus `autovacuum_analyze_scale_factor`
        of the rows it last counted), or when they were never analyzed. ANALYZE samples a
        bounded number of rows (300 times `default_statistics_target`), but on a large cold
        table that is still thousands of reads: a few files added to a big store skip it."""

        async def run(conn: Connection) -> None:
            stale = await conn.fetchval(
                "SELECT c.reltuples < 0 OR $1 >= current_setting('autovacuum_analyze_threshold')"
                "::float8 + current_setting('autovacuum_analyze_scale_factor')::float8"
                " * c.reltuples FROM pg_class c WHERE c.oid = 'instances'::regclass",
                added,
            )
            if stale:
                await conn.execute("ANALYZE studies, series, instances")

        await self._with_connection(run)

    async def _acquire(self) -> asyncpg.pool.PoolConnectionProxy[asyncpg.Record]:
        # asyncio.timeout rather than acquire(timeout=...): on Python 3.11 asyncpg bounds that
        # with wait_for, which wraps every acquire in a task of its own.
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await self._pool.acquire()
        except TimeoutError as exc:
            raise IndexUnavailableError(
                "index unavailable: no PostgreSQL connection became free within"
                f" {self._acquire_timeout:g}s"
            ) from exc

    async def add_instance(
        self, site: str, record: InstanceRecord, blob_key: str, size: int, digest: str
    ) -> AddOutcome:
        """Add under READ COMMITTED, retrying when PostgreSQL aborts a colliding transaction.

        A retry after a connection lost during COMMIT finds the row and reports IDENTICAL,
        which the store service treats as stored, as it does a repeated STOW-RS (PS3.18 10.5).
        """
        values = _InstanceValues(site, record, blob_key, size, digest)

        async def run(conn: Connection) -> AddOutcome:
            return await _retry_collisions("add_instance", lambda: values.add(conn))

        return await self._with_connection(run)

    async def add_instances(self, site: str, instances: Sequence[NewInstance]) -> list[AddOutcome]:
        """Add a batch in one transaction of a few statements (index/postgres_write.py).

        Retried as a whole on collisions, like `add_instance`; instances the batch leaves to
        one-by-one adds (a SOP Instance UID repeated within it) are added after it commits.
        """

        async def run(conn: Connection) -> list[AddOutcome | None]:
            async def attempt() -> list[AddOutcome | None]:
                async with conn.transaction(isolation="read_committed"):
                    return await add_batch(conn, site, instances)

            return await _retry_collisions("add_instances", attempt)

        outcomes = await self._with_connection(run)
        return [
            outcome
            if outcome is not None
            else await self.add_instance(site, new.record, new.blob_key, new.size, new.digest)
            for outcome, new in zip(outcomes, instances, strict=True)
        ]

    async def search(self, query: Query) -> SearchPage:
        sql = build_search(query, "postgres")
        # Every match condition is ANDed (LIMIT and OFFSET are no parameters): an integer
        # match value out of int4 range (IS allows 12 digits) cannot match any row.
        if any(isinstance(p, int) and not INT4_MIN <= p <= INT4_MAX for p in sql.params):
            return SearchPage([], False)
        params = [as_text(p) if isinstance(p, str) else p for p in sql.params]
        budget_ms = max(1, round(query.scan_timeout * 1000))

        async def run(conn: Connection) -> list[asyncpg.Record]:
            if not sql.unindexed:
                return await conn.fetch(sql.text, *params)
            # Unindexed keys may scan: PostgreSQL itself cancels the statement once the budget
            # is spent (and frees the connection), whatever happens to this client meanwhile.
            try:
                async with conn.transaction(readonly=True):
                    await conn.execute(f"SET LOCAL statement_timeout = {budget_ms}")
                    return await conn.fetch(sql.text, *params)
            except asyncpg.exceptions.QueryCanceledError as exc:
                raise scan_budget_exceeded(sql, query.scan_timeout) from exc

        keys = await self._with_connection(run)
        more = len(keys) > query.limit

        async def fetch(ids: list[int]) -> list[asyncpg.Record]:
            return await self._fetch(rows_by_id(query.level, "postgres", len(ids)), ids)

        rows, sites = await found_rows(query.level, keys[: query.limit], fetch, self._rows_token)
        return SearchPage(rows, more, sites)

    async def _fetchrow(self, text: str, *args: Any) -> asyncpg.Record | None:
        async def run(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(text, *args)

        return await self._with_connection(run)

    async def _fetch(self, text: str, *args: Any) -> list[asyncpg.Record]:
        async def run(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(text, *args)

        return await self._with_connection(run)

    async def note_cache_use(
        self, added: Sequence[tuple[str, int, float]], used: Sequence[tuple[str, float]]
    ) -> int:
        async def run(conn: Connection) -> int:
            async with conn.transaction():
                if added:
                    await conn.execute(
                        "INSERT INTO derived_cache (key, size, last_used)"
                        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[])"
                        " ON CONFLICT (key) DO UPDATE SET size = excluded.size,"
                        " last_used = excluded.last_used",
                        [key for key, _, _ in added],
                        [size for _, size, _ in added],
                        [at for _, _, at in added],
                    )
                if used:
                    await conn.execute(
                        "UPDATE derived_cache SET last_used = u.at FROM"
                        " unnest($1::text[], $2::float8[]) AS u(key, at)"
                        " WHERE derived_cache.key = u.key",
                        [key for key, _ in used],
                        [at for _, at in used],
                    )
                total = await conn.fetchval("SELECT COALESCE(SUM(size), 0) FROM derived_cache")
            return int(total)

        return await self._with_connection(run)

    async def claim_cache_victims(self, at_least: int) -> list[tuple[str, int]]:
        async def run(conn: Connection) -> list[tuple[str, int]]:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT key, size FROM derived_cache ORDER BY last_used, key LIMIT $1"
                    " FOR UPDATE SKIP LOCKED",
                    _CLAIM_BATCH,
                )
                claimed: list[tuple[str, int]] = []
                freed = 0
                for key, size in rows:
                    if freed >= at_least:
                        break
                    claimed.append((str(key), int(size)))
                    freed += int(size)
                await conn.execute(
                    "DELETE FROM derived_cache WHERE key = ANY($1::text[])",
                    [key for key, _ in claimed],
                )
            return claimed

        return await self._with_connection(run)

    async def list_sites(self) -> list[Site]:
        rows = await self._fetch(f"SELECT {', '.join(SITE_COLUMNS)} FROM sites ORDER BY name")
        return [site_from_row(row) for row in rows]

    async def get_site(self, name: str) -> Site | None:
        row = await self._fetchrow(
            f"SELECT {', '.join(SITE_COLUMNS)} FROM sites WHERE name = $1", name
        )
        return None if row is None else site_from_row(row)

    async def add_site(self, site: Site) -> None:
        marks = ", ".join(f"${n}" for n in range(1, len(SITE_COLUMNS) + 1))
        inserted = await self._fetchrow(
            f"INSERT INTO sites ({', '.join(SITE_COLUMNS)}) VALUES ({marks})"
            " ON CONFLICT (name) DO NOTHING RETURNING name",
            *site_values(site),
        )
        if inserted is None:
            raise ConflictError(f"site {site.name!r} already exists")

    async def update_site(self, site: Site) -> None:
        columns = SITE_COLUMNS[1:]
        sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(columns, start=2))
        row = await self._fetchrow(
            f"UPDATE sites SET {sets} WHERE name = $1 RETURNING name", *site_values(site)
        )
        if row is None:
            raise NotFoundError(f"site {site.name!r} does not exist")

    async def remove_site(self, name: str) -> None:
        async def run(conn: Connection) -> None:
            async with conn.transaction():
                found = await conn.fetchval("SELECT 1 FROM sites WHERE name = $1 FOR UPDATE", name)
                if found is None:
                    raise NotFoundError(f"site {name!r} does not exist")
                held = await conn.fetchval("SELECT 1 FROM studies WHERE site = $1 LIMIT 1", name)
                if held is not None:
                    raise ConflictError(f"site {name!r} holds studies: it cannot be removed")
                await conn.execute("DELETE FROM sites WHERE name = $1", name)

        await self._with_connection(run)

    async def sites_holding_study(self, study_instance_uid: str) -> list[str]:
        rows = await self._fetch(
            "SELECT site FROM studies WHERE study_instance_uid = $1 ORDER BY site",
            study_instance_uid,
        )
        return [str(row[0]) for row in rows]

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        marks = ", ".join(f"${n}" for n in range(1, len(API_KEY_COLUMNS) + 1))
        inserted = await self._fetchrow(
            f"INSERT INTO api_keys ({', '.join(API_KEY_COLUMNS)}) VALUES ({marks})"
            " ON CONFLICT DO NOTHING RETURNING key_id",
            *api_key_values(record),
        )
        if inserted is None:
            raise ConflictError(f"an API key named {record.name!r} exists already")

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._fetchrow(
            f"SELECT {', '.join(API_KEY_COLUMNS)} FROM api_keys WHERE key_id = $1", key_id
        )
        return None if row is None else api_key_from_row(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(f"SELECT {', '.join(API_KEY_COLUMNS)} FROM api_keys ORDER BY name")
        return [api_key_from_row(row) for row in rows]

    async def revoke_api_key(self, name: str, when: datetime) -> ApiKeyRecord | None:
        row = await self._fetchrow(
            "UPDATE api_keys SET revoked = COALESCE(revoked, $2) WHERE name = $1"
            f" RETURNING {', '.join(API_KEY_COLUMNS)}",
            name,
            when.timestamp(),
        )
        return None if row is None else api_key_from_row(row)

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1 FROM studies LIMIT 1")

    async def counts(self) -> Counts:
        """Exact below 10,000 rows a table, by a count that stops there; past it, the estimate
        autovacuum and ANALYZE keep in pg_class.reltuples. No page view scans 10M rows."""
        estimates = await self._fetchrow(
            "SELECT "
            + ", ".join(
                f"(SELECT reltuples FROM pg_class WHERE oid = '{t}'::regclass)" for t in _COUNTED
            )
        )
        assert estimates is not None
        small = [t for t, e in zip(_COUNTED, estimates, strict=True) if e < _EXACT_COUNT_ROWS]
        counted: dict[str, int] = {}
        if small:
            row = await self._fetchrow(
                "SELECT "
                + ", ".join(
                    f"(SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT $1) AS rows)" for t in small
                ),
                _EXACT_COUNT_ROWS,
            )
            assert row is not None
            counted = dict(zip(small, (int(n) for n in row), strict=True))
        values = []
        exact = True
        for table, estimate in zip(_COUNTED, estimates, strict=True):
            found = counted.get(table)
            if found is not None and found < _EXACT_COUNT_ROWS:
                values.append(found)
            else:  # large, or stale statistics under a table that reached the bound
                values.append(max(int(estimate), found or 0))
                exact = False
        studies, series, instances = values
        return Counts(studies, series, instances, exact=exact)

    def connections(self) -> Connections:
        size = self._pool.get_size()
        return Connections(size, size - self._pool.get_idle_size(), self._pool.get_max_size())

    async def get_instance(self, key: InstanceKey) -> StoredInstance | None:
        row = await self._instance_rows.get(key)
        return None if row is None else stored_instance(row)

    async def _instance_rows_by_key(
        self, keys: Sequence[InstanceKey]
    ) -> dict[InstanceKey, asyncpg.Record]:
        """The instance rows of `keys` (the ones that exist): what one turn's requests asked."""
        if len(keys) == 1:
            row = await self._fetchrow(_INSTANCE_BY_KEY, *_key(keys[0]))
            return {} if row is None else {keys[0]: row}
        columns = [list(column) for column in zip(*map(_key, keys), strict=True)]
        rows = await self._fetch(_INSTANCES_BY_KEYS, *columns)
        return {InstanceKey(row[0], row[1], row[2], row[3]): row for row in rows}

    async def _order(
        self,
        study: StudyKey,
        series_instance_uid: str | None,
        after: tuple[int, int, int] | None,
        most: int,
    ) -> list[tuple[Any, ...]]:
        """Up to `most` (series row, instance number, row, digest) in `iter_instances` order,
        after the `after` key: the sort carries these small columns only, never a blob."""
        params: list[Any] = [study.site, study.study_instance_uid]
        number = f"COALESCE(i.instance_number, {_NO_NUMBER})"
        if series_instance_uid is None:
            text = (
                f"SELECT se.id, {number}, i.id, i.digest"
                " FROM instances i JOIN series se ON se.site = i.site"
                " AND se.series_instance_uid = i.series_instance_uid"
                " WHERE i.site = $1 AND i.study_instance_uid = $2"
            )
            if after is not None:
                params += after
                text += f" AND (se.id, {number}, i.id) > ($3, $4, $5)"
            text += " ORDER BY 1, 2, 3"
        else:
            # One series: its series row is the same for all of its instances.
            params.append(series_instance_uid)
            text = (
                f"SELECT 0, {number}, i.id, i.digest FROM instances i"
                " WHERE i.site = $1 AND i.study_instance_uid = $2 AND i.series_instance_uid = $3"
            )
            if after is not None:
                params += after[1:]
                text += f" AND ({number}, i.id) > ($4, $5)"
            text += " ORDER BY 2, 3"
        params.append(most)
        return [tuple(row) for row in await self._fetch(f"{text} LIMIT ${len(params)}", *params)]

    async def _by_row(self, columns: str, rows: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        found = await self._fetch(
            f"SELECT i.id, {columns} FROM instances i WHERE i.id = ANY($1::bigint[])", list(rows)
        )
        return {row[0]: tuple(row)[1:] for row in found}

    async def get_metadata(self, key: InstanceKey) -> bytes | None:
        row = await self._fetchrow(f"SELECT metadata FROM instances WHERE {_BY_KEY}", *_key(key))
        return None if row is None else bytes(row[0])

    async def get_bulk_span(self, key: InstanceKey, path: str) -> tuple[int, int] | None:
        row = await self._fetchrow(f"SELECT bulk FROM instances WHERE {_BY_KEY}", *_key(key))
        if row is None or row[0] is None:
            return None
        span = orjson.loads(row[0]).get(path)
        return None if span is None else (int(span[0]), int(span[1]))

    async def series_exists(self, key: SeriesKey) -> bool:
        row = await self._fetchrow(
            "SELECT 1 FROM series WHERE site = $1 AND series_instance_uid = $2"
            " AND study_instance_uid = $3",
            key.site,
            key.series_instance_uid,
            key.study_instance_uid,
        )
        return row is not None

    async def study_versions(self, sites: Sequence[str], study_instance_uid: str) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT site, version FROM studies WHERE site = ANY($1::text[])"
            " AND study_instance_uid = $2",
            list(sites),
            study_instance_uid,
        )
        return {str(row[0]): int(row[1]) for row in rows}

    async def change_count(self) -> int | None:
        # Study versions come from a sequence, taken before their transaction commits: the
        # highest one visible does not say that nothing changed.
        return None

    async def iter_blob_keys(self, site: str | None = None) -> AsyncIterator[str]:
        after = 0
        while True:
            if site is None:
                batch = await self._fetch(
                    "SELECT id, blob_key FROM instances WHERE id > $1 ORDER BY id LIMIT $2",
                    after,
                    _BLOB_KEY_BATCH,
                )
            else:
                batch = await self._fetch(
                    "SELECT id, blob_key FROM instances WHERE site = $1 AND id > $2"
                    " ORDER BY id LIMIT $3",
                    site,
                    after,
                    _BLOB_KEY_BATCH,
                )
            for row in batch:
                yield str(row[1])
            if len(batch) < _BLOB_KEY_BATCH:
                return
            after = int(batch[-1][0])

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()


async def _retry_collisions(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` (one whole transaction) again, with jittered backoff, while it collides
    with a concurrent store; the last collision is raised."""
    delay = _RETRY_DELAY
    for number in range(1, _ADD_ATTEMPTS + 1):
        try:
            return await attempt()
        except _COLLISION:
            if number == _ADD_ATTEMPTS:
                raise
        log.info("%s collided with a concurrent store; retrying", what)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay *= 2
    raise AssertionError("unreachable")


def _key(key: InstanceKey) -> tuple[str, str, str, str]:
    return (key.site, key.sop_instance_uid, key.series_instance_uid, key.study_instance_uid)


_WORD_RE = re.compile(r"(?<!^)(?=[A-Z])")


@contextlib.contextmanager
def _translate_errors(command_timeout: float) -> Iterator[None]:
    """Turn driver and socket errors into IndexUnavailableError with a reason without values.

    The reason reaches the HTTP client, so it names the failure class and SQLSTATE only:
    PostgreSQL messages can quote the values (patient data) a statement carried.
    """
    try:
        yield
    except DicomwebError:
        raise
    except TimeoutError as exc:
        raise IndexUnavailableError(
            f"index unavailable: PostgreSQL did not answer within {command_timeout:g}s"
        ) from exc
    except OSError as exc:
        what = exc.strerror or type(exc).__name__
        raise IndexUnavailableError(f"index unavailable: cannot reach PostgreSQL ({what})") from exc
    except _CONNECTION_LOST as exc:
        raise IndexUnavailableError(
            "index unavailable: the connection to PostgreSQL was lost"
        ) from exc
    except asyncpg.PostgresError as exc:
        words = _WORD_RE.sub(" ", type(exc).__name__.removesuffix("Error")).lower()
        raise IndexUnavailableError(
            f"index unavailable: PostgreSQL error {exc.sqlstate} ({words})"
        ) from exc
    except _RowVanishedError as exc:
        raise IndexUnavailableError(
            f"index unavailable: concurrent changes kept removing the {exc} row; try again"
        ) from exc
    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
        raise IndexUnavailableError(
            f"index unavailable: PostgreSQL client error ({type(exc).__name__})"
        ) from exc
