"""PostgreSQL: the outbox written in the add (and delete) transaction, the change feed,
study.stable.

Event sequences follow commit order (migrations/postgres/006_events.sql): the last statement
of a writing transaction increments the one `event_counter` row and numbers its events from
it, holding the row lock until COMMIT, so no event can become visible after a higher-numbered
one did. The study activity rows are written just before, after the study rows, in sorted
order like them, so adds never wait for each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dicomweb_server.domain.events import (
    INSTANCE_CREATED,
    INSTANCE_DELETED,
    STUDY_STABLE,
    FeedEntry,
)
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
    from dicomweb_server.index.postgres import Connection

__all__ = ["NOW", "PostgresEventLog", "append_created", "append_deleted", "append_restored"]

T = TypeVar("T")

# The database's clock, in Unix seconds: every process on every machine uses the same one.
NOW = "extract(epoch FROM clock_timestamp())::float8"

_TYPES = ("text", "text", "text", "text", "text", "bigint", "text", "integer", "integer")
assert len(_TYPES) == len(INSERT_COLUMNS)
# One statement: take the next numbers (the row stays locked until COMMIT) and insert the
# events numbered from them, in the order given, all with the counter's time.
_APPEND = (
    "WITH counter AS (UPDATE event_counter SET last = last + $1,"
    f" at = GREATEST(at, {NOW}) RETURNING last, at)"
    f" INSERT INTO events (sequence, time, {', '.join(INSERT_COLUMNS)})"
    f" SELECT counter.last - $1 + r.n, counter.at, {', '.join(f'r.{c}' for c in INSERT_COLUMNS)}"
    " FROM counter, unnest("
    + ", ".join(f"${n + 2}::{kind}[]" for n, kind in enumerate(_TYPES))
    + f") WITH ORDINALITY AS r({', '.join(INSERT_COLUMNS)}, n)"
)
_TOUCH = (
    "INSERT INTO study_activity (site, study_instance_uid, last_change, generation)"
    f" VALUES ($1, $2, {NOW}, 1) ON CONFLICT (site, study_instance_uid) DO UPDATE SET"
    " last_change = excluded.last_change, generation = study_activity.generation + 1"
)


def _mark(n: int) -> str:
    return f"${n}"


async def _append(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Number and insert events: call it last in the transaction (it serialises commits)."""
    if rows:
        columns = [list(column) for column in zip(*rows, strict=True)]
        await conn.execute(_APPEND, len(rows), *columns)


async def append_created(
    conn: Connection, site: str, created: Sequence[tuple[InstanceRecord, int]]
) -> None:
    """In the add transaction, after the study rows: each study's activity (sorted, like the
    study rows), then an instance.created event per (record, instance row id)."""
    await append_restored(conn, site, created_changes(created))


async def append_restored(conn: Connection, site: str, changes: Sequence[InstanceChange]) -> None:
    """In the add (or restore) transaction, as its last statements: each study's activity,
    then an instance.created event per change (instances back in the index are created
    again for a consumer)."""
    if not changes:
        return
    studies = sorted({change.study_instance_uid for change in changes})
    await conn.executemany(_TOUCH, [(site, study) for study in studies])
    await _append(conn, event_rows(site, INSTANCE_CREATED, changes))


async def append_deleted(conn: Connection, site: str, deleted: Sequence[InstanceChange]) -> None:
    """In the delete transaction, as its last statement before COMMIT: an instance.deleted
    event per deleted instance (its row id and modality as they were)."""
    await _append(conn, event_rows(site, INSTANCE_DELETED, deleted))


class PostgresEventLog:
    """EventLog on the PostgreSQL index (mixed into PostgresInstanceIndex, whose pool it uses)."""

    if TYPE_CHECKING:

        async def _with_connection(
            self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool = True
        ) -> T: ...

    async def read_feed(self, page: FeedPage) -> list[FeedEntry]:
        if page.sites is not None and not page.sites:
            return []
        query = feed_query(page, _mark)

        async def run(conn: Connection) -> list[Any]:
            return await conn.fetch(query.text, *query.params)

        return [feed_entry_from_row(row) for row in await self._with_connection(run)]

    async def latest_feed_entry(
        self, sites: frozenset[str] | None, metadata: bool
    ) -> FeedEntry | None:
        if sites is not None and not sites:
            return None
        query = latest_query(sites, metadata, _mark)

        async def run(conn: Connection) -> Any:
            return await conn.fetchrow(query.text, *query.params)

        row = await self._with_connection(run)
        return None if row is None else feed_entry_from_row(row)

    async def announce_quiet_studies(self, quiet_seconds: float, limit: int) -> int:
        """Claims skip rows an add (or another announcer) holds: the add will make the study
        due again later, the other announcer announces it now; never both."""

        async def run(conn: Connection) -> int:
            async with conn.transaction(isolation="read_committed"):
                due = await conn.fetch(
                    "SELECT site, study_instance_uid, generation FROM study_activity"
                    f" WHERE generation > announced AND last_change <= {NOW} - $1"
                    " ORDER BY last_change LIMIT $2 FOR UPDATE SKIP LOCKED",
                    quiet_seconds,
                    limit,
                )
                if not due:
                    return 0
                counts = await conn.fetch(
                    "SELECT s.site, s.study_instance_uid, s.number_of_series,"
                    " s.number_of_instances, s.modalities_in_study FROM studies s"
                    " JOIN unnest($1::text[], $2::text[]) AS d(site, study)"
                    " ON s.site = d.site AND s.study_instance_uid = d.study",
                    [row[0] for row in due],
                    [row[1] for row in due],
                )
                found = {(row[0], row[1]): row for row in counts}
                rows = []
                for site, study, _ in due:
                    count = found.get((site, study))
                    if count is not None and count[3] > 0:  # deleted meanwhile: nothing
                        rows.append(
                            (STUDY_STABLE, site, study, None, None, None, count[4], *count[2:4])
                        )
                await conn.execute(
                    "UPDATE study_activity a SET announced = d.generation FROM"
                    " unnest($1::text[], $2::text[], $3::bigint[]) AS d(site, study, generation)"
                    " WHERE a.site = d.site AND a.study_instance_uid = d.study",
                    [row[0] for row in due],
                    [row[1] for row in due],
                    [row[2] for row in due],
                )
                await _append(conn, rows)
                return len(rows)

        return await self._with_connection(run)
