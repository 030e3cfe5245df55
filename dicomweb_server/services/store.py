"""Store Instances: validate, write the object, then index it; visible once both are durable.

A request's instances go through a pipeline: up to `depth` parts are parsed and written at
once (so one instance's fsync or upload overlaps the next one's parsing), and the written
ones are indexed `batch` at a time in one transaction. The index only ever sees instances
whose objects are durable; the STOW response lists every instance in the order it was sent.

Object keys are content digests, so an instance stored again byte for byte writes the key
of its deleted (trashed) copy, which a purge may be deleting at that moment. A written part
keeps its bytes until its batch is indexed; then the batch reads the deletions under way
(services/delete.py `delete_unneeded`), and when one overlapped its writes it waits for the
deletion to end and writes again whatever object it removed, before the STOW answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, cast

import orjson

from dicomweb_server.codecs.decode_guards import validate_encapsulated_frame
from dicomweb_server.codecs.registry import CodecError
from dicomweb_server.domain.blob_keys import instance_blob_key
from dicomweb_server.domain.file_meta import build_file_meta, meta_problems, read_file_meta
from dicomweb_server.domain.grants import Role
from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.domain.part10 import (
    PREAMBLE_LENGTH,
    InvalidInstanceError,
    ParseLimits,
    parse_part10,
)
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.domain.rejection import (
    KEY_OBJECT_SELECTION_DOCUMENT,
    RejectionNote,
    rejection_note,
)
from dicomweb_server.domain.stow_result import (
    DATA_SET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT,
    StowResult,
)
from dicomweb_server.errors import ConflictError, DicomwebError, ForbiddenError, NotFoundError
from dicomweb_server.index.base import AddOutcome, InstanceIndex
from dicomweb_server.index.batch import NewInstance, add_instances
from dicomweb_server.services import access
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.principal import ANONYMOUS, Principal
from dicomweb_server.services.spool import Spool
from dicomweb_server.storage.base import BlobStore

__all__ = ["StoreRequest", "StoreService", "rejection_note_of"]

log = logging.getLogger("dicomweb_server.store")
_ZERO_PREAMBLE = b"\0" * PREAMBLE_LENGTH
_FRAME_CHECK_BYTES = 8 << 20  # a first fragment up to this size is checked at ingest
_META_READ = 64 << 10  # bytes read to find the file meta group (it is a few hundred)
# How long a batch waits for a deletion of its objects to end (a purge deletes a batch of
# objects in seconds), and how often it looks; past it the objects are checked anyway.
_DELETION_WAIT = 60.0
_DELETION_POLL = 0.1


def _prepare(spool: Spool, limits: ParseLimits) -> tuple[InstanceRecord, str]:
    """Parse the header, check the first compressed frame's own header against it, zero the
    128-byte preamble (it can carry executables), rewrite a wrong file meta group, digest."""
    record = parse_part10(cast(BinaryIO, spool), spool.size, limits)
    _check_first_frame(spool, record)
    spool.seek(0)
    meta = read_file_meta(spool.read(_META_READ))
    problems = meta_problems(meta, record.sop_class_uid, record.sop_instance_uid)
    if not problems:
        spool.overwrite_head(_ZERO_PREAMBLE)
        return record, spool.sha256()
    group = build_file_meta(
        meta, record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax_uid
    )
    spool.replace_head(meta.end, _ZERO_PREAMBLE + b"DICM" + group)
    try:
        record = parse_part10(cast(BinaryIO, spool), spool.size, limits)  # offsets moved
    except InvalidInstanceError as exc:
        raise InvalidInstanceError(
            f"the file meta group is wrong ({'; '.join(problems)}) and could not be rewritten:"
            f" {exc.reason}",
            exc.failure_code,
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
        ) from exc
    log.info(
        "instance %s: file meta group rewritten (%s)", record.sop_instance_uid, "; ".join(problems)
    )
    return record, spool.sha256()


def _check_first_frame(spool: Spool, record: InstanceRecord) -> None:
    """Refuse compressed pixel data whose first frame contradicts the DICOM header: decoders
    trust the frame's own header, so such an instance could never be decoded (or would
    decode to something else). Fragments too large to read here are left to decode time."""
    pixel = record.pixel
    if pixel is None or not pixel.encapsulated or not pixel.frames or pixel.image is None:
        return
    offset, length = pixel.frames[0].fragments[0]
    if length > _FRAME_CHECK_BYTES:
        return
    spool.seek(offset)
    image = pixel.image
    try:
        validate_encapsulated_frame(
            record.transfer_syntax_uid,
            spool.read(length),
            image.rows,
            image.columns,
            image.samples_per_pixel,
            image.bits_allocated,
        )
    except CodecError as exc:
        raise InvalidInstanceError(
            f"the first frame of Pixel Data: {exc}",
            0xC000,
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
        ) from exc


@dataclass(frozen=True, slots=True)
class _Failed:
    """A part that is not stored, as its failed-SOP entry."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    text: str


_Entry = NewInstance | _Failed


def _refused(exc: InvalidInstanceError) -> _Failed:
    """The failed-SOP entry of a part that is no storable instance, naming the instance when
    its UIDs were read before the failure (its entry and Warning identify it, PS3.18 10.5.3)."""
    uid = exc.sop_instance_uid
    text = f"SOP Instance {uid}: {exc.reason}" if uid else exc.reason
    return _Failed(exc.sop_class_uid, uid, exc.failure_code, text)


@dataclass(slots=True)
class StoreService:
    """Stores spooled parts into `blobs` then `index`; one `StoreRequest` per STOW request.

    With `lifecycle` (issue 18), an instance an IOCM rejection named is refused, and a stored
    rejection note hides the instances it names (services/delete.py). Storing a rejection
    note is a rejection: it needs the caller's `delete` grant of the site, as the reject
    resource does; without it the note is not stored (FailureReason 0x0124) and rejects
    nothing.
    """

    index: InstanceIndex
    blobs: BlobStore
    limits: ParseLimits
    lifecycle: DeleteService | None = None
    # Written parts keep their bytes until their batch is indexed (to write an object again
    # that a racing purge deleted); past this many bytes held in memory by one request, its
    # batch is indexed early (DICOMWEB_STORE_HELD_MEMORY_BYTES).
    held_memory: int = 64 << 20
    # The deletion epoch last read by any request of this process. Epochs only grow, so a
    # request may take it as the one "before its first write" without reading it again: an
    # older value only makes it check its objects once more after a deletion.
    seen_epoch: int | None = field(default=None, init=False)

    def request(
        self,
        site: str,
        study_in_path: str | None,
        result: StowResult,
        *,
        depth: int = 1,
        batch: int = 1,
        principal: Principal = ANONYMOUS,
    ) -> StoreRequest:
        """A pipeline for one request's parts, stored for `principal` (who may write to the
        site; ANONYMOUS, with every grant, when access control is off or for an operator's
        command); use it as an async context manager."""
        return StoreRequest(self, site, study_in_path, result, depth, batch, principal)

    async def _write(self, site: str, spool: Spool, study: str | None) -> _Entry:
        """Parse and write one part (the caller closes its spool)."""
        try:
            record, digest = await asyncio.to_thread(_prepare, spool, self.limits)
        except InvalidInstanceError as exc:
            return _refused(exc)
        if study is not None and record.study_instance_uid != study:
            return _Failed(
                record.sop_class_uid,
                record.sop_instance_uid,
                DATA_SET_DOES_NOT_MATCH,
                f"StudyInstanceUID {record.study_instance_uid} differs from the request URL",
            )
        key = instance_blob_key(
            InstanceKey(
                site,
                record.study_instance_uid,
                record.series_instance_uid,
                record.sop_instance_uid,
            ),
            digest,
        )
        stored_size = await self.blobs.put(key, spool.iter_chunks())
        return NewInstance(record, key, stored_size, digest)


class StoreRequest:
    """One STOW request's parts: `depth` written at once, indexed `batch` at a time, in order.

    `add` hands over a part's spool file and returns once the pipeline has room for the next;
    leaving the context indexes what is written. A written part's spool stays open until its
    batch is indexed and its object checked against the deletions that overlapped it.
    Leaving it by a DicomwebError (a malformed or oversized body, a backend fault) first
    stores what was received before it, as before batching; any other exception (a lost
    client, a timeout) cancels the parts in flight, leaving at most unindexed objects, which
    the orphan sweep removes.
    """

    def __init__(
        self,
        service: StoreService,
        site: str,
        study: str | None,
        result: StowResult,
        depth: int,
        batch: int,
        principal: Principal = ANONYMOUS,
    ) -> None:
        if depth < 1 or batch < 1:
            raise ValueError("depth and batch must be at least 1")
        self._service = service
        self._principal = principal
        self._site = site
        self._study = study
        self._result = result
        self._batch = batch
        self._slots = asyncio.Semaphore(depth)
        self._pending: deque[asyncio.Future[_Entry]] = deque()  # in arrival order
        self._files: dict[asyncio.Future[_Entry], tuple[Spool, int]] = {}  # with its epoch
        self._ready: list[_Entry] = []  # finished, in order, not yet indexed
        # Written parts' spools until their batch is indexed, by id(NewInstance), each with
        # the deletion epoch read before its object was written
        self._held: dict[int, tuple[Spool, int]] = {}
        self._held_memory = 0
        self._epoch: int | None = None  # the deletion epoch last read (None: not yet)

    async def __aenter__(self) -> StoreRequest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, DicomwebError):
            try:
                await self._collect(wait=True)
                await self._flush()
                return
            except DicomwebError as error:
                await self._abandon(error)
                raise
            except BaseException:
                await self._cancel()
                raise
        await self._cancel()

    async def add(self, spool: Spool) -> None:
        """Take ownership of a spooled part (closed once it is indexed, or refused) and start
        it."""
        try:
            await self._slots.acquire()
            if self._epoch is None:
                self._epoch = self._service.seen_epoch
            if self._epoch is None and self._service.lifecycle is not None:
                # Read before any object is written: a deletion that ends after this read
                # advances the epoch past it (see _keep_written)
                self._epoch = (await self._service.lifecycle.deletion_state(()))[0]
        except BaseException:
            spool.close()
            raise
        task = asyncio.create_task(self._service._write(self._site, spool, self._study))
        self._files[task] = (spool, self._epoch or 0)
        task.add_done_callback(self._done)
        self._pending.append(task)
        await self._collect(wait=False)

    def _done(self, task: asyncio.Future[_Entry]) -> None:
        self._slots.release()
        spool, epoch = self._files.pop(task)
        if task.cancelled() or task.exception() is not None:
            spool.close()
            return
        entry = task.result()
        if not isinstance(entry, NewInstance):
            spool.close()
            return
        self._held[id(entry)] = (spool, epoch)
        if spool.in_memory:
            self._held_memory += spool.size

    def add_failed(self, reason: int, text: str) -> None:
        """Report a part that is not an instance, in its place among the others."""
        done: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        done.set_result(_Failed("", "", reason, text))
        self._pending.append(done)

    async def _collect(self, *, wait: bool) -> None:
        """Move finished parts (in order) to the ready list, indexing each full batch."""
        while self._pending:
            head = self._pending[0]
            if not head.done():
                if not wait:
                    return
                await asyncio.wait([head])
            self._pending.popleft()
            try:
                self._ready.append(head.result())
            except DicomwebError as exc:  # its object could not be written: the store failed
                self._ready.append(_unwritten(exc))
                raise
            if len(self._ready) >= self._batch or self._held_memory >= self._service.held_memory:
                await self._flush()

    async def _flush(self) -> None:
        """Index the ready instances in one transaction and record each outcome in order.

        Rejected instances (issue 18) are refused before indexing. Rejection notes are
        indexed after the others, each once its rejection is applied (so an instance it names
        that came in the same batch is hidden too); one whose rejection is refused (a legal
        hold, or a caller without the site's `delete` grant) is not stored.
        """
        ready, self._ready = self._ready, []
        result = self._result
        recorded = len(result.stored) + len(result.failed)
        try:
            await self._index(ready)
        except DicomwebError as exc:
            # _index records each entry in order, once all of the batch's index work is done
            done = len(result.stored) + len(result.failed) - recorded
            self._fail(ready[done:], exc)
            raise
        finally:
            self._release(ready)

    def _fail(self, entries: list[_Entry], exc: DicomwebError) -> None:
        """Record received parts that a backend fault left unstored, in their place: 0x0110
        Processing failure (PS3.4 B.2.3, PS3.7 C.4: a general failure in processing), as the
        index or object store failed, not the instance."""
        for entry in entries:
            if isinstance(entry, _Failed):
                self._result.add_failed(
                    entry.sop_class_uid, entry.sop_instance_uid, entry.reason, entry.text
                )
                continue
            record = entry.record
            self._result.add_failed(
                record.sop_class_uid,
                record.sop_instance_uid,
                PROCESSING_FAILURE,
                f"SOP Instance {record.sop_instance_uid} is not stored: {exc.reason}",
            )

    async def _index(self, ready: list[_Entry]) -> None:
        service, site, result = self._service, self._site, self._result
        written = [entry for entry in ready if isinstance(entry, NewInstance)]
        refused = await self._rejected(written)
        notes: dict[int, RejectionNote] = {}
        for item in written:
            note = rejection_note_of(item.record)
            if note is not None and item.record.sop_instance_uid not in refused:
                notes[id(item)] = note
        plain = [
            item
            for item in written
            if item.record.sop_instance_uid not in refused and id(item) not in notes
        ]
        outcomes: dict[int, AddOutcome | _Failed] = dict(
            zip(map(id, plain), await add_instances(service.index, site, plain), strict=True)
        )
        for item in written:
            note = notes.get(id(item))
            if note is not None:
                outcomes[id(item)] = await self._add_note(item, note)
        await self._keep_written(
            [item for item in written if isinstance(outcomes.get(id(item)), AddOutcome)]
        )
        for entry in ready:
            if isinstance(entry, _Failed):
                result.add_failed(
                    entry.sop_class_uid, entry.sop_instance_uid, entry.reason, entry.text
                )
                continue
            record = entry.record
            code = refused.get(record.sop_instance_uid)
            if code is not None:
                await self._discard(entry.blob_key)
                result.add_failed(
                    record.sop_class_uid,
                    record.sop_instance_uid,
                    SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT,
                    f"SOP Instance {record.sop_instance_uid} was rejected ({code}):"
                    " a rejected instance is not stored again",
                )
                continue
            outcome = outcomes[id(entry)]
            if isinstance(outcome, _Failed):  # a refused rejection note
                result.add_failed(
                    outcome.sop_class_uid, outcome.sop_instance_uid, outcome.reason, outcome.text
                )
                continue
            if outcome is AddOutcome.CONFLICT:
                # Our object's key is unique to this content and place, so no row references it.
                await self._discard(entry.blob_key)
                result.add_failed(
                    record.sop_class_uid,
                    record.sop_instance_uid,
                    DUPLICATE_SOP_INSTANCE,
                    f"SOP Instance {record.sop_instance_uid} is already stored with different"
                    " content or in another series; the stored copy is kept",
                )
                continue
            log.debug("stored instance %s (%s)", record.sop_instance_uid, outcome.value)
            result.add_stored(
                record.sop_class_uid,
                record.sop_instance_uid,
                record.study_instance_uid,
                record.series_instance_uid,
            )

    async def _keep_written(self, indexed: list[NewInstance]) -> None:
        """Make sure the objects of instances just indexed are there, against a deletion of
        the same keys racing the store (services/delete.py `delete_unneeded`).

        A deleter marks its keys (committed) before it looks for rows that need them and
        unmarks them, advancing the epoch, once their objects are gone. Our rows are
        committed now, so a deleter that has not looked yet will see them and keep the
        objects. One that looked before either still has its mark, or has ended, advancing
        the epoch past the one read before our objects were written. Then wait for the marks
        to go and write again, from the bytes still held, any object that is missing.
        """
        lifecycle = self._service.lifecycle
        if lifecycle is None or not indexed:
            return
        keys = sorted({item.blob_key for item in indexed})
        since = min(self._held[id(item)][1] for item in indexed)
        epoch, marked = await lifecycle.deletion_state(keys)
        self._epoch = epoch
        self._service.seen_epoch = max(epoch, self._service.seen_epoch or 0)
        if epoch == since and not marked:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DELETION_WAIT
        while marked and loop.time() < deadline:
            await asyncio.sleep(_DELETION_POLL)
            self._epoch, marked = await lifecycle.deletion_state(keys)
        if marked:
            log.warning(
                "objects %s still marked for deletion after %gs; checking them anyway",
                ", ".join(sorted(marked)[:3]),
                _DELETION_WAIT,
            )
        blobs = self._service.blobs
        checked: set[str] = set()
        for item in indexed:
            if item.blob_key in checked:
                continue
            checked.add(item.blob_key)
            try:
                await blobs.read_range(item.blob_key, 0, 1)
                continue
            except NotFoundError:
                pass
            await blobs.put(item.blob_key, self._held[id(item)][0].iter_chunks())
            log.warning(
                "instance %s: a purge of its deleted copy removed the object as it was stored"
                " again; written again",
                item.record.sop_instance_uid,
            )

    def _release(self, entries: list[_Entry]) -> None:
        """Close the spools of indexed (or abandoned) parts."""
        for entry in entries:
            held = self._held.pop(id(entry), None)
            if held is None:
                continue
            spool = held[0]
            if spool.in_memory:
                self._held_memory -= spool.size
            spool.close()

    async def _rejected(self, written: list[NewInstance]) -> dict[str, str]:
        """{SOP Instance UID: rejection code} of the written instances an IOCM rejection named."""
        lifecycle = self._service.lifecycle
        if lifecycle is None or not written:
            return {}
        return await lifecycle.rejected_among(
            self._site, [entry.record.sop_instance_uid for entry in written]
        )

    async def _add_note(self, entry: NewInstance, note: RejectionNote) -> AddOutcome | _Failed:
        """Apply a rejection note, then index it; the failed entry it is otherwise (a caller
        who may not reject at the site, a study that may not be changed): then nothing of
        it is rejected and its object is removed."""
        lifecycle = self._service.lifecycle
        assert lifecycle is not None
        record = entry.record
        uid = record.sop_instance_uid
        principal = self._principal
        try:
            access.check(principal, self._site, Role.DELETE)  # as the reject resource
        except ForbiddenError as exc:
            await self._discard(entry.blob_key)
            log.warning("rejection note %s refused at site %s: %s", uid, self._site, exc.reason)
            return _Failed(
                record.sop_class_uid,
                uid,
                NOT_AUTHORIZED,
                f"rejection note {uid} is not stored: storing a rejection note rejects the"
                f" instances it names, which needs the delete grant ({exc.reason});"
                " nothing was rejected",
            )
        caller = principal.display_name or principal.subject
        try:
            await lifecycle.apply_rejection_note(self._site, note, uid, who=caller)
        except ConflictError as exc:
            await self._discard(entry.blob_key)
            return _Failed(
                record.sop_class_uid,
                uid,
                PROCESSING_FAILURE,
                f"the rejection note cannot be applied: {exc.reason}",
            )
        return (await add_instances(self._service.index, self._site, [entry]))[0]

    async def _discard(self, blob_key: str) -> None:
        """Delete the object of a part that is not stored, unless an instance still needs it:
        a trashed one, or a stored one (a refused rejection note sent again, byte for byte,
        has the stored copy's key)."""
        lifecycle = self._service.lifecycle
        if lifecycle is not None:
            await lifecycle.discard(blob_key)
            return
        await self._service.blobs.delete(blob_key)

    async def _abandon(self, exc: DicomwebError) -> None:
        """After a backend fault: stop the parts in flight and record every received part not
        stored yet as failed. Objects written for them and never indexed are orphans, which
        `sweep-orphans` removes (services/maintenance.py)."""
        ready = list(self._ready)
        pending = list(self._pending)
        await self._cancel()
        entries: list[_Entry] = list(ready)
        for future in pending:
            entries.append(future.result() if _written(future) else _unwritten(exc))
        self._fail(entries, exc)

    async def _cancel(self) -> None:
        """Stop every part in flight and wait until each has closed its file."""
        pending, self._pending = list(self._pending), deque()
        self._release(self._ready)
        self._ready = []
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.wait(pending)
        self._release([future.result() for future in pending if _written(future)])
        for future in pending:
            if not future.cancelled():
                future.exception()  # retrieved: it is the caller's exception that propagates


def _unwritten(exc: DicomwebError) -> _Failed:
    """The failed-SOP entry of a received part a backend fault left unwritten."""
    return _Failed("", "", PROCESSING_FAILURE, f"a part is not stored: {exc.reason}")


def _written(future: asyncio.Future[_Entry]) -> bool:
    return not future.cancelled() and future.exception() is None


def rejection_note_of(record: InstanceRecord) -> RejectionNote | None:
    """The rejection a Key Object Selection Document carries, if it is a rejection note
    (STOW and import apply it as it is stored, reindex as it rebuilds a lost index)."""
    if record.sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT:
        return None
    metadata = orjson.loads(record.metadata)
    return rejection_note(metadata) if isinstance(metadata, dict) else None
