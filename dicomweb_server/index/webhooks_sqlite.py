"""SQLite: webhook subscriptions and deliveries; claims in IMMEDIATE transactions with leases.

Every change is a BEGIN IMMEDIATE transaction, so one process at a time claims, settles or
fans out; a lease (token, expiry) keeps a claimed run from other processes until it is
settled or expires. Idle polls only read: nothing takes the write lock when nothing is due.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from dicomweb_server.domain.events import Event, Webhook
from dicomweb_server.index.base import DeliveryFailure, DeliveryRun, WebhookStatus
from dicomweb_server.index.events import (
    DELIVERY_SELECT,
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

__all__ = ["SqliteWebhookLedger"]

T = TypeVar("T")
_REPLAY_BATCH = 1000

# The oldest pending delivery of each (webhook, site, study): only these can be claimed.
# (Whether any is due, read without the write lock.)
_DUE_HEADS = (
    "SELECT d.id, d.webhook_id, d.site, d.study_instance_uid FROM webhook_deliveries d"
    " JOIN (SELECT min(id) AS id FROM webhook_deliveries WHERE state = 'pending'"
    " GROUP BY webhook_id, site, study_instance_uid) h ON h.id = d.id"
    " JOIN webhooks w ON w.id = d.webhook_id"
    " WHERE d.next_attempt <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)"
    " ORDER BY d.next_attempt, d.id LIMIT ?"
)

# Every group's due head ranked within its webhook, for `fair_heads` to choose from.
_RANKED_HEADS = due_heads_query(":now", ":groups")


def _immediate(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _queue(conn: sqlite3.Connection, webhook: Webhook, events: Sequence[Event], now: float) -> int:
    """Insert a delivery of each event `webhook` matches, in sequence order."""
    rows = [
        (webhook.id, e.sequence, e.site, e.study_instance_uid, now, now)
        for e in events
        if webhook.matches(e)
    ]
    conn.executemany(
        "INSERT INTO webhook_deliveries (webhook_id, sequence, site, study_instance_uid,"
        " created, next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqliteWebhookLedger:
    """WebhookLedger on the SQLite index (mixed into SqliteInstanceIndex)."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def add_webhook(self, webhook: Webhook) -> Webhook:
        def run(conn: sqlite3.Connection) -> Webhook:
            def insert() -> Webhook:
                now = time.time()
                cursor = conn.execute(
                    "INSERT INTO webhooks (url, secret_env, site, events, modalities,"
                    " allow_private, cursor, created) VALUES (?, ?, ?, ?, ?, ?,"
                    " (SELECT COALESCE(MAX(sequence), 0) FROM events), ?)",
                    (*webhook_row(webhook), now),
                )
                row = conn.execute(
                    f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (cursor.lastrowid,)
                ).fetchone()
                return webhook_from_row(row)

            return _immediate(conn, insert)

        return await self._write(run)

    async def get_webhooks(self) -> list[Webhook]:
        def run(conn: sqlite3.Connection) -> list[Webhook]:
            rows = conn.execute(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id")
            return [webhook_from_row(row) for row in rows]

        return await self._read(run)

    async def list_webhooks(self) -> list[WebhookStatus]:
        def run(conn: sqlite3.Connection) -> list[WebhookStatus]:
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                hooks = conn.execute(WEBHOOK_STATUS_QUERY).fetchall()
                counted = conn.execute(WEBHOOK_COUNTS_QUERY).fetchall()
            finally:
                conn.execute("COMMIT")
            return webhook_statuses(hooks, counted)

        return await self._read(run)

    async def remove_webhook(self, webhook_id: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            def delete() -> bool:
                conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
                gone = conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
                return gone.rowcount > 0

            return _immediate(conn, delete)

        return await self._write(run)

    async def replay_webhook(self, webhook_id: int, since: float) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            def replay() -> int | None:
                row = conn.execute(
                    f"SELECT {WEBHOOK_COLUMNS}, cursor FROM webhooks WHERE id = ?", (webhook_id,)
                ).fetchone()
                if row is None:
                    return None
                webhook, cursor, now = webhook_from_row(row), int(row[8]), time.time()
                queued, after = 0, 0
                while True:
                    batch = conn.execute(
                        f"SELECT {EVENT_COLUMNS} FROM events WHERE time >= ? AND sequence > ?"
                        " AND sequence <= ? ORDER BY sequence LIMIT ?",
                        (since, after, cursor, _REPLAY_BATCH),
                    ).fetchall()
                    events = [event_from_row(e) for e in batch]
                    queued += _queue(conn, webhook, events, now)
                    if len(batch) < _REPLAY_BATCH:
                        return queued
                    after = events[-1].sequence

            return _immediate(conn, replay)

        return await self._write(run)

    async def fan_out(self, limit: int) -> int:
        def behind(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM webhooks WHERE cursor <"
                " (SELECT COALESCE(MAX(sequence), 0) FROM events) LIMIT 1"
            ).fetchone()
            return row is not None

        if not await self._read(behind):
            return 0

        def run(conn: sqlite3.Connection) -> int:
            def fan() -> int:
                now, queued = time.time(), 0
                hooks = conn.execute(
                    f"SELECT {WEBHOOK_COLUMNS}, cursor FROM webhooks ORDER BY id"
                ).fetchall()
                for row in hooks:
                    webhook = webhook_from_row(row)
                    batch = conn.execute(
                        f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ?"
                        " ORDER BY sequence LIMIT ?",
                        (int(row[8]), limit),
                    ).fetchall()
                    if not batch:
                        continue
                    events = [event_from_row(e) for e in batch]
                    queued += _queue(conn, webhook, events, now)
                    conn.execute(
                        "UPDATE webhooks SET cursor = ? WHERE id = ?",
                        (events[-1].sequence, webhook.id),
                    )
                return queued

            return _immediate(conn, fan)

        return await self._write(run)

    async def claim_deliveries(
        self,
        owner: str,
        groups: int,
        run: int,
        lease_seconds: float,
        busy: Mapping[int, int] | None = None,
    ) -> list[DeliveryRun]:
        def due(conn: sqlite3.Connection) -> bool:
            now = time.time()
            return bool(conn.execute(_DUE_HEADS, (now, now, 1)).fetchall())

        if not await self._read(due):
            return []

        def claim(conn: sqlite3.Connection) -> list[DeliveryRun]:
            def leased() -> list[DeliveryRun]:
                now = time.time()
                runs: dict[str, list[int]] = {}
                ranked = conn.execute(_RANKED_HEADS, {"now": now, "groups": groups}).fetchall()
                chosen = fair_heads([due_head_from_row(r) for r in ranked], groups, busy or {})
                heads = conn.execute(
                    "SELECT id, webhook_id, site, study_instance_uid FROM webhook_deliveries"
                    f" WHERE id IN ({_marks(len(chosen))}) ORDER BY id",
                    chosen,
                ).fetchall()
                for head, webhook_id, site, study in heads:
                    ids = conn.execute(
                        "SELECT id FROM webhook_deliveries WHERE webhook_id = ? AND site = ?"
                        " AND study_instance_uid = ? AND state = 'pending' ORDER BY id LIMIT ?",
                        (webhook_id, site, study, run),
                    ).fetchall()
                    token = f"{owner}:{head}"
                    runs[token] = [int(i) for (i,) in ids]
                    conn.execute(
                        "UPDATE webhook_deliveries SET lease_token = ?, lease_until = ?"
                        f" WHERE id IN ({_marks(len(ids))})",
                        (token, now + lease_seconds, *runs[token]),
                    )
                every = [i for ids in runs.values() for i in ids]
                if not every:
                    return []
                rows = conn.execute(
                    DELIVERY_SELECT.format(age="? - d.created")
                    + f" WHERE d.id IN ({_marks(len(every))})",
                    (now, *every),
                ).fetchall()
                found = {int(row[0]): delivery_from_row(row) for row in rows}
                return [DeliveryRun(t, [found[i] for i in ids]) for t, ids in runs.items()]

            return _immediate(conn, leased)

        return await self._write(claim)

    async def settle_deliveries(
        self,
        token: str,
        delivered: Sequence[int],
        failed: DeliveryFailure | None,
        keep_seconds: float | None,
    ) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            def settle() -> bool:
                now = time.time()
                held = True
                if delivered:
                    done = conn.execute(
                        "UPDATE webhook_deliveries SET state = 'delivered', finished = ?,"
                        " attempts = attempts + 1, lease_token = NULL, lease_until = NULL"
                        f" WHERE lease_token = ? AND id IN ({_marks(len(delivered))})",
                        (now, token, *delivered),
                    )
                    held = done.rowcount == len(delivered)
                if failed is not None:
                    state = "dead" if failed.dead else "pending"
                    done = conn.execute(
                        "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
                        " last_error = ?, next_attempt = ?, finished = ?,"
                        " lease_token = NULL, lease_until = NULL WHERE id = ? AND lease_token = ?",
                        (
                            state,
                            failed.error,
                            now + failed.retry_in,
                            now if failed.dead else None,
                            failed.id,
                            token,
                        ),
                    )
                    held = held and done.rowcount == 1
                    conn.execute(
                        "UPDATE webhooks SET last_error = ? WHERE id ="
                        " (SELECT webhook_id FROM webhook_deliveries WHERE id = ?)",
                        (failed.error, failed.id),
                    )
                if keep_seconds is None:
                    conn.execute(
                        "UPDATE webhook_deliveries SET lease_token = NULL, lease_until = NULL"
                        " WHERE lease_token = ?",
                        (token,),
                    )
                else:
                    kept = conn.execute(
                        "UPDATE webhook_deliveries SET lease_until = ? WHERE lease_token = ?",
                        (now + keep_seconds, token),
                    )
                    if not delivered and failed is None:
                        held = kept.rowcount > 0
                return held

            return _immediate(conn, settle)

        return await self._write(run)

    async def prune_deliveries(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds

        def run(conn: sqlite3.Connection) -> int:
            def prune() -> int:
                counts = conn.execute(
                    "SELECT webhook_id, count(*) FROM webhook_deliveries"
                    " WHERE state = 'delivered' AND finished < ? GROUP BY webhook_id",
                    (cutoff,),
                ).fetchall()
                conn.executemany(
                    "UPDATE webhooks SET delivered_pruned = delivered_pruned + ? WHERE id = ?",
                    [(int(n), int(w)) for w, n in counts],
                )
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished < ?",
                    (cutoff,),
                )
                return sum(int(n) for _, n in counts)

            return _immediate(conn, prune)

        return await self._write(run)
