"""Bulk import: items (files, archive members, pulled parts) through the STOW store pipeline.

Sources yield `ImportItem`s in order; the ones holding bytes go through `StoreRequest`s
like STOW requests (same validation, duplicates, conflicts, rejection notes applied), several
at once, each with `depth` parts in flight and indexing `batch` at a time. A pipeline reports
outcomes strictly in the order its parts were added, which is how each outcome finds its item.
Counters live in `ImportStats` for a caller to show; nothing here prints. The studies
stored into are handed to a listener, a study at a time, for the audit trail.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.query import Query
from dicomweb_server.domain.records import InstanceRecord, StoredInstance
from dicomweb_server.domain.stow_result import (
    DUPLICATE_SOP_INSTANCE,
    SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT,
    StowResult,
)
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import AddOutcome, InstanceIndex, SearchPage
from dicomweb_server.index.batch import NewInstance, add_instances
from dicomweb_server.services.import_journal import ImportJournal, JournalKey
from dicomweb_server.services.principal import ANONYMOUS, Principal
from dicomweb_server.services.spool import Spool
from dicomweb_server.services.store import StoreService

__all__ = [
    "ImportItem",
    "ImportService",
    "ImportSourceError",
    "ImportStats",
    "ItemGroup",
    "Outcome",
    "OutcomeListener",
    "StudyListener",
]


class Outcome(enum.StrEnum):
    """What became of one item."""

    STORED = "stored"
    IDENTICAL = "identical"  # already stored with the same content: kept one copy
    CONFLICT = "conflict"  # the SOP Instance UID is stored with other content: refused
    REJECTED = "rejected"  # an IOCM rejection named it: not stored again, as STOW refuses it
    NOT_DICOM = "not-dicom"  # no Part 10 header: counted, not a failure
    FAILED = "failed"
    SKIPPED = "skipped"  # done by an earlier run (journal)
    DIRECTORY = "dicomdir"  # a DICOMDIR, read for the files it references

    @property
    def is_failure(self) -> bool:
        return self in (Outcome.CONFLICT, Outcome.FAILED)


class ImportSourceError(DicomwebError):
    """A source that cannot be read at all (an unreachable server, a path that is not there)."""

    status = 502


@dataclass(slots=True)
class ItemGroup:
    """Items journaled together (a pulled study): done once all are final and it has ended."""

    journal_key: JournalKey
    pending: int = 0
    ended: bool = False
    broken: bool = False


@dataclass(slots=True)
class ImportItem:
    """One input: bytes for the pipeline (`spool`), or an outcome decided by the source."""

    label: str  # a path, `archive!member`, or `study part n`: what a report names
    size: int
    spool: Spool | None = None
    outcome: Outcome | None = None
    reason: str = ""
    journal_key: JournalKey | None = None
    group: ItemGroup | None = None
    group_end: bool = False  # a marker: `group` has yielded all its items


@dataclass(slots=True)
class ImportStats:
    """Counters of a run, read by whoever shows progress. Totals are None until known."""

    files_total: int | None = None
    bytes_total: int | None = None
    studies_total: int | None = None  # pulled from a server
    studies_done: int = 0
    files_done: int = 0
    bytes_done: int = 0
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    skipped_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped_early: bool = False
    error: str = ""
    incomplete: str = ""  # why the run may have missed input, though nothing failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def failures(self) -> int:
        return self.counts[Outcome.CONFLICT] + self.counts[Outcome.FAILED]


OutcomeListener = Callable[[str, Outcome, str], None]  # label, outcome, reason
StudyListener = Callable[[str, int], None]  # StudyInstanceUID, instances newly stored in it

_OPEN_STUDIES = 1_000  # studies tallied at once; past this the least recent is handed on


class _StudyTally:
    """Instances newly stored per study, handed on one study at a time (an audit record per
    study, not per instance). A study is handed on once `_OPEN_STUDIES` others were stored
    after it, or when the run ends: inputs mostly come study by study, and memory stays
    bounded whatever their number (a study that comes back later is handed on again)."""

    def __init__(self, listener: StudyListener) -> None:
        self._listener = listener
        self._open: OrderedDict[str, int] = OrderedDict()

    def add(self, study_instance_uid: str) -> None:
        self._open[study_instance_uid] = self._open.pop(study_instance_uid, 0) + 1
        if len(self._open) > _OPEN_STUDIES:
            self._listener(*self._open.popitem(last=False))

    def close(self) -> None:
        while self._open:
            self._listener(*self._open.popitem(last=False))


class _OutcomeIndex:
    """The index, noting each add's outcome, so an instance reported stored can be told
    created or identical. Outcomes are kept per task: each store pipeline adds and reports
    its own batches in its own task, while the others' batches interleave."""

    def __init__(self, index: InstanceIndex) -> None:
        self._index = index
        self._outcomes: dict[object, deque[tuple[str, AddOutcome]]] = {}

    def take(self, sop_instance_uid: str) -> AddOutcome | None:
        """The oldest outcome this task noted for the SOP Instance UID (and forget it)."""
        noted = self._outcomes.get(asyncio.current_task())
        if not noted:
            return None
        for position, (sop, outcome) in enumerate(noted):
            if sop == sop_instance_uid:
                del noted[position]
                return outcome
        return None

    def forget_task(self) -> None:
        self._outcomes.pop(asyncio.current_task(), None)

    async def add_instances(self, site: str, instances: Sequence[NewInstance]) -> list[AddOutcome]:
        outcomes = await add_instances(self._index, site, instances)
        noted = self._outcomes.setdefault(asyncio.current_task(), deque())
        noted.extend(
            (new.record.sop_instance_uid, outcome)
            for new, outcome in zip(instances, outcomes, strict=True)
        )
        return outcomes

    async def add_instance(
        self, site: str, record: InstanceRecord, blob_key: str, size: int, digest: str
    ) -> AddOutcome:
        new = NewInstance(record, blob_key, size, digest)
        return (await self.add_instances(site, [new]))[0]

    # The rest of InstanceIndex, delegated (the store pipeline only adds).

    async def search(self, query: Query) -> SearchPage:
        return await self._index.search(query)

    async def get_instance(self, key: InstanceKey) -> StoredInstance | None:
        return await self._index.get_instance(key)

    def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        return self._index.iter_instances(study, series_instance_uid)

    def iter_metadata(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[bytes]:
        return self._index.iter_metadata(study, series_instance_uid)

    async def list_instances(
        self, study: StudyKey, series_instance_uid: str | None, most: int
    ) -> list[tuple[int, str]] | None:
        return await self._index.list_instances(study, series_instance_uid, most)

    async def metadata_by_row(self, rows: Sequence[int]) -> dict[int, bytes]:
        return await self._index.metadata_by_row(rows)

    async def get_metadata(self, key: InstanceKey) -> bytes | None:
        return await self._index.get_metadata(key)

    async def get_bulk_span(self, key: InstanceKey, path: str) -> tuple[int, int] | None:
        return await self._index.get_bulk_span(key, path)

    async def series_exists(self, key: SeriesKey) -> bool:
        return await self._index.series_exists(key)

    async def study_versions(self, sites: Sequence[str], study_instance_uid: str) -> dict[str, int]:
        return await self._index.study_versions(sites, study_instance_uid)

    async def change_count(self) -> int | None:
        return await self._index.change_count()

    def iter_blob_keys(self, site: str | None = None) -> AsyncIterator[str]:
        return self._index.iter_blob_keys(site)

    async def ping(self) -> None:
        await self._index.ping()

    async def close(self) -> None:
        await self._index.close()


class _Result(StowResult):
    """A StowResult that hands each outcome on instead of keeping it (memory stays flat)."""

    def __init__(
        self, on_stored: Callable[[str, str], None], on_failed: Callable[[str, int, str], None]
    ) -> None:
        super().__init__()
        self._on_stored = on_stored
        self._on_failed = on_failed

    def add_stored(
        self, sop_class_uid: str, sop_instance_uid: str, study: str, series: str
    ) -> None:
        self._on_stored(sop_instance_uid, study)

    def add_failed(self, sop_class_uid: str, sop_instance_uid: str, reason: int, text: str) -> None:
        self._on_failed(sop_instance_uid, reason, text)


@dataclass(slots=True)
class _Lane:
    """One store pipeline and the items it holds, in the order it reports their outcomes."""

    queue: asyncio.Queue[ImportItem | None]
    in_flight: deque[ImportItem] = field(default_factory=deque)
    trusted: bool = True  # False once it failed: its outcomes no longer map to items


class ImportService:
    """Runs one import: items in, outcomes counted, journaled and handed to a listener.

    Items go to `lanes` store pipelines at once, like as many concurrent STOW requests: while
    one indexes a batch (a transaction), the others keep parsing and writing. A rejection
    note is applied as over STOW (the store needs its `lifecycle`); an instance it names that
    reaches another pipeline after it is then refused (`REJECTED`), not stored and trashed.
    """

    def __init__(
        self,
        store: StoreService,
        site: str,
        *,
        journal: ImportJournal | None = None,
        listener: OutcomeListener | None = None,
        stats: ImportStats | None = None,
        principal: Principal = ANONYMOUS,
        on_study_stored: StudyListener | None = None,
    ) -> None:
        self._index = _OutcomeIndex(store.index)
        # The store's lifecycle too: a rejection note is applied as over STOW, by `principal`.
        self._store = StoreService(
            self._index,
            store.blobs,
            store.limits,
            lifecycle=store.lifecycle,
            held_memory=store.held_memory,
        )
        self._site = site
        self._principal = principal
        self._journal = journal
        self._listener = listener
        self._studies = None if on_study_stored is None else _StudyTally(on_study_stored)
        self.stats = stats or ImportStats()
        self._stop = asyncio.Event()
        self._halt = False  # a pipeline failed: take no new item

    def stop(self) -> None:
        """Take no new item; the ones in flight finish (a first Ctrl-C)."""
        self._stop.set()
        self.stats.stopped_early = True

    async def run(
        self, items: AsyncIterator[ImportItem], *, lanes: int, depth: int, batch: int
    ) -> None:
        """Store every item until the source ends or `stop()`; raise what stopped a pipeline.

        A DicomwebError (a store that is down or full) stops the import: every pipeline
        indexes what it had written before it; cancelling abandons the parts in flight, whose
        objects are then unindexed leftovers for the orphan sweep, never visible half-stored
        instances.
        """
        if lanes < 1 or depth < 1:
            raise ValueError("lanes and depth must be at least 1")
        pipelines = [_Lane(asyncio.Queue(maxsize=depth)) for _ in range(lanes)]
        errors: list[DicomwebError] = []
        try:
            await asyncio.gather(
                self._dispatch(items, pipelines, errors),
                *(self._pipeline(lane, depth, batch, errors) for lane in pipelines),
            )
        finally:
            if self._studies is not None:
                self._studies.close()
            if self._journal is not None:
                self._journal.commit()
            await _aclose(items)
        if errors:
            self.stats.error = errors[0].reason
            raise errors[0]

    async def _dispatch(
        self, items: AsyncIterator[ImportItem], lanes: list[_Lane], errors: list[DicomwebError]
    ) -> None:
        """Hand each item to the pipeline with the most room (decided ones are counted)."""
        turn = 0
        try:
            async for item in items:
                if self._stop.is_set() or self._halt:
                    if item.spool is not None:
                        item.spool.close()
                    break
                if item.spool is None:
                    self._decided(item)
                    continue
                if item.group is not None:
                    item.group.pending += 1
                turn += 1
                count = len(lanes)
                lane = min(
                    (lanes[(turn + n) % count] for n in range(count)),
                    key=lambda lane: lane.queue.qsize(),
                )
                await lane.queue.put(item)
        except ImportSourceError as exc:
            errors.append(exc)
        finally:
            for lane in lanes:
                await lane.queue.put(None)

    async def _pipeline(
        self, lane: _Lane, depth: int, batch: int, errors: list[DicomwebError]
    ) -> None:
        result = _Result(
            lambda sop, study: self._stored(lane, sop, study),
            lambda sop, code, text: self._failed(lane, sop, code, text),
        )
        ended = False
        try:
            async with self._store.request(
                self._site, None, result, depth=depth, batch=batch, principal=self._principal
            ) as request:
                while (item := await lane.queue.get()) is not None:
                    assert item.spool is not None
                    lane.in_flight.append(item)
                    try:
                        await request.add(item.spool)
                    except BaseException:
                        lane.trusted = False
                        raise
                ended = True
        except DicomwebError as exc:
            errors.append(exc)
            self._halt = True
        finally:
            self._index.forget_task()
            while not ended:  # keep taking items, so the dispatcher never waits on us
                item = await lane.queue.get()
                if item is None:
                    break
                if item.spool is not None:
                    item.spool.close()

    # Outcomes.

    def _decided(self, item: ImportItem) -> None:
        if item.group_end:
            if item.group is not None:
                item.group.ended = True
                self._group_step(item.group)
            return
        outcome = item.outcome or Outcome.FAILED
        if item.group is not None and outcome.is_failure:
            item.group.broken = True
        self._finish(item, outcome, item.reason)

    def _stored(self, lane: _Lane, sop_instance_uid: str, study_instance_uid: str) -> None:
        added = self._index.take(sop_instance_uid)
        outcome = Outcome.IDENTICAL if added is AddOutcome.IDENTICAL else Outcome.STORED
        if outcome is Outcome.STORED and self._studies is not None:
            self._studies.add(study_instance_uid)
        self._pipeline_outcome(lane, outcome, "")

    def _failed(self, lane: _Lane, sop_instance_uid: str, reason: int, text: str) -> None:
        outcome = Outcome.FAILED
        if reason == DUPLICATE_SOP_INSTANCE:  # refused by the index: its outcome was noted
            self._index.take(sop_instance_uid)
            outcome = Outcome.CONFLICT
        elif reason == SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT:
            outcome = Outcome.REJECTED  # the rejection stands: importing it again changes nothing
        self._pipeline_outcome(lane, outcome, text)

    def _pipeline_outcome(self, lane: _Lane, outcome: Outcome, reason: str) -> None:
        item = lane.in_flight.popleft() if lane.trusted and lane.in_flight else None
        if item is None:  # after a pipeline fault: count it, name nothing, journal nothing
            self.stats.counts[outcome] += 1
            self.stats.files_done += 1
            return
        self._finish(item, outcome, reason)
        if item.group is not None:
            item.group.pending -= 1
            if outcome.is_failure:
                item.group.broken = True
            self._group_step(item.group)

    def _group_step(self, group: ItemGroup) -> None:
        if group.ended and group.pending == 0 and not group.broken and self._journal is not None:
            self._journal.record(group.journal_key, "done")

    def _finish(self, item: ImportItem, outcome: Outcome, reason: str) -> None:
        stats = self.stats
        stats.counts[outcome] += 1
        stats.files_done += 1
        stats.bytes_done += item.size
        if outcome is Outcome.SKIPPED:
            stats.skipped_bytes += item.size
        elif item.journal_key is not None and self._journal is not None:
            self._journal.record(item.journal_key, outcome.value)
        if self._listener is not None:
            self._listener(item.label, outcome, reason)


async def _aclose(items: AsyncIterator[ImportItem]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
