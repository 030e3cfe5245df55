"""Reindex: rebuild the index from the stored objects alone (disaster recovery).

Every instance object (`{site}/{study}/{series}/{sop}/{digest}.dcm`; derived data under
`{site}/cache/` is skipped) is read into a spool, its header parsed with the same limits as
STOW, its SHA-256 checked against the digest its key carries, and it is added to the index
under its existing key, `batch` at a time per site. An object the trash still references (a
deleted instance within its grace period) is left out, so a reindex never undoes a delete
while the index survives. Nothing is ever written to or deleted
from the blob store: an object that cannot be indexed is only reported.

The objects alone say what was stored, not what happened since. An IOCM rejection note is
one of them, so its rejection is applied again as STOW applies it (`lifecycle`): the notes
are held aside (they are few and small) and applied once every other object is indexed, so
that each hides what it names wherever that was listed. A note already indexed was applied
when it was stored, and is not applied twice. After an interrupted run the held notes are
neither applied nor indexed, so the next run applies them. What no object records (deletes
not made by a rejection note, legal holds, the site registry, API keys, the audit trail) is
not rebuilt; objects of a site the registry does not hold are left out and counted per site,
for the operator to add the site again and run reindex once more.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from dicomweb_server.domain.blob_keys import parse_instance_blob_key
from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.domain.part10 import InvalidInstanceError, ParseLimits, parse_part10
from dicomweb_server.domain.rejection import RejectionNote
from dicomweb_server.errors import ConflictError, NotFoundError
from dicomweb_server.index.base import AddOutcome, InstanceIndex
from dicomweb_server.index.batch import NewInstance, add_instances
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.spool import Spool
from dicomweb_server.services.store import rejection_note_of
from dicomweb_server.storage.base import BlobInfo, BlobStore

__all__ = ["ReindexOutcome", "ReindexService", "ReindexStats"]

_CHUNK = 1 << 20


class ReindexOutcome(enum.StrEnum):
    INDEXED = "indexed"
    ALREADY = "already indexed"
    CONFLICT = "conflict"  # another object of the same SOP Instance UID was indexed first
    UNREADABLE = "unreadable"  # not parseable, or its bytes do not match its key
    TRASHED = "in the trash"  # a deleted instance awaiting its purge: never brought back
    UNREGISTERED = "of an unregistered site"  # left out until the site is added again


@dataclass(slots=True)
class ReindexStats:
    """Counters of a reindex run."""

    objects: int = 0  # instance objects seen
    skipped: int = 0  # derived data and foreign objects
    bytes_read: int = 0
    counts: dict[ReindexOutcome, int] = field(
        default_factory=lambda: dict.fromkeys(ReindexOutcome, 0)
    )
    started: float = field(default_factory=time.monotonic)
    stopped_early: bool = False
    notes_applied: int = 0  # rejection notes whose rejection was applied again
    notes_held: int = 0  # rejection notes read but neither applied nor indexed (interrupted)
    # Objects left out because their site is not registered, by site
    unregistered: dict[str, int] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> int:
        return sum(self.counts.values())


ReindexListener = Callable[[str, ReindexOutcome, str], None]  # blob key, outcome, detail


def _parse(spool: Spool, limits: ParseLimits) -> tuple[NewInstance | str, str]:
    """(the record as a NewInstance without key, or why not; the digest), in a thread."""
    digest = spool.sha256()
    try:
        record = parse_part10(cast(BinaryIO, spool), spool.size, limits)
    except InvalidInstanceError as exc:
        return exc.reason, digest
    return NewInstance(record, "", spool.size, digest), digest


class ReindexService:
    """Adds every instance object the blob store holds to the index.

    `sites`: the registered sites (objects of any other site are left out; None: no check).
    `lifecycle`: applies the rejection notes found, as `who` (None: a note is indexed as any
    instance, and what it names stays visible).
    """

    def __init__(
        self,
        index: InstanceIndex,
        blobs: BlobStore,
        limits: ParseLimits,
        *,
        spool_memory: int = 16 << 20,
        listener: ReindexListener | None = None,
        in_trash: Callable[[str], Awaitable[bool]] | None = None,
        sites: Collection[str] | None = None,
        lifecycle: DeleteService | None = None,
        who: str = "reindex",
    ) -> None:
        self._index = index
        self._in_trash = in_trash
        self._sites = sites
        self._lifecycle = lifecycle
        self._who = who
        self._notes: list[tuple[str, NewInstance, RejectionNote]] = []
        self._blobs = blobs
        self._limits = limits
        self._spool_memory = spool_memory
        self._listener = listener
        self.stats = ReindexStats()
        self._stop = False
        self._pending: dict[str, list[NewInstance]] = {}

    def stop(self) -> None:
        self._stop = True
        self.stats.stopped_early = True

    async def run(self, site: str | None, *, jobs: int, batch: int) -> None:
        """Index the objects of `site` (None: every site), `jobs` read at once."""
        objects: asyncio.Queue[tuple[BlobInfo, InstanceKey] | None] = asyncio.Queue(jobs * 2)
        ready: asyncio.Queue[NewInstance | None] = asyncio.Queue(batch)

        async def feed() -> None:
            try:
                async for info in self._blobs.iter_objects(f"{site}/" if site else ""):
                    if self._stop:
                        break
                    key = parse_instance_blob_key(info.key)
                    if key is None:
                        self.stats.skipped += 1
                        continue
                    self.stats.objects += 1
                    if self._sites is not None and key.site not in self._sites:
                        unregistered = self.stats.unregistered
                        unregistered[key.site] = unregistered.get(key.site, 0) + 1
                        self._note(info.key, ReindexOutcome.UNREGISTERED, "")
                        continue
                    if self._in_trash is not None and await self._in_trash(info.key):
                        self._note(info.key, ReindexOutcome.TRASHED, "deleted, not yet purged")
                        continue
                    await objects.put((info, key))
            finally:
                for _ in range(jobs):
                    await objects.put(None)

        async def read() -> None:
            while (entry := await objects.get()) is not None:
                new = await self._read(*entry)
                if new is not None:
                    await ready.put(new)

        async def readers() -> None:
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(jobs):
                        group.create_task(read())
            finally:
                await ready.put(None)

        async def index() -> None:
            while (new := await ready.get()) is not None:
                site_of = cast(InstanceKey, parse_instance_blob_key(new.blob_key)).site
                note = rejection_note_of(new.record) if self._lifecycle is not None else None
                if note is not None:
                    self._notes.append((site_of, new, note))
                    continue
                pending = self._pending.setdefault(site_of, [])
                pending.append(new)
                if len(pending) >= batch:
                    await self._flush(site_of)
            for name in list(self._pending):
                await self._flush(name)
            await self._apply_notes()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                group.create_task(readers())
                group.create_task(index())
        except BaseExceptionGroup as errors:  # the first failure, as itself (a DicomwebError)
            raise _first_error(errors) from None

    async def _read(self, info: BlobInfo, key: InstanceKey) -> NewInstance | None:
        spool = Spool(self._spool_memory)
        try:
            try:
                async for chunk in self._blobs.iter_get(info.key, chunk_size=_CHUNK):
                    spool.write(chunk)
            except NotFoundError:
                self._note(info.key, ReindexOutcome.UNREADABLE, "deleted while listed")
                return None
            self.stats.bytes_read += spool.size
            parsed, digest = await asyncio.to_thread(_parse, spool, self._limits)
        finally:
            spool.close()
        expected = info.key.rsplit("/", 1)[-1].removesuffix(".dcm")
        if not digest.startswith(expected):
            self._note(info.key, ReindexOutcome.UNREADABLE, "its SHA-256 differs from its key")
            return None
        if isinstance(parsed, str):
            self._note(info.key, ReindexOutcome.UNREADABLE, parsed)
            return None
        record = parsed.record
        found = (record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid)
        if found != (key.study_instance_uid, key.series_instance_uid, key.sop_instance_uid):
            self._note(info.key, ReindexOutcome.UNREADABLE, "its UIDs differ from its key")
            return None
        return NewInstance(record, info.key, parsed.size, parsed.digest)

    async def _flush(self, site: str) -> None:
        await self._add(site, self._pending.pop(site, []))

    async def _apply_notes(self) -> None:
        """Apply each held rejection note not indexed yet, then index it; a note whose
        rejection is refused (a study that may not be changed) is reported, not indexed."""
        notes, self._notes = self._notes, []
        if self.stats.stopped_early:
            self.stats.notes_held = len(notes)
            return
        lifecycle = cast(DeleteService, self._lifecycle)
        for site, new, note in notes:
            key = cast(InstanceKey, parse_instance_blob_key(new.blob_key))
            if await self._index.get_instance(key) is None:
                uid = new.record.sop_instance_uid
                try:
                    await lifecycle.apply_rejection_note(site, note, uid, who=self._who)
                except ConflictError as exc:
                    detail = f"rejection note {uid} not applied, so not indexed: {exc.reason}"
                    self._note(new.blob_key, ReindexOutcome.CONFLICT, detail)
                    continue
                self.stats.notes_applied += 1
            await self._add(site, [new])

    async def _add(self, site: str, pending: list[NewInstance]) -> None:
        outcomes = await add_instances(self._index, site, pending)
        for new, outcome in zip(pending, outcomes, strict=True):
            if outcome is AddOutcome.CREATED:
                self._note(new.blob_key, ReindexOutcome.INDEXED, "")
            elif outcome is AddOutcome.IDENTICAL:
                self._note(new.blob_key, ReindexOutcome.ALREADY, "")
            else:
                self._note(
                    new.blob_key,
                    ReindexOutcome.CONFLICT,
                    f"SOP Instance {new.record.sop_instance_uid} is indexed with another object",
                )

    def _note(self, blob_key: str, outcome: ReindexOutcome, detail: str) -> None:
        self.stats.counts[outcome] += 1
        if self._listener is not None:
            self._listener(blob_key, outcome, detail)


def _first_error(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
