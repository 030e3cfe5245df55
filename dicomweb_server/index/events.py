"""What both indexes share for events: outbox rows, the change feed query, subscription rows.

SQLite and PostgreSQL differ in how they number events (index/events_sqlite.py,
index/events_postgres.py) and lock claims, never in what an event row holds or what the
feed returns: both build those here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomweb_server.domain.events import (
    FEED_TYPES,
    INSTANCE_CREATED,
    INSTANCE_DELETED,
    Event,
    FeedEntry,
    Webhook,
)
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.base import Delivery, FeedPage, WebhookStatus

__all__ = [
    "DELIVERY_SELECT",
    "EVENT_COLUMNS",
    "INSERT_COLUMNS",
    "WEBHOOK_COLUMNS",
    "WEBHOOK_COUNTS_QUERY",
    "WEBHOOK_STATUS_QUERY",
    "DueHead",
    "FeedQuery",
    "InstanceChange",
    "created_changes",
    "delivery_from_row",
    "due_head_from_row",
    "due_heads_query",
    "event_from_row",
    "event_rows",
    "fair_heads",
    "feed_entry_from_row",
    "feed_query",
    "latest_query",
    "webhook_from_row",
    "webhook_row",
    "webhook_statuses",
]

# Columns of an event row as read back, in `event_from_row` order.
EVENT_COLUMNS = (
    "sequence, type, site, study_instance_uid, series_instance_uid, sop_instance_uid, time,"
    " modalities, number_of_series, number_of_instances"
)
# Columns written per event (the number comes from the backend).
INSERT_COLUMNS = (
    "type",
    "site",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "instance_id",
    "modalities",
    "number_of_series",
    "number_of_instances",
)
WEBHOOK_COLUMNS = "id, url, secret_env, site, events, modalities, allow_private, created"


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """An instance created or deleted in the transaction at hand: what its event records.

    `instance_id` is the id of the instance row (the version the event is about); the
    modality is its series' (webhook filters match it), empty if unknown.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_id: int | None
    modality: str = ""


def created_changes(created: Sequence[tuple[InstanceRecord, int]]) -> list[InstanceChange]:
    """The changes of instances just inserted, as (record, instance row id)."""
    return [
        InstanceChange(
            record.study_instance_uid,
            record.series_instance_uid,
            record.sop_instance_uid,
            row_id,
            str(record.series_columns.get("modality") or ""),
        )
        for record, row_id in created
    ]


def event_rows(
    site: str, event_type: str, changes: Sequence[InstanceChange]
) -> list[tuple[Any, ...]]:
    """INSERT_COLUMNS values of each change's event."""
    return [
        (
            event_type,
            site,
            change.study_instance_uid,
            change.series_instance_uid,
            change.sop_instance_uid,
            change.instance_id,
            change.modality,
            None,
            None,
        )
        for change in changes
    ]


def _modalities(joined: str | None) -> frozenset[str]:
    return frozenset(item for item in (joined or "").split("\\") if item)


def event_from_row(row: Sequence[Any] | Any) -> Event:
    """An Event from EVENT_COLUMNS."""
    return Event(
        sequence=int(row[0]),
        type=str(row[1]),
        site=str(row[2]),
        study_instance_uid=str(row[3]),
        series_instance_uid=None if row[4] is None else str(row[4]),
        sop_instance_uid=None if row[5] is None else str(row[5]),
        time=float(row[6]),
        modalities=_modalities(row[7]),
        number_of_series=None if row[8] is None else int(row[8]),
        number_of_instances=None if row[9] is None else int(row[9]),
    )


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """SQL text and its parameters."""

    text: str
    params: list[Any]


# The state of the instance an entry is about, judged now (Microsoft's current / replaced /
# deleted): its row is still there; another row has its SOP Instance UID; neither.
_FEED_SELECT = (
    "SELECT e.sequence, e.type, e.site, e.study_instance_uid, e.series_instance_uid,"
    " e.sop_instance_uid, e.time, e.modalities, e.number_of_series, e.number_of_instances,"
    " CASE WHEN i.id IS NOT NULL THEN 'current' WHEN EXISTS (SELECT 1 FROM instances j"
    " WHERE j.site = e.site AND j.sop_instance_uid = e.sop_instance_uid) THEN 'replaced'"
    " ELSE 'deleted' END, {metadata}"
    " FROM events e LEFT JOIN instances i ON i.id = e.instance_id AND i.site = e.site"
    " AND i.sop_instance_uid = e.sop_instance_uid"
    f" WHERE e.type IN ('{FEED_TYPES[0]}', '{FEED_TYPES[1]}')"
)
assert FEED_TYPES == (INSTANCE_CREATED, INSTANCE_DELETED)


def _feed_where(sites: frozenset[str], mark: Callable[[int], str], params: list[Any]) -> str:
    marks = []
    for site in sorted(sites):
        params.append(site)
        marks.append(mark(len(params)))
    return f" AND e.site IN ({', '.join(marks)})"


def feed_query(page: FeedPage, mark: Callable[[int], str]) -> FeedQuery:
    """The page's query; `mark(n)` is the n-th placeholder (`?` or `$n`). `page.sites` must
    not be empty (no site: no entries, decided by the caller)."""
    params: list[Any] = []
    metadata = "i.metadata" if page.metadata else "NULL"
    text = _FEED_SELECT.format(metadata=metadata)
    params.append(page.after)
    text += f" AND e.sequence > {mark(len(params))}"
    if page.sites is not None:
        text += _feed_where(page.sites, mark, params)
    if page.start is not None:
        params.append(page.start)
        text += f" AND e.time >= {mark(len(params))}"
    if page.end is not None:
        params.append(page.end)
        text += f" AND e.time < {mark(len(params))}"
    params.append(page.limit)
    text += f" ORDER BY e.sequence LIMIT {mark(len(params))}"
    params.append(page.skip)
    text += f" OFFSET {mark(len(params))}"
    return FeedQuery(text, params)


def latest_query(
    sites: frozenset[str] | None, metadata: bool, mark: Callable[[int], str]
) -> FeedQuery:
    """The query of the feed's latest entry."""
    params: list[Any] = []
    text = _FEED_SELECT.format(metadata="i.metadata" if metadata else "NULL")
    if sites is not None:
        text += _feed_where(sites, mark, params)
    return FeedQuery(text + " ORDER BY e.sequence DESC LIMIT 1", params)


def feed_entry_from_row(row: Sequence[Any] | Any) -> FeedEntry:
    """A FeedEntry from a feed query row."""
    metadata = row[11]
    return FeedEntry(
        event_from_row(row[:10]),
        str(row[10]),
        None if metadata is None else bytes(metadata),
    )


def webhook_row(webhook: Webhook) -> tuple[Any, ...]:
    """(url, secret_env, site, events, modalities, allow_private) of a new subscription."""
    return (
        webhook.url,
        webhook.secret_env,
        webhook.site,
        ",".join(sorted(webhook.events)),
        ",".join(sorted(webhook.modalities)),
        webhook.allow_private,
    )


def webhook_from_row(row: Sequence[Any] | Any) -> Webhook:
    """A Webhook from WEBHOOK_COLUMNS."""
    return Webhook(
        id=int(row[0]),
        url=str(row[1]),
        secret_env=str(row[2]),
        site=None if row[3] is None else str(row[3]),
        events=frozenset(name for name in str(row[4]).split(",") if name),
        modalities=frozenset(name for name in str(row[5]).split(",") if name),
        allow_private=bool(row[6]),
        created=float(row[7]),
    )


# `list_webhooks`: the subscriptions with what was pruned and the last error, then the
# deliveries counted by state (both read in one snapshot by the caller).
WEBHOOK_STATUS_QUERY = (
    f"SELECT {WEBHOOK_COLUMNS}, delivered_pruned, last_error FROM webhooks ORDER BY id"
)
WEBHOOK_COUNTS_QUERY = (
    "SELECT webhook_id, state, count(*) FROM webhook_deliveries GROUP BY webhook_id, state"
)


def webhook_statuses(
    hooks: Sequence[Sequence[Any] | Any], counted: Sequence[Sequence[Any] | Any]
) -> list[WebhookStatus]:
    """The rows of WEBHOOK_STATUS_QUERY and WEBHOOK_COUNTS_QUERY as statuses (delivered
    counts what is still in the table plus what was pruned)."""
    counts = {(int(r[0]), str(r[1])): int(r[2]) for r in counted}
    return [
        WebhookStatus(
            webhook_from_row(row),
            pending=counts.get((int(row[0]), "pending"), 0),
            delivered=counts.get((int(row[0]), "delivered"), 0) + int(row[8]),
            dead=counts.get((int(row[0]), "dead"), 0),
            last_error=row[9],
        )
        for row in hooks
    ]


# A claimed delivery with its event: delivery columns, then EVENT_COLUMNS of `e`.
DELIVERY_SELECT = (
    "SELECT d.id, d.webhook_id, d.attempts, {age}, e.sequence, e.type, e.site,"
    " e.study_instance_uid, e.series_instance_uid, e.sop_instance_uid, e.time, e.modalities,"
    " e.number_of_series, e.number_of_instances"
    " FROM webhook_deliveries d JOIN events e ON e.sequence = d.sequence"
)


def delivery_from_row(row: Sequence[Any] | Any) -> Delivery:
    """A Delivery from DELIVERY_SELECT."""
    return Delivery(
        id=int(row[0]),
        webhook_id=int(row[1]),
        event=event_from_row(row[4:]),
        attempts=int(row[2]),
        age=float(row[3]),
    )


def due_heads_query(now: str, limit: str) -> str:
    """The due, unleased head of each (webhook, site, study) group, ranked within its
    webhook by (next attempt, id), at most `limit` per webhook; `now` is the clock in SQL
    (SQLite: a parameter, PostgreSQL: its clock). Each row also says whether the webhook is
    retrying (a head of it failed before) and how many of its runs are leased right now,
    by any process, which `fair_heads` needs. Reads every pending group once, as the
    unranked claim did."""
    return (
        "WITH heads AS (SELECT d.id, d.webhook_id, d.next_attempt, d.attempts, d.lease_until"
        " FROM webhook_deliveries d JOIN (SELECT min(id) AS id FROM webhook_deliveries"
        " WHERE state = 'pending' GROUP BY webhook_id, site, study_instance_uid) h"
        " ON h.id = d.id JOIN webhooks w ON w.id = d.webhook_id),"
        " hooks AS (SELECT webhook_id, max(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS retrying,"
        f" sum(CASE WHEN lease_until >= {now} THEN 1 ELSE 0 END) AS leased"
        " FROM heads GROUP BY webhook_id),"
        " ranked AS (SELECT h.id, h.webhook_id, h.next_attempt, k.retrying, k.leased,"
        " row_number() OVER (PARTITION BY h.webhook_id ORDER BY h.next_attempt, h.id) AS rank"
        " FROM heads h JOIN hooks k ON k.webhook_id = h.webhook_id"
        f" WHERE h.next_attempt <= {now} AND (h.lease_until IS NULL OR h.lease_until < {now}))"
        " SELECT id, webhook_id, retrying, leased FROM ranked"
        f" WHERE rank <= {limit} ORDER BY rank, next_attempt, id"
    )


@dataclass(frozen=True, slots=True)
class DueHead:
    """A group a claim may take: its head delivery, its webhook, whether that webhook is
    retrying, and how many of its runs are leased now (by any process)."""

    id: int
    webhook_id: int
    retrying: bool
    leased: int


def due_head_from_row(row: Sequence[Any] | Any) -> DueHead:
    return DueHead(int(row[0]), int(row[1]), bool(row[2]), int(row[3] or 0))


def fair_heads(heads: Sequence[DueHead], groups: int, busy: Mapping[int, int]) -> list[int]:
    """The heads to lease, at most `groups`, in the order given (ranked within each webhook),
    so that no receiver holds every slot: this process's slots (`groups` free plus those
    `busy` with each webhook's runs) are shared evenly between the webhooks with work, and a
    webhook whose receiver is failing (retrying) gets one run at a time across all processes
    until it answers again. A dead or slow receiver then delays only its own events."""
    retrying = {head.webhook_id for head in heads if head.retrying}
    active = {head.webhook_id for head in heads} | {w for w, n in busy.items() if n > 0}
    capacity = groups + sum(busy.values()) - len(retrying)
    share = max(1, -(-capacity // max(1, len(active - retrying))))
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for head in heads:
        if len(chosen) == groups:
            break
        webhook = head.webhook_id
        count = taken.get(webhook, 0)
        if head.retrying:
            if head.leased + count >= 1:
                continue
        elif busy.get(webhook, 0) + count >= share:
            continue
        taken[webhook] = count + 1
        chosen.append(head.id)
    return chosen
