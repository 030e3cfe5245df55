"""Export: selected studies as PS3.10 media (files, DICOMDIR, MANIFEST.csv), optionally
de-identified (PS3.15 Annex E, domain/deidentify.py).

Studies are selected with the index's own study search (site, Patient ID, Study Instance
UID, Study Date range), paged; each study's instances are streamed from the blob store to
the sink one at a time, so memory stays flat whatever the size. Without de-identification
the stored bytes are copied as they are and the DICOMDIR records come from the metadata the
index keeps. With it, only the header (everything before Pixel Data) and any elements after
Pixel Data are read into memory and de-identified; Pixel Data itself is streamed through
unchanged, as the profile leaves it (its Clean Pixel Data Option is not offered: instances
marked with burned-in annotation are left out instead).

The re-encoded data set is written as its transfer syntax says, whatever the stored bytes did:
elements read with implicit VR under an explicit syntax (which pydicom accepts, so STOW does)
get their VRs, and a stray item or sequence delimiter at the top level (it carries no data) is
dropped. An instance that still cannot be read, de-identified or re-encoded is a failure with
its reason, and the export goes on. So is one whose stored bytes, hashed as they are read, no
longer match the SHA-256 recorded when it was stored (for a de-identified copy, the bytes it
was made from): its file is removed again, so MANIFEST.csv never vouches for damaged data.

Exported data has left the archive's control, so each study written (even in part, and
de-identified too: it is still the patient's data) is recorded in the audit trail as a DICOM
Export (PS3.15 A.5.3.6) naming the destination, once the study is done: one record at a
time, never a list of the whole export.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.domain.deidentify import Deidentifier
from dicomweb_server.domain.identifiers import StudyKey
from dicomweb_server.domain.query import parse_query
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.errors import DicomwebError, NotFoundError
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.audit import AuditService, system_event
from dicomweb_server.services.dicomdir import FileSetBuilder, Placement
from dicomweb_server.services.export_sinks import ExportSink, SinkWriteError
from dicomweb_server.storage.base import BlobStore

__all__ = ["ExportAudit", "ExportError", "ExportSelection", "ExportService", "ExportStats"]

_PAGE = 1000  # studies per index search
_CHUNK = 1 << 20  # bytes per read of a stored object
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_DELIMITER_GROUP = 0xFFFE  # Item, Item Delimitation, Sequence Delimitation: no data elements
_STUDY_UID = "0020000D"
_PATIENT_ID = "00100020"
_INSTANCES_IN_STUDY = "00201208"
_MANIFEST_HEADER = ("path", "sop_instance_uid", "bytes", "sha256")
_HASH_IN_THREAD = 64 << 10  # chunks at least this long are hashed off the event loop
_CORRUPT = (
    "its stored bytes no longer match the SHA-256 recorded when it was stored (damaged in"
    " the store: run verify); not exported"
)
_T = TypeVar("_T")


class ExportError(DicomwebError):
    """The export cannot go on (the destination refused a write, the selection is empty)."""


@dataclass(frozen=True, slots=True)
class ExportSelection:
    """Which studies: all of a site, narrowed by patient (the Patient ID exactly: `*` and `?`
    are characters, not wildcards), study and Study Date (YYYYMMDD)."""

    site: str
    patient_id: str | None = None
    study_instance_uid: str | None = None
    since: str | None = None
    until: str | None = None

    def params(self) -> list[tuple[str, str]]:
        """The selection as QIDO match keys."""
        params = []
        if self.patient_id is not None:
            params.append(("PatientID", self.patient_id))
        if self.study_instance_uid is not None:
            params.append(("StudyInstanceUID", self.study_instance_uid))
        if self.since or self.until:
            params.append(("StudyDate", f"{self.since or ''}-{self.until or ''}"))
        return params


@dataclass(frozen=True, slots=True)
class ExportAudit:
    """Who exports to where, for the Export record of each study."""

    trail: AuditService
    actor: str  # the system actor, `cli:export`
    operator: str  # who ran it
    destination: str  # the folder or zip file, as the record names it

    async def record(self, site: str, study: str, written: int, deidentified: str) -> None:
        """Record (and write at once) that `written` instances of `study` were exported."""
        detail = f"{written} instances to {self.destination}"
        if deidentified:
            detail += f", de-identified ({deidentified})"
        event = system_event(
            AuditAction.EXPORT,
            self.actor,
            site,
            {study: None},  # the patient: resolved from the index, the study is there
            operator=self.operator,
            detail=detail,
        )
        self.trail.record(event)
        await self.trail.flush()


@dataclass(slots=True)
class ExportStats:
    """Counters of an export, for progress and the summary."""

    studies: int = 0
    instances_total: int | None = None
    instances_done: int = 0
    bytes_done: int = 0
    written: int = 0
    excluded: int = 0  # burned-in annotation, left out of a de-identified export
    failed: int = 0
    dicomdir_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped_early: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(slots=True)
class _Prepared:
    """One instance ready to write: its header dataset and its bytes as a stream."""

    header: Dataset
    chunks: AsyncIterator[bytes | memoryview]
    size_hint: int
    # The stored bytes' SHA-256, complete once `chunks` is: for a copy that is not those
    # bytes (de-identified); None when what is written is the stored bytes themselves
    source: Any = None


class ExportService:
    """Writes a selection to a sink; `deidentifier` set: de-identified on the way."""

    def __init__(
        self,
        index: InstanceIndex,
        blobs: BlobStore,
        *,
        deidentifier: Deidentifier | None = None,
        max_in_memory_bytes: int = 64 << 20,
        listener: Any = None,
        audit: ExportAudit | None = None,
    ) -> None:
        self._index = index
        self._audit = audit
        self._blobs = blobs
        self._deid = deidentifier
        self._max_in_memory = max_in_memory_bytes
        self._listener = listener  # callable(label, reason) for each failed instance
        self.stats = ExportStats()
        self._stop = False

    def stop(self) -> None:
        """Finish the instance being written, then write the DICOMDIR for what was written."""
        self._stop = True
        self.stats.stopped_early = True

    async def list_studies(self, selection: ExportSelection) -> list[tuple[str, str]]:
        """(Study Instance UID, Patient ID) of every selected study, counting the instances."""
        studies: list[tuple[str, str]] = []
        total = 0
        offset = 0
        while True:
            query = parse_query(
                [*selection.params(), ("limit", str(_PAGE)), ("offset", str(offset))],
                Level.STUDY,
                selection.site,
                default_limit=_PAGE,
                max_limit=_PAGE,
            )
            page = await self._index.search(query)
            for row in page.rows:
                uid = _first(row, _STUDY_UID)
                if selection.patient_id is not None and _first(row, _PATIENT_ID) != (
                    selection.patient_id
                ):
                    continue  # matched a wildcard ("PAT*"): the Patient ID is taken as it is
                if uid:
                    studies.append((uid, _first(row, _PATIENT_ID)))
                    count = _first(row, _INSTANCES_IN_STUDY)
                    total += int(count) if count.isdigit() else 0
            if not page.more or not page.rows:
                break
            offset += len(page.rows)
        self.stats.studies = len(studies)
        self.stats.instances_total = total
        return studies

    async def run(self, selection: ExportSelection, sink: ExportSink) -> None:
        """Export the selection into `sink`, closing it (complete, or abandoned on error)."""
        builder = FileSetBuilder("DICOMWEB")
        manifest = tempfile.TemporaryFile("w+b")  # noqa: SIM115 - closed below
        rows = io.TextIOWrapper(manifest, encoding="utf-8", newline="", write_through=True)
        table = csv.writer(rows)
        table.writerow(_MANIFEST_HEADER)
        complete = False
        try:
            studies = await self.list_studies(selection)
            if not studies:
                raise ExportError("no study matches the selection; nothing written")
            for study, patient in studies:
                if self._stop:
                    break
                before = self.stats.written
                try:
                    await self._export_study(selection.site, study, patient, builder, sink, table)
                finally:
                    written = self.stats.written - before
                    if written and self._audit is not None:
                        profile = self._deid.options.profile_name if self._deid else ""
                        await self._audit.record(selection.site, study, written, profile)
            size_of = builder.write

            def write_dicomdir(out: Any) -> None:
                self.stats.dicomdir_bytes = size_of(out)

            await sink.write_with("DICOMDIR", write_dicomdir)
            rows.flush()
            manifest.seek(0)
            await sink.write_with("MANIFEST.csv", lambda out: _copy(manifest, out))
            complete = True
        except SinkWriteError as exc:
            raise ExportError(exc.reason) from exc
        finally:
            try:
                await sink.close(complete=complete)
            finally:
                rows.close()

    async def _export_study(
        self,
        site: str,
        study: str,
        patient: str,
        builder: FileSetBuilder,
        sink: ExportSink,
        table: Any,
    ) -> None:
        async for instance in self._index.iter_instances(StudyKey(site, study)):
            if self._stop:
                return
            label = instance.blob_key
            try:
                prepared = await self._prepare(instance)
            except NotFoundError:
                self._failed(label, "the stored object is missing (run verify)")
                continue
            except _UnexportableError as exc:
                self._failed(label, exc.reason)
                continue
            if prepared is None:
                self.stats.excluded += 1
                self.stats.instances_done += 1
                continue
            header = prepared.header
            if self._deid is None:
                placement = builder.place(patient, study, instance.key.series_instance_uid)
            else:
                placement = builder.place(
                    str(header.get("PatientID", "")),
                    str(header.StudyInstanceUID),
                    str(header.SeriesInstanceUID),
                )
            try:
                await self._describe(builder, placement, header, instance.transfer_syntax_uid)
            except Exception as exc:  # pydicom raises many types on values it cannot convert
                builder.forget(placement)
                await _aclose(prepared.chunks)
                self._failed(label, f"no DICOMDIR record can be made of it: {_said(exc)}")
                continue
            try:
                size, digest = await sink.write_file(
                    placement.path, prepared.chunks, prepared.size_hint
                )
            except BaseException:
                builder.forget(placement)
                raise
            finally:
                await _aclose(prepared.chunks)
            read = digest if prepared.source is None else prepared.source.hexdigest()
            if read != instance.digest:  # damaged in the store since it was indexed
                builder.forget(placement)
                await sink.discard(placement.path)
                self._failed(label, _CORRUPT)
                continue
            table.writerow((placement.path, str(header.SOPInstanceUID), size, digest))
            self.stats.written += 1
            self.stats.instances_done += 1
            self.stats.bytes_done += size

    def _failed(self, label: str, reason: str) -> None:
        self.stats.failed += 1
        self.stats.instances_done += 1
        if self._listener is not None:
            self._listener(label, reason)

    async def _describe(
        self, builder: FileSetBuilder, placement: Placement, header: Dataset, syntax: str
    ) -> None:
        await asyncio.to_thread(builder.describe, placement, header, syntax)

    async def _prepare(self, instance: StoredInstance) -> _Prepared | None:
        """The instance's header and bytes; None when de-identification leaves it out."""
        syntax = instance.transfer_syntax_uid
        if self._deid is None:
            chunks = await _opened(self._blobs.iter_get(instance.blob_key, chunk_size=_CHUNK))
            metadata = await self._index.get_metadata(instance.key)
            if metadata is None:
                raise NotFoundError(f"no metadata for {instance.key.sop_instance_uid}")
            try:
                header = await _work("its metadata cannot be read", _from_json, metadata, syntax)
            except BaseException:
                await _aclose(chunks)
                raise
            return _Prepared(header, chunks, instance.size)
        return await self._deidentified(instance)

    async def _read(self, instance: StoredInstance, start: int, length: int) -> bytes:
        if length > self._max_in_memory:
            raise _UnexportableError(
                f"{length} bytes would have to be de-identified in memory, over"
                f" DICOMWEB_MAX_HEADER_BYTES ({self._max_in_memory})"
            )
        if length <= 0:
            return b""
        return await self._blobs.read_range(instance.blob_key, start, length)

    async def _deidentified(self, instance: StoredInstance) -> _Prepared | None:
        deid = self._deid
        assert deid is not None
        if not UID(instance.transfer_syntax_uid).is_transfer_syntax:
            raise _UnexportableError(
                f"its transfer syntax {instance.transfer_syntax_uid} is not a known one, so a"
                " de-identified copy cannot be encoded"
            )
        split = await self._split(instance)
        if split is None:  # no Pixel Data to stream around: the whole object in memory
            data = await self._read(instance, 0, instance.size)
            source = await asyncio.to_thread(hashlib.sha256, data)
            if source.hexdigest() != instance.digest:
                raise _UnexportableError(_CORRUPT)
            whole: Dataset = await _work("it cannot be read", _parse_whole, data)
            if (await _work("it cannot be de-identified", deid.apply, whole)).excluded:
                return None
            encoded = await _work("its de-identified copy cannot be encoded", _encode_file, whole)
            return _Prepared(whole, _chunks_of(encoded), len(encoded), source)
        header_bytes, pixel_tag, tag_offset, pixel_end, tail_bytes = split
        syntax = instance.transfer_syntax_uid
        ds = await _work("it cannot be read", _parse_split, header_bytes, tail_bytes, syntax)
        if (await _work("it cannot be de-identified", deid.apply, ds)).excluded:
            return None
        head, tail_encoded = await _work(
            "its de-identified copy cannot be encoded", _encode_split, ds, pixel_tag, syntax
        )
        pixel = self._blobs.iter_get(
            instance.blob_key, tag_offset, pixel_end - tag_offset, chunk_size=_CHUNK
        )
        source = hashlib.sha256(header_bytes)  # the stored bytes, as they were read
        read = _hashed(await _opened(pixel), source, tail_bytes)
        chunks = _concat(head, read, tail_encoded)
        hint = len(head) + (pixel_end - tag_offset) + len(tail_encoded)
        return _Prepared(ds, chunks, hint, source)

    async def _split(self, instance: StoredInstance) -> tuple[bytes, int, int, int, bytes] | None:
        """(header before Pixel Data, its tag, its offset, where it ends, what follows), or
        None when Pixel Data cannot be streamed around (none, deflated, unmapped)."""
        pixel = instance.pixel
        syntax = instance.transfer_syntax_uid
        if pixel is None or syntax == DeflatedExplicitVRLittleEndian:
            return None
        if pixel.encapsulated and not pixel.frames:
            return None
        header = await self._read(instance, 0, pixel.value_offset)
        tag_offset = pixel.value_offset - (8 if syntax == ImplicitVRLittleEndian else 12)
        if tag_offset < 132:
            return None
        order = ">" if syntax == ExplicitVRBigEndian else "<"
        group, element = struct.unpack_from(order + "HH", header, tag_offset)
        pixel_tag = group << 16 | element
        if pixel_tag not in _PIXEL_TAGS:
            return None
        if pixel.encapsulated:
            end = max(o + n for frame in pixel.frames for o, n in frame.fragments)
            rest = await self._read(instance, end, instance.size - end)
            if not rest.startswith(_SEQUENCE_END):
                return None
            return header[:tag_offset], pixel_tag, tag_offset, end + 8, rest[8:]
        end = pixel.value_offset + pixel.value_length
        rest = await self._read(instance, end, instance.size - end)
        return header[:tag_offset], pixel_tag, tag_offset, end, rest


class _UnexportableError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _work(failure: str, func: Callable[..., _T], *args: Any) -> _T:
    """`func(*args)` in a thread; whatever pydicom raises on data it cannot handle (it raises
    many types) becomes this instance's failure, with `failure` and pydicom's words as reason."""
    try:
        return await asyncio.to_thread(func, *args)
    except Exception as exc:
        raise _UnexportableError(f"{failure}: {_said(exc)}") from exc


def _said(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _first(row: dict[str, Any], tag: str) -> str:
    try:
        return str(row[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""


def _from_json(metadata: bytes, syntax: str) -> Dataset:
    ds = Dataset.from_json(metadata, lambda tag, vr, uri: None)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return ds


def _parse_whole(data: bytes) -> Dataset:
    return _without_delimiters(dcmread(io.BytesIO(data)))


def _parse_split(header: bytes, tail: bytes, syntax: str) -> Dataset:
    ds = dcmread(io.BytesIO(header))
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    following = read_dataset(io.BytesIO(tail), implicit, little) if tail else Dataset()
    for tag in following.keys():  # noqa: SIM118 - iterating a Dataset converts every element
        ds[tag] = following.get_item(tag, keep_deferred=True)
    return _without_delimiters(ds)


def _without_delimiters(ds: Dataset) -> Dataset:
    """`ds` without top-level Item or Delimitation "elements": a stray Sequence Delimitation
    Item after encapsulated Pixel Data (a writer that closed the sequence twice) is read as
    one, carries no data and cannot be written as an element."""
    for tag in list(ds.keys()):
        if tag >> 16 == _DELIMITER_GROUP:
            del ds[tag]
    return ds


def _with_vrs(ds: Dataset) -> None:
    """Give each element of `ds` (and of its items) read without a VR, as implicit VR data is,
    its VR, so it can be written with explicit VR. pydicom reads implicit VR data whatever the
    transfer syntax declares, then keeps the syntax's explicit VR as the data set's encoding
    and would write those elements with no VR at all. A value pydicom cannot convert keeps
    its bytes under the dictionary VR (UN for a sequence, a private or an ambiguous one:
    PS3.5 6.2.2 reads undefined-length UN as implicit VR, which its bytes are)."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if element is None:
            continue
        if element.VR is None:
            try:
                element = ds[tag]
            except Exception:  # e.g. IS "1A": kept as it was stored
                assert isinstance(element, RawDataElement)
                ds[tag] = element._replace(VR=_stored_vr(tag))
                continue
        if element.VR == "SQ":
            if isinstance(element, RawDataElement):
                if not element.is_implicit_VR:
                    continue  # read with VRs, its items too: written as it is
                element = ds[tag]
            for item in element.value:
                _with_vrs(item)


def _stored_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return "UN" if vr == "SQ" or " " in vr or vr == "NONE" else vr


def _encode_file(ds: Dataset) -> bytes:
    if not UID(ds.file_meta.TransferSyntaxUID).is_implicit_VR:
        _with_vrs(ds)
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _encode_split(ds: Dataset, pixel_tag: int, syntax: str) -> tuple[bytes, bytes]:
    """The de-identified header (file meta included) and the elements after Pixel Data."""
    after = Dataset()
    for element in [element for element in ds if element.tag > pixel_tag]:
        after[element.tag] = element
        del ds[element.tag]
    head = _encode_file(ds)
    if not len(after):
        return head, b""
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(fp, after)
    for element in after:  # back, so the DICOMDIR sees the whole data set
        ds[element.tag] = element
    return head, fp.getvalue()


async def _opened(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes | memoryview]:
    """`chunks` with its first one read already, so a missing object fails before a write."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except BaseException:
        await _aclose(chunks)
        raise
    return _concat(first, chunks, b"")


async def _concat(
    head: bytes, body: AsyncIterator[Any], tail: bytes
) -> AsyncIterator[bytes | memoryview]:
    """head, then body's chunks, then tail; closing it closes `body` (and its file)."""
    try:
        if head:
            yield head
        async for chunk in body:
            yield chunk
        if tail:
            yield tail
    finally:
        await _aclose(body)


async def _hashed(
    body: AsyncIterator[bytes | memoryview], digest: Any, after: bytes
) -> AsyncIterator[bytes | memoryview]:
    """`body`'s chunks, added to `digest` as they pass, then `after` added (not yielded)."""
    try:
        async for chunk in body:
            if len(chunk) >= _HASH_IN_THREAD:
                await asyncio.to_thread(digest.update, chunk)
            else:
                digest.update(chunk)
            yield chunk
        digest.update(after)
    finally:
        await _aclose(body)


async def _aclose(chunks: AsyncIterator[Any]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


async def _chunks_of(data: bytes) -> AsyncIterator[bytes | memoryview]:
    view = memoryview(data)
    for start in range(0, len(data), _CHUNK):
        yield view[start : start + _CHUNK]


def _copy(source: Any, out: Any) -> None:
    while chunk := source.read(_CHUNK):
        out.write(chunk)
