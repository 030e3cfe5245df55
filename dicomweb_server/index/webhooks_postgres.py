"""PostgreSQL: webhook subscriptions and deliveries, claimed with FOR UPDATE SKIP LOCKED.

A claim locks the oldest pending delivery of each (webhook, site, study) group it takes,
SKIP LOCKED so that processes claiming at once take different groups, and leases the run of
that group to its token until `lease_until`; others skip a group whose head is leased.
Deliveries of one webhook are inserted under its row lock (fan-out and replay), so their ids
grow in commit order: "oldest first" is "lowest id" and no older one can appear later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dicomweb_server.domain.events import Event, Webhook
from dicomweb_server.index.base import Delivery, DeliveryFailure, DeliveryRun, WebhookStatus
from dicomweb_server.index.events import (
    EVENT_COLUMNS,
    WEBHOOK_COLUMNS,
    WEBHOOK_COUNTS_QUERY,
    WEBHOOK_STATUS_QUERY,
    delivery_from_row,
    due_head_from_row,
    due_heads_query,
    event_from_row,
    fair_heads,
    webhook_from_row,
    webhook_row,
    webhook_statuses,
)
from dicomweb_server.index.events_postgres import NOW

if TYPE_CHECKING:
    from dicomweb_server.index.postgres import Connection

__all__ = ["PostgresWebhookLedger"]

T = TypeVar("T")
_REPLAY_BATCH = 1000

_DUE_HEADS = (
    "SELECT d.id, d.webhook_id, d.site, d.study_instance_uid FROM webhook_deliveries d"
    " JOIN (SELECT min(id) AS id FROM webhook_deliveries WHERE state = 'pending'"
    " GROUP BY webhook_id, site, study_instance_uid) h ON h.id = d.id"
    " JOIN webhooks w ON w.id = d.webhook_id"
    f" WHERE d.id = ANY($5::bigint[]) AND d.state = 'pending' AND d.next_attempt <= {NOW}"
    f" AND (d.lease_until IS NULL OR d.lease_until < {NOW})"
    " ORDER BY d.next_attempt, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED"
)
# Every group's due head ranked within its webhook, for `fair_heads` to choose the ones the
# claim then locks ($5 above; one still due and unleased when locked is leased).
_RANKED_HEADS = due_heads_query(NOW, "$1")
_CLAIM_LOCK_KEY = 0x64_7768_6F6F_6B73  # pg_advisory_xact_lock key of a claim: "dwhooks"


_EVENT_COLUMNS_OF_E = ", ".join(f"e.{column.strip()}" for column in EVENT_COLUMNS.split(","))
# One statement (one round trip): lock the due heads (SKIP LOCKED: claimers at once take
# different groups), lease each head's run to its own token, and return the runs with their
# events; the last column is the token.
_CLAIM = (
    f"WITH heads AS ({_DUE_HEADS}),"
    " runs AS (SELECT r.id, h.id AS head FROM heads h CROSS JOIN LATERAL"
    " (SELECT x.id FROM webhook_deliveries x WHERE x.webhook_id = h.webhook_id"
    " AND x.site = h.site AND x.study_instance_uid = h.study_instance_uid"
    " AND x.state = 'pending' ORDER BY x.id LIMIT $2) r),"
    " leased AS (UPDATE webhook_deliveries d SET lease_token = $3 || ':' || runs.head,"
    f" lease_until = {NOW} + $4 FROM runs WHERE d.id = runs.id"
    " RETURNING d.id, d.webhook_id, d.attempts, d.created, d.sequence, d.lease_token)"
    f" SELECT l.id, l.webhook_id, l.attempts, {NOW} - l.created, {_EVENT_COLUMNS_OF_E},"
    " l.lease_token FROM leased l JOIN events e ON e.sequence = l.sequence"
)
# One statement for a lease holder's progress: the delivered ones, the failed one (retried
# later or dead), and the rest of its run kept ($7 seconds more) or released ($7 NULL).
# Each sub-statement touches other rows; the counts say whether the lease was still held.
_SETTLE = (
    "WITH done AS (UPDATE webhook_deliveries SET state = 'delivered',"
    f" finished = {NOW}, attempts = attempts + 1, lease_token = NULL, lease_until = NULL"
    " WHERE lease_token = $1 AND id = ANY($2::bigint[]) RETURNING id),"
    " failed AS (UPDATE webhook_deliveries SET state = $4, attempts = attempts + 1,"
    f" last_error = $5, next_attempt = {NOW} + $6::float8,"
    f" finished = CASE WHEN $4 = 'dead' THEN {NOW} END, lease_token = NULL,"
    " lease_until = NULL WHERE id = $3 AND lease_token = $1 RETURNING id),"
    " rest AS (UPDATE webhook_deliveries SET"
    " lease_token = CASE WHEN $7::float8 IS NULL THEN NULL ELSE lease_token END,"
    f" lease_until = CASE WHEN $7::float8 IS NULL THEN NULL ELSE {NOW} + $7::float8 END"
    " WHERE lease_token = $1 AND NOT id = ANY($2::bigint[]) AND id IS DISTINCT FROM $3"
    " RETURNING id)"
    " SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM failed),"
    " (SELECT count(*) FROM rest)"
)


async def _queue(conn: Connection, webhook: Webhook, events: Sequence[Event]) -> int:
    """Insert a delivery of each event `webhook` matches, in sequence order (ids follow)."""
    matched = [e for e in events if webhook.matches(e)]
    if matched:
        await conn.execute(
            "INSERT INTO webhook_deliveries (webhook_id, sequence, site, study_instance_uid,"
            f" created, next_attempt) SELECT $1, u.sequence, u.site, u.study, {NOW}, {NOW}"
            " FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(sequence, site, study)"
            " ORDER BY u.sequence",
            webhook.id,
            [e.sequence for e in matched],
            [e.site for e in matched],
            [e.study_instance_uid for e in matched],
        )
    return len(matched)


def _count(status: str) -> int:
    """Rows an UPDATE or DELETE status string (`UPDATE 3`) says it touched."""
    return int(status.rpartition(" ")[2] or 0)


class PostgresWebhookLedger:
    """WebhookLedger on the PostgreSQL index (mixed into PostgresInstanceIndex)."""

    if TYPE_CHECKING:

        async def _with_connection(
            self, fn: Callable[[Connection], Awaitable[T]], *, retry: bool = True
        ) -> T: ...

    async def add_webhook(self, webhook: Webhook) -> Webhook:
        async def run(conn: Connection) -> Webhook:
            # Events committed so far are before the cursor: the counter row is the last one
            # committed (a writer holding it commits after this reads it, numbered higher).
            row = await conn.fetchrow(
                "INSERT INTO webhooks (url, secret_env, site, events, modalities, allow_private,"
                f" cursor, created) VALUES ($1, $2, $3, $4, $5, $6,"
                f" (SELECT last FROM event_counter), {NOW}) RETURNING {WEBHOOK_COLUMNS}",
                *webhook_row(webhook),
            )
            return webhook_from_row(row)

        return await self._with_connection(run, retry=False)

    async def get_webhooks(self) -> list[Webhook]:
        async def run(conn: Connection) -> list[Webhook]:
            rows = await conn.fetch(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id")
            return [webhook_from_row(row) for row in rows]

        return await self._with_connection(run)

    async def list_webhooks(self) -> list[WebhookStatus]:
        async def run(conn: Connection) -> list[WebhookStatus]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                hooks = await conn.fetch(WEBHOOK_STATUS_QUERY)
                counted = await conn.fetch(WEBHOOK_COUNTS_QUERY)
            return webhook_statuses(hooks, counted)

        return await self._with_connection(run)

    async def remove_webhook(self, webhook_id: int) -> bool:
        async def run(conn: Connection) -> bool:
            # The subscription row, then its deliveries: the order every writer locks them in.
            async with conn.transaction():
                gone = await conn.execute("DELETE FROM webhooks WHERE id = $1", webhook_id)
                await conn.execute(
                    "DELETE FROM webhook_deliveries WHERE webhook_id = $1", webhook_id
                )
            return _count(gone) > 0

        return await self._with_connection(run, retry=False)

    async def replay_webhook(self, webhook_id: int, since: float) -> int | None:
        async def run(conn: Connection) -> int | None:
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT {WEBHOOK_COLUMNS}, cursor FROM webhooks WHERE id = $1 FOR UPDATE",
                    webhook_id,
                )
                if row is None:
                    return None
                webhook, cursor = webhook_from_row(row), int(row[8])
                queued, after = 0, 0
                while True:
                    batch = await conn.fetch(
                        f"SELECT {EVENT_COLUMNS} FROM events WHERE time >= $1 AND sequence > $2"
                        " AND sequence <= $3 ORDER BY sequence LIMIT $4",
                        since,
                        after,
                        cursor,
                        _REPLAY_BATCH,
                    )
                    events = [event_from_row(e) for e in batch]
                    queued += await _queue(conn, webhook, events)
                    if len(batch) < _REPLAY_BATCH:
                        return queued
                    after = events[-1].sequence

        return await self._with_connection(run, retry=False)

    async def fan_out(self, limit: int) -> int:
        async def run(conn: Connection) -> int:
            behind = await conn.fetch(
                "SELECT id FROM webhooks WHERE cursor < (SELECT last FROM event_counter)"
                " ORDER BY id"
            )
            queued = 0
            for (webhook_id,) in behind:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        f"SELECT {WEBHOOK_COLUMNS}, cursor FROM webhooks WHERE id = $1"
                        " FOR UPDATE SKIP LOCKED",
                        webhook_id,
                    )
                    if row is None:  # another process is fanning it out
                        continue
                    batch = await conn.fetch(
                        f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > $1"
                        " ORDER BY sequence LIMIT $2",
                        int(row[8]),
                        limit,
                    )
                    if not batch:
                        continue
                    events = [event_from_row(e) for e in batch]
                    queued += await _queue(conn, webhook_from_row(row), events)
                    await conn.execute(
                        "UPDATE webhooks SET cursor = $1 WHERE id = $2",
                        events[-1].sequence,
                        webhook_id,
                    )
            return queued

        return await self._with_connection(run)

    async def claim_deliveries(
        self,
        owner: str,
        groups: int,
        run: int,
        lease_seconds: float,
        busy: Mapping[int, int] | None = None,
    ) -> list[DeliveryRun]:
        async def claim(conn: Connection) -> list[Any]:
            # Claims one at a time across processes: each sees the runs the one before it
            # leased, so the shares hold and two claimers never pick the same heads.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CLAIM_LOCK_KEY)
                ranked = await conn.fetch(_RANKED_HEADS, groups)
                chosen = fair_heads([due_head_from_row(r) for r in ranked], groups, busy or {})
                if not chosen:
                    return []
                return await conn.fetch(_CLAIM, groups, run, owner, lease_seconds, chosen)

        rows = await self._with_connection(claim, retry=False)
        runs: dict[str, list[Delivery]] = {}
        for row in sorted(rows, key=lambda row: int(row[0])):
            runs.setdefault(str(row[-1]), []).append(delivery_from_row(row[:-1]))
        return [DeliveryRun(token, deliveries) for token, deliveries in runs.items()]

    async def settle_deliveries(
        self,
        token: str,
        delivered: Sequence[int],
        failed: DeliveryFailure | None,
        keep_seconds: float | None,
    ) -> bool:
        args = (
            token,
            list(delivered),
            None if failed is None else failed.id,
            None if failed is None else ("dead" if failed.dead else "pending"),
            None if failed is None else failed.error,
            None if failed is None else failed.retry_in,
            keep_seconds,
        )

        async def run(conn: Connection) -> Any:
            if failed is None:
                return await conn.fetchrow(_SETTLE, *args)
            async with conn.transaction():
                # The subscription row first, as fan-out, replay and remove lock it before
                # deliveries: one lock order, no deadlock.
                await conn.execute(
                    "UPDATE webhooks SET last_error = $1 WHERE id ="
                    " (SELECT webhook_id FROM webhook_deliveries WHERE id = $2)",
                    failed.error,
                    failed.id,
                )
                return await conn.fetchrow(_SETTLE, *args)

        done, failures, rest = await self._with_connection(run, retry=False)
        if not delivered and failed is None:
            return bool(rest)
        return bool(done == len(delivered) and failures == (0 if failed is None else 1))

    async def prune_deliveries(self, older_than_seconds: float) -> int:
        async def run(conn: Connection) -> int:
            # Rows two pruners both see are deleted (and counted) by one of them only.
            rows: list[Any] = await conn.fetch(
                "WITH gone AS (DELETE FROM webhook_deliveries WHERE state = 'delivered'"
                f" AND finished < {NOW} - $1 RETURNING webhook_id),"
                " tally AS (SELECT webhook_id, count(*) AS n FROM gone GROUP BY webhook_id),"
                " counted AS (UPDATE webhooks w SET delivered_pruned = delivered_pruned + tally.n"
                " FROM tally WHERE w.id = tally.webhook_id RETURNING tally.n)"
                " SELECT COALESCE(sum(n), 0) FROM tally",
                older_than_seconds,
            )
            return int(rows[0][0])

        return await self._with_connection(run)
