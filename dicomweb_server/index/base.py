"""The InstanceIndex protocol: add an instance atomically, search, look up, list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from dicomweb_server.domain.events import Event, FeedEntry, Webhook
from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.query import Query
from dicomweb_server.domain.records import InstanceRecord, StoredInstance

__all__ = [
    "AddOutcome",
    "CacheLedger",
    "Delivery",
    "DeliveryFailure",
    "DeliveryRun",
    "EventLog",
    "FeedPage",
    "InstanceIndex",
    "SearchPage",
    "ServerIndex",
    "StoredInstance",
    "WebhookLedger",
    "WebhookStatus",
]


class AddOutcome(StrEnum):
    """What `add_instance` did."""

    CREATED = "created"  # new instance, now visible
    IDENTICAL = "identical"  # same SOP Instance UID with the same content digest: kept one copy
    CONFLICT = "conflict"  # same SOP Instance UID, different content or different study/series


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of QIDO results as DICOM JSON objects (stored and computed attributes).

    `more` is True when results exist beyond this page.
    """

    rows: list[dict[str, Any]]
    more: bool


class InstanceIndex(Protocol):
    """The searchable catalogue of stored instances, partitioned by site.

    An instance becomes visible to every method only when `add_instance` returns CREATED:
    the caller writes the blob first, so a visible row always has a durable object.
    Backend faults raise BackendUnavailableError.
    """

    async def add_instance(
        self, site: str, record: InstanceRecord, blob_key: str, size: int, digest: str
    ) -> AddOutcome:
        """Insert the instance and update study/series aggregates in one transaction."""
        ...

    async def search(self, query: Query) -> SearchPage:
        """Run a QIDO query; rows hold the level's attributes plus computed ones."""
        ...

    async def get_instance(self, key: InstanceKey) -> StoredInstance | None:
        """The instance, or None."""
        ...

    def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        """Instances of a study (or one series), ordered by series then instance number."""
        ...

    def iter_metadata(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[bytes]:
        """The stored DICOM JSON of each instance, in `iter_instances` order."""
        ...

    async def get_metadata(self, key: InstanceKey) -> bytes | None:
        """The stored DICOM JSON of one instance, or None."""
        ...

    async def get_bulk_span(self, key: InstanceKey, path: str) -> tuple[int, int] | None:
        """(offset, length) of a bulk data value recorded at ingest, or None."""
        ...

    async def series_exists(self, key: SeriesKey) -> bool:
        """True when the series has at least one instance."""
        ...

    def iter_blob_keys(self, site: str | None = None) -> AsyncIterator[str]:
        """Every blob key the index references (for orphan sweeps)."""
        ...

    async def ping(self) -> None:
        """Return when the index answers a query; raise BackendUnavailableError otherwise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class CacheLedger(Protocol):
    """Size and last use of each derived-data object (transcoded frames, thumbnails), so the
    least recently used can be evicted past a budget. Shared by every server process."""

    async def note_cache_use(
        self, added: Sequence[tuple[str, int, float]], used: Sequence[tuple[str, float]]
    ) -> int:
        """Record new entries (key, size, time) and uses (key, time) in one transaction;
        return the total size of every entry."""
        ...

    async def claim_cache_victims(self, at_least: int) -> list[tuple[str, int]]:
        """Remove and return the least recently used entries, at least `at_least` bytes of
        them (fewer if there are not so many); each entry is claimed by one caller only."""
        ...


@dataclass(frozen=True, slots=True)
class FeedPage:
    """What to read of the change feed: entries of `sites` (None: every site) after
    sequence `after`, within [`start`, `end`) when given, `skip` of them skipped, at most
    `limit`; `metadata` asks for the stored DICOM JSON of current instances."""

    sites: frozenset[str] | None
    limit: int
    after: int = 0
    skip: int = 0
    start: float | None = None
    end: float | None = None
    metadata: bool = False


class EventLog(Protocol):
    """The outbox every change writes in its own transaction, read as the change feed.

    Sequences are handed out in commit order: an entry never becomes visible after one with
    a higher sequence did, so a reader paging by sequence misses nothing that commits late.
    Each backend also has `append_deleted(conn, ...)` for the delete transaction to call.
    """

    async def read_feed(self, page: FeedPage) -> list[FeedEntry]:
        """Instance events in sequence order (study.stable is for webhooks only)."""
        ...

    async def latest_feed_entry(
        self, sites: frozenset[str] | None, metadata: bool
    ) -> FeedEntry | None:
        """The instance event with the highest sequence, or None."""
        ...

    async def announce_quiet_studies(self, quiet_seconds: float, limit: int) -> int:
        """Write one study.stable event for each study whose latest add is at least
        `quiet_seconds` old and not yet announced, recording the announcement in the same
        transaction (exactly one per quiet period, whoever runs it); return how many."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookStatus:
    """A subscription and its deliveries so far."""

    webhook: Webhook
    pending: int
    delivered: int
    dead: int
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed delivery of `event` to webhook `webhook_id`; `age` is seconds since it was
    queued (it is dead-lettered once over the maximum age) and `attempts` made before."""

    id: int
    webhook_id: int
    event: Event
    attempts: int
    age: float


@dataclass(frozen=True, slots=True)
class DeliveryRun:
    """Deliveries of one study to one webhook, oldest first, leased to `token`."""

    token: str
    deliveries: list[Delivery]


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A failed attempt: retry `retry_in` seconds from now, or dead-letter it (`dead`)."""

    id: int
    retry_in: float
    error: str
    dead: bool = False


class WebhookLedger(Protocol):
    """Webhook subscriptions and their deliveries, shared by every server process.

    Deliveries of one study to one webhook go out in order: a claim takes the oldest pending
    delivery of such a group (a "run" of up to `run` of them) under a lease `token`, so no
    other process claims the group until the lease is settled or has expired.
    """

    async def add_webhook(self, webhook: Webhook) -> Webhook:
        """Store a subscription (its id is assigned); it receives events from now on."""
        ...

    async def get_webhooks(self) -> list[Webhook]:
        """Every subscription, by id."""
        ...

    async def list_webhooks(self) -> list[WebhookStatus]:
        """Every subscription with its delivery counts, by id."""
        ...

    async def remove_webhook(self, webhook_id: int) -> bool:
        """Remove a subscription and its deliveries; False if there is none."""
        ...

    async def replay_webhook(self, webhook_id: int, since: float) -> int | None:
        """Queue again every event since `since` (Unix seconds) the subscription matches;
        how many, or None if there is no such subscription."""
        ...

    async def fan_out(self, limit: int) -> int:
        """Queue deliveries of new events (up to `limit` per subscription) for the
        subscriptions that match them; return how many were queued."""
        ...

    async def claim_deliveries(
        self, owner: str, groups: int, run: int, lease_seconds: float
    ) -> list[DeliveryRun]:
        """Lease up to `groups` runs of due deliveries (up to `run` each) for
        `lease_seconds`, each to its own token made from `owner` (unique per call)."""
        ...

    async def settle_deliveries(
        self,
        token: str,
        delivered: Sequence[int],
        failed: DeliveryFailure | None,
        keep_seconds: float | None,
    ) -> bool:
        """Record what a lease holder did in one transaction: `delivered` ids are done,
        `failed` is retried later or dead; the rest of its run stays leased for
        `keep_seconds` more, or is released with None. False when the lease was lost."""
        ...

    async def prune_deliveries(self, older_than_seconds: float) -> int:
        """Drop delivered rows older than this (their number stays in the counts)."""
        ...


class ServerIndex(InstanceIndex, CacheLedger, EventLog, WebhookLedger, Protocol):
    """Every role a server process needs of its index database, in one object."""
