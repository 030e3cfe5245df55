"""The InstanceIndex protocol: add an instance atomically, search, look up, list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from dicomweb_server.domain.audit import AuditPage, AuditQuery, AuditRecord, AuditStudy
from dicomweb_server.domain.events import Event, FeedEntry, Webhook
from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.lifecycle import DeleteTarget, Hold, StudyFacts
from dicomweb_server.domain.query import Query
from dicomweb_server.domain.records import InstanceRecord, StoredInstance
from dicomweb_server.domain.sites import Site
from dicomweb_server.index.api_keys import ApiKeyStore

__all__ = [
    "AddOutcome",
    "AuditLog",
    "CacheLedger",
    "ConnectionPool",
    "Connections",
    "Counts",
    "DeleteTarget",
    "Delivery",
    "DeliveryFailure",
    "DeliveryRun",
    "EventLog",
    "FeedPage",
    "IndexCounts",
    "InstanceIndex",
    "Judge",
    "LegalHolds",
    "Lifecycle",
    "PlannerStatistics",
    "Rejection",
    "RejectionLog",
    "SearchPage",
    "ServerIndex",
    "SiteCatalog",
    "StoredInstance",
    "TrashedInstance",
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

    `more` is True when results exist beyond this page; `sites[n]` is the site of `rows[n]`
    (a search at the enterprise root covers several).
    """

    rows: list[dict[str, Any]]
    more: bool
    sites: list[str] = field(default_factory=list)


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

    async def list_instances(
        self, study: StudyKey, series_instance_uid: str | None, most: int
    ) -> list[tuple[int, str]] | None:
        """(row, digest) of each instance of a study (or one series) in `iter_instances` order,
        or None when there are more than `most`. A row is never updated in place, so the list
        names the exact rows (and contents) a response built from it holds."""
        ...

    async def metadata_by_row(self, rows: Sequence[int]) -> dict[int, bytes]:
        """The stored DICOM JSON of the rows `rows` (named by `list_instances`), by row; a row
        deleted since is absent."""
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

    async def study_versions(self, sites: Sequence[str], study_instance_uid: str) -> dict[str, int]:
        """{site: version} of the study in each of `sites` that has it. A version changes with
        every change to the study there (an instance or series stored, deleted, rejected or
        restored) and is never used again, by any study; an answer built after reading it may
        be kept by it."""
        ...

    async def change_count(self) -> int | None:
        """A number that moves with every committed change to any study, series or instance
        (stored, deleted, rejected or restored) and never comes back, read now; None when the
        index cannot tell at the cost of a point query. An answer built after reading it may
        be kept by it, like `study_versions` for one study."""
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


class SiteCatalog(Protocol):
    """The sites of the store; names are validated by domain/sites.py before they get here."""

    async def list_sites(self) -> list[Site]:
        """Every site, by name."""
        ...

    async def get_site(self, name: str) -> Site | None:
        """The site, or None."""
        ...

    async def add_site(self, site: Site) -> None:
        """Add a site; ConflictError when the name is taken."""
        ...

    async def update_site(self, site: Site) -> None:
        """Replace a site's settings; NotFoundError when there is no such site."""
        ...

    async def remove_site(self, name: str) -> None:
        """Remove an empty site; ConflictError when it holds a study, NotFoundError if none."""
        ...

    async def sites_holding_study(self, study_instance_uid: str) -> list[str]:
        """The sites that hold a study with this UID (for the enterprise root)."""
        ...


class AuditLog(Protocol):
    """The audit trail (issue 17), append-only: nothing updates a record, and only
    `expire_audit_records` deletes any. The backends enforce it with triggers, so no other
    statement can either."""

    async def append_audit_records(self, records: Sequence[AuditRecord]) -> None:
        """Add records in one transaction."""
        ...

    async def query_audit_records(self, query: AuditQuery) -> AuditPage:
        """Records matching every filter of `query`, newest first."""
        ...

    async def expire_audit_records(self, before: float) -> int | None:
        """Remove records that ended before `before` (Unix seconds); how many. None when
        another process is expiring right now (one at a time across processes)."""
        ...

    async def study_patients(
        self, site: str | None, study_instance_uids: Sequence[str]
    ) -> list[AuditStudy]:
        """The patient of each study found among `study_instance_uids` at `site` (None: at
        every site holding it), in one query."""
        ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """An IOCM rejection recorded with a delete: its code (`113001^DCM`), the rejection note
    (None for the reject resource), and every (series, SOP Instance) of the target's study it
    names, present or not: a later store of any of them is refused."""

    code: str
    note_sop_instance_uid: str | None
    references: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TrashedInstance:
    """An instance in the trash: its row id there, where it was, and its object; `held_by`
    (read for purge only) the id of a legal hold that covers its study, which keeps it."""

    id: int
    key: InstanceKey
    blob_key: str
    digest: str
    deleted_at: float
    held_by: int | None = None


# Decides, under the study row's lock, whether the study may lose instances: raises a
# ConflictError naming the reason (domain/lifecycle.py `check_deletable`).
Judge = Callable[[StudyFacts, list[Hold]], None]


@runtime_checkable
class Lifecycle(Protocol):
    """Soft delete into a trash, restore, purge, and the maintenance lease (issue 18).

    A delete moves instance rows into the trash and recomputes their series and study rows in
    one transaction, locking in the add paths' order (instances, series, study); the objects
    stay in the store until purge.
    """

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
        """Move the target's instances to the trash; NotFoundError when there are none (with
        a `rejection`, which is recorded whatever is present, an empty list instead)."""
        ...

    async def restore_instances(
        self, site: str, study_instance_uid: str, series_instance_uid: str | None
    ) -> int:
        """Move a study's (or series') trashed instances back; how many. NotFoundError when
        the trash holds none, ConflictError when one was stored again meanwhile."""
        ...

    async def trashed_before(
        self, cutoff: float, site: str | None, limit: int, after: int = 0
    ) -> list[TrashedInstance]:
        """Trashed instances deleted before `cutoff` whose trash id is above `after`, by id,
        at most `limit`; each with `held_by` set when a legal hold covers its study (by the
        study, or by the patient the study had when it was deleted)."""
        ...

    async def forget_trashed(self, ids: Sequence[int]) -> None:
        """Remove trash rows (after their objects were deleted)."""
        ...

    async def blob_keys_in_use(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` a live instance row references (stored again meanwhile)."""
        ...

    async def trash_references(self, blob_key: str) -> bool:
        """True when a trash row references the object (not an orphan: restorable)."""
        ...

    async def blob_keys_in_trash(self, keys: Sequence[str], excluding: Sequence[int]) -> set[str]:
        """Those of `keys` a trash row other than the `excluding` ones references (an
        instance trashed again later, still restorable)."""
        ...

    async def mark_deletions(
        self, blob_keys: Sequence[str], now: float, forget_before: float
    ) -> list[int]:
        """Record (and commit) that these objects are about to be deleted; the marks' ids.
        Marks started before `forget_before` (a deleter that died) are dropped."""
        ...

    async def end_deletions(self, ids: Sequence[int]) -> None:
        """Remove the marks (their objects are deleted) and advance the deletion epoch."""
        ...

    async def deletion_state(self, blob_keys: Sequence[str]) -> tuple[int, set[str]]:
        """The deletion epoch, and those of `blob_keys` marked for deletion now."""
        ...

    async def forget_cache_entries(self, prefix: str) -> None:
        """Remove the derived-data ledger's entries under `prefix`."""
        ...

    async def uid_level(self, site: str, uid: str) -> str | None:
        """`study`, `series` or `instance` when a live row of the site has this UID."""
        ...

    async def expired_studies(
        self, site: str, before_day: str, received_before: float, limit: int
    ) -> list[str]:
        """Studies of the site dated before `before_day` (YYYYMMDD), or without a StudyDate
        and received before `received_before`; at most `limit`, oldest rows first."""
        ...

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        """Take (or renew) the named lease until `until` unless another holder's is live."""
        ...


class RejectionLog(Protocol):
    """IOCM rejections recorded by `Lifecycle.delete_instances`."""

    async def rejected_among(self, site: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        """{SOP Instance UID: rejection code} for those of the site that were rejected."""
        ...


class LegalHolds(Protocol):
    """Legal holds: studies, or patients' studies, that must not be removed."""

    async def add_hold(self, hold: Hold) -> Hold:
        """Record the hold; returns it with its id."""
        ...

    async def list_holds(self) -> list[Hold]:
        """Every hold, by id."""
        ...

    async def remove_hold(self, hold_id: int) -> Hold | None:
        """Remove and return the hold, or None when there is no such hold."""
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
        self,
        owner: str,
        groups: int,
        run: int,
        lease_seconds: float,
        busy: Mapping[int, int] | None = None,
    ) -> list[DeliveryRun]:
        """Lease up to `groups` runs of due deliveries (up to `run` each) for
        `lease_seconds`, each to its own token made from `owner` (unique per call). The
        runs are shared fairly between webhooks (index/events.py `fair_heads`): `busy` is
        how many runs of each webhook the caller has in flight."""
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


class ServerIndex(
    InstanceIndex,
    CacheLedger,
    SiteCatalog,
    ApiKeyStore,
    Lifecycle,
    RejectionLog,
    LegalHolds,
    AuditLog,
    EventLog,
    WebhookLedger,
    Protocol,
):
    """Every role a server process needs of its index database, in one object."""


@dataclass(frozen=True, slots=True)
class Counts:
    """How much the index holds, all sites together; `exact` is False for estimates."""

    studies: int
    series: int
    instances: int
    exact: bool = True


@runtime_checkable
class IndexCounts(Protocol):
    """Studies, series and instances held, cheaply enough for every page view."""

    async def counts(self) -> Counts:
        """Exact counts for a small index; for a large one, estimates that read no table."""
        ...


@dataclass(frozen=True, slots=True)
class Connections:
    """A process's database connections: open, in use (None: not known) and the limit."""

    open: int
    in_use: int | None
    limit: int


@runtime_checkable
class ConnectionPool(Protocol):
    """An index that holds database connections, for the connection gauges of /metrics."""

    def connections(self) -> Connections:
        """The connections now, without waiting for any."""
        ...


@runtime_checkable
class PlannerStatistics(Protocol):
    """An index whose query planner chooses by table statistics, kept by the database itself.

    After a bulk load the statistics lag until the database's own maintenance catches up
    (PostgreSQL's autovacuum: a minute or more), and searches meanwhile may plan as if the
    tables were nearly empty: a page of studies sorted on disk instead of read in key order.
    SQLite needs none: no statistics are ever gathered there, so its plans never lag.
    """

    async def refresh_statistics(self, added: int) -> None:
        """After `added` instances were loaded in bulk, sample the searched tables again if
        that many can have moved the statistics (bounded: a sample, not a scan)."""
        ...
