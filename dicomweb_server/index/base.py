"""The InstanceIndex protocol: add an instance atomically, search, look up, list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.query import Query
from dicomweb_server.domain.records import InstanceRecord, StoredInstance
from dicomweb_server.domain.sites import Site
from dicomweb_server.index.api_keys import ApiKeyStore

__all__ = [
    "AddOutcome",
    "CacheLedger",
    "ConnectionPool",
    "Connections",
    "Counts",
    "IndexCounts",
    "InstanceIndex",
    "SearchPage",
    "ServerIndex",
    "SiteCatalog",
    "StoredInstance",
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


class ServerIndex(InstanceIndex, CacheLedger, SiteCatalog, ApiKeyStore, Protocol):
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
