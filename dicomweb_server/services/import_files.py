"""Import sources on disk: folders, zip and tar archives, DICOMDIR-referenced file-sets.

One reader thread walks the paths in order and reads each file with large reads straight
into a `Spool` (kept in memory up to a bound); the event loop takes them from a small queue,
so reading overlaps parsing and writing. Archives are read member by member as streams,
never extracted: member names are only ever labels, and every member's expanded size is
checked against named limits, both as declared and as counted while reading (zip bombs).
A tar stream is walked header by header here rather than by tarfile's reader, which reads
an extended header (a GNU long name, pax records) whole, whatever size it declares, and keeps
every member it passed: a few kilobytes of .tar.gz could make it hold gigabytes.
"""

from __future__ import annotations

import asyncio
import bz2
import concurrent.futures
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomweb_server.services.import_journal import ImportJournal, JournalKey
from dicomweb_server.services.importer import ImportItem, ImportStats, Outcome
from dicomweb_server.services.spool import Spool

__all__ = ["ARCHIVE_SUFFIXES", "ReadLimits", "iter_file_items", "scan_totals"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_READ_SIZE = 8 << 20  # bytes per read of a file or member larger than the spool bound
_DICM_OFFSET = 128
_DICM_END = _DICM_OFFSET + 4
_NOT_DICOM = "not a DICOM Part 10 file (no 'DICM' at byte 128)"
_PUT_POLL = 0.25  # seconds between checks for a stop while the queue is full
_DICOMDIR = "DICOMDIR"
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
)
# The extended headers of one tar member (GNU long names, pax records, an old GNU sparse map)
# are read whole: real ones hold a path or a few attributes, kilobytes; more is a bomb.
_TAR_EXTENDED_HEADER_BYTES = 1 << 20
_TAR_NAME_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_TAR_PAX_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_PAX_KEPT = (b"path", b"size")
_TAR_NO_DATA = (
    tarfile.LNKTYPE,
    tarfile.SYMTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
)
# A member name longer than a path can be (PATH_MAX) is shortened in its label: labels are
# copied into the journal, the report and messages.
_LABEL_NAME_CHARS = 4096
_LABEL_NAME_SHOWN = 200


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds on what one file or archive may make us read."""

    max_member_bytes: int
    max_archive_bytes: int
    spool_memory: int
    max_part_bytes: int  # STOW's bound on one instance, for files and members alike


class _OverLimitError(Exception):
    """A member or archive expands past its limit; `archive` when the whole archive must stop."""

    def __init__(self, reason: str, *, archive: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.archive = archive


class _StoppedError(Exception):
    """The consumer stopped taking items."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _member_label(archive: Path, name: str) -> str:
    """`archive!member`; a name past any real path's length is shortened, with a digest that
    keeps labels of different names different (the journal keys by label)."""
    if len(name) > _LABEL_NAME_CHARS:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f"{name[:_LABEL_NAME_SHOWN]}... ({len(name)} characters, sha256 {digest})"
    return f"{archive}!{name}"


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_dicomdir(name: str) -> bool:
    return PurePosixPath(name).name.upper() == _DICOMDIR


def _bytes_item(label: str, spool: Spool, key: JournalKey | None) -> ImportItem:
    """The item for a DICOM file read, into the pipeline."""
    spool.seek(0)
    return ImportItem(label, spool.size, spool=spool, journal_key=key)


def _not_dicom_item(label: str, size: int, key: JournalKey | None) -> ImportItem:
    """The item for a file or member without the Part 10 preamble: counted, never read on."""
    return ImportItem(label, size, outcome=Outcome.NOT_DICOM, reason=_NOT_DICOM, journal_key=key)


def _read_head(file: _Readable) -> bytes | None:
    """The first bytes of a file up to its 'DICM' at byte 128, or None when that is not there:
    decided before anything more is read (a video of gigabytes is no DICOM file)."""
    head = b""
    while len(head) < _DICM_END and (chunk := file.read(_DICM_END - len(head))):
        head += chunk
    return head if head[_DICM_OFFSET:] == b"DICM" else None


def _referenced_files(data: BinaryIO) -> list[tuple[str, ...]]:
    """The ReferencedFileID of every record of a DICOMDIR, as path components."""
    ds = dcmread(data, force=False)
    found: list[tuple[str, ...]] = []
    for record in ds.get("DirectoryRecordSequence", []):
        value = record.get("ReferencedFileID")
        if not value:
            continue
        parts = (value,) if isinstance(value, str) else tuple(str(part) for part in value)
        found.append(tuple(part.strip() for part in parts))
    return found


def _safe_components(parts: tuple[str, ...]) -> bool:
    """A File ID stays inside its file-set: no empty, parent or separator components."""
    return bool(parts) and all(
        part not in ("", ".", "..") and not any(c in part for c in "/\\\0") for part in parts
    )


class _Reader:
    """Walks the paths in order (in a thread), emitting an item per file or member."""

    def __init__(
        self,
        limits: ReadLimits,
        journal: ImportJournal | None,
        emit: Callable[[ImportItem], None],
    ) -> None:
        self._limits = limits
        self._journal = journal
        self._emit = emit
        self._listings: dict[Path, dict[str, str]] = {}

    def run(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self._path(path)

    def _failed(self, label: str, reason: str, key: JournalKey | None = None) -> None:
        self._emit(ImportItem(label, 0, outcome=Outcome.FAILED, reason=reason, journal_key=key))

    def _done(self, key: JournalKey) -> bool:
        if self._journal is not None and self._journal.is_done(key):
            self._emit(ImportItem(key[0], key[1], outcome=Outcome.SKIPPED))
            return True
        return False

    def _path(self, path: Path) -> None:
        try:
            info = path.stat()
        except OSError as exc:
            self._failed(str(path), f"cannot read: {exc.strerror}")
            return
        if stat.S_ISDIR(info.st_mode):
            self._folder(path)
        elif not stat.S_ISREG(info.st_mode):
            self._failed(str(path), "not a regular file or folder")
        elif _is_dicomdir(path.name):
            self._file_set(path)
        else:
            self._entry(path, info)

    def _entry(self, path: Path, info: os.stat_result) -> None:
        if _is_archive(path.name):
            self._archive(path, info)
        else:
            self._file(path, info)

    def _folder(self, root: Path) -> None:
        def unreadable(exc: OSError) -> None:
            self._failed(str(exc.filename or root), f"cannot list folder: {exc.strerror}")

        for folder, dirnames, filenames in os.walk(root, onerror=unreadable):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(folder, name)
                try:
                    info = path.stat()
                except OSError as exc:
                    self._failed(str(path), f"cannot read: {exc.strerror}")
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue  # sockets, pipes, devices, dangling links: nothing to import
                if _is_dicomdir(name):
                    self._check_file_set(path)  # its files are imported as the walk finds them
                else:
                    self._entry(path, info)

    # Plain files and DICOMDIR file-sets.

    def _file(self, path: Path, info: os.stat_result) -> None:
        key = (str(path), info.st_size, info.st_mtime_ns)
        if self._done(key):
            return
        try:
            spool = self._read_file(path, info.st_size)
        except OSError as exc:
            self._failed(str(path), f"cannot read: {exc.strerror}")
            return
        except _OverLimitError as exc:  # it grew past the limit since it was listed
            self._failed(str(path), exc.reason, key)
            return
        if spool is None:
            self._emit(_not_dicom_item(str(path), info.st_size, key))
        else:
            self._emit(_bytes_item(str(path), spool, key))

    def _read_file(self, path: Path, size: int) -> Spool | None:
        """The file in a spool; None when it is not DICOM (then only its head was read)."""
        limit = self._limits.max_part_bytes
        with open(path, "rb", buffering=0) as file:
            head = _read_head(file)
            if head is None:
                return None
            if size > limit:
                raise _OverLimitError(self._part_limit_reason(size), archive=False)
            spool = Spool(self._limits.spool_memory)
            try:
                spool.write(head)
                if size <= self._limits.spool_memory:
                    spool.write(file.readall())  # one read of the rest of the file
                while spool.size <= limit and (chunk := file.read(_READ_SIZE)):
                    spool.write(chunk)
                if spool.size > limit:
                    raise _OverLimitError(self._part_limit_reason(spool.size), archive=False)
            except BaseException:
                spool.close()
                raise
        return spool

    def _part_limit_reason(self, size: int) -> str:
        return (
            f"{size} bytes, over DICOMWEB_MAX_PART_BYTES ({self._limits.max_part_bytes}),"
            " the largest instance STOW takes"
        )

    def _read_references(self, path: Path) -> list[tuple[str, ...]] | None:
        self._emit(ImportItem(str(path), 0, outcome=Outcome.DIRECTORY))
        try:
            with open(path, "rb") as file:
                return _referenced_files(file)
        except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
            self._failed(str(path), f"cannot read DICOMDIR: {exc}")
            return None

    def _check_file_set(self, dicomdir: Path) -> None:
        """A DICOMDIR met in a walk: report the files it references that are not there."""
        for parts in self._read_references(dicomdir) or []:
            if self._resolve(dicomdir.parent, parts) is None:
                self._missing(dicomdir, parts)

    def _file_set(self, dicomdir: Path) -> None:
        """A DICOMDIR given as the path: import the files it references."""
        for parts in self._read_references(dicomdir) or []:
            path = self._resolve(dicomdir.parent, parts)
            if path is None:
                self._missing(dicomdir, parts)
                continue
            try:
                info = path.stat()
            except OSError as exc:
                self._failed(str(path), f"cannot read: {exc.strerror}")
                continue
            self._file(path, info)

    def _missing(self, dicomdir: Path, parts: tuple[str, ...]) -> None:
        shown = "\\".join(parts)[:200]
        if not _safe_components(parts):
            self._failed(f"{dicomdir}:{shown}", "DICOMDIR references a file outside its file-set")
        else:
            self._failed(f"{dicomdir.parent / Path(*parts)}", "referenced by DICOMDIR, not found")

    def _resolve(self, root: Path, parts: tuple[str, ...]) -> Path | None:
        """The file a File ID names under `root`, matching names without regard to case
        (media are often mounted lower-case); None if absent or escaping the file-set."""
        if not _safe_components(parts):
            return None
        current = root
        for part in parts:
            exact = current / part
            if exact.exists():
                current = exact
                continue
            listing = self._listings.get(current)
            if listing is None:
                try:
                    listing = {name.upper(): name for name in os.listdir(current)}
                except OSError:
                    return None
                self._listings[current] = listing
            name = listing.get(part.upper())
            if name is None:
                return None
            current = current / name
        return current if current.is_file() else None

    # Archives.

    def _archive(self, path: Path, info: os.stat_result) -> None:
        try:
            if path.name.lower().endswith(".zip"):
                self._zip(path, info)
            else:
                self._tar(path, info)
        except _ARCHIVE_ERRORS as exc:
            self._failed(str(path), f"cannot read archive: {exc}")

    def _read_member(
        self, file: _Readable, name: str, archive_left: int, declared: int
    ) -> Spool | None:
        """Read a member as a stream, counting what it really expands to; None when it is not
        DICOM (then only its head was read). A DICOMDIR is read whatever its size: it is not
        stored, only read for the files it references."""
        limits = self._limits
        head = _read_head(file)
        if head is None:
            return None
        if declared > limits.max_part_bytes and not _is_dicomdir(name):
            raise _OverLimitError(self._part_limit_reason(declared), archive=False)
        spool = Spool(limits.spool_memory)
        try:
            chunk = head
            while chunk:
                if spool.size + len(chunk) > limits.max_member_bytes:
                    raise _OverLimitError(
                        f"expands past DICOMWEB_IMPORT_MAX_MEMBER_BYTES"
                        f" ({limits.max_member_bytes} bytes)",
                        archive=False,
                    )
                if spool.size + len(chunk) > archive_left:
                    raise _OverLimitError(
                        f"archive expands past DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES"
                        f" ({limits.max_archive_bytes} bytes) at member {name[:200]!r}",
                        archive=True,
                    )
                spool.write(chunk)
                chunk = file.read(_READ_SIZE)
        except BaseException:
            spool.close()
            raise
        return spool

    def _member_too_large(self, label: str, declared: int, key: JournalKey) -> bool:
        if declared <= self._limits.max_member_bytes:
            return False
        self._failed(
            label,
            f"declares {declared} bytes expanded, over DICOMWEB_IMPORT_MAX_MEMBER_BYTES"
            f" ({self._limits.max_member_bytes})",
            key,
        )
        return True

    def _zip(self, path: Path, info: os.stat_result) -> None:
        limits = self._limits
        with zipfile.ZipFile(path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            declared = sum(member.file_size for member in members)
            if declared > limits.max_archive_bytes:
                self._failed(
                    str(path),
                    f"declares {declared} bytes expanded, over DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES"
                    f" ({limits.max_archive_bytes}): nothing read",
                )
                return
            names = {member.filename.upper() for member in members}
            expanded = 0
            for member in members:
                label = _member_label(path, member.filename)
                key = (label, member.file_size, info.st_mtime_ns)
                if self._done(key) or self._member_too_large(label, member.file_size, key):
                    continue
                if member.flag_bits & 0x1:
                    self._failed(label, "encrypted zip member", key)
                    continue
                try:
                    with archive.open(member) as file:
                        spool = self._read_member(
                            file,
                            member.filename,
                            limits.max_archive_bytes - expanded,
                            member.file_size,
                        )
                except _OverLimitError as exc:
                    self._failed(label, exc.reason, key)
                    if exc.archive:
                        return
                    continue
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as exc:
                    self._failed(label, f"cannot read zip member: {exc}", key)
                    continue
                if spool is None:
                    expanded += _DICM_END
                    self._emit(_not_dicom_item(label, member.file_size, key))
                    continue
                expanded += spool.size
                if _is_dicomdir(member.filename):
                    self._archive_file_set(path, member.filename, spool, names)
                    continue
                self._emit(_bytes_item(label, spool, key))

    def _archive_file_set(self, path: Path, name: str, spool: Spool, names: set[str]) -> None:
        """A DICOMDIR member: report the members it references that the archive lacks."""
        label = _member_label(path, name)
        with spool:
            self._emit(ImportItem(label, spool.size, outcome=Outcome.DIRECTORY))
            try:
                references = _referenced_files(io.BytesIO(spool.read()))
            except (InvalidDicomError, ValueError, AttributeError) as exc:
                self._failed(label, f"cannot read DICOMDIR: {exc}")
                return
        folder = PurePosixPath(name).parent
        for parts in references:
            member = (folder / PurePosixPath(*parts)).as_posix() if _safe_components(parts) else ""
            if member.upper() not in names:
                shown = "\\".join(parts)[:200]
                self._failed(f"{label}:{shown}", "referenced by DICOMDIR, not in the archive")

    def _tar(self, path: Path, info: os.stat_result) -> None:
        limits = self._limits
        names: set[str] = set()
        file_sets: list[tuple[str, Spool]] = []
        try:
            with _open_tar(path) as raw:
                stream = _TarStream(raw)
                for member in stream:
                    label = _member_label(path, member.name)
                    key = (label, member.size, info.st_mtime_ns)
                    # expanded bytes the stream passes, headers included, read or skipped
                    if stream.position + member.size > limits.max_archive_bytes:
                        # A stream cannot skip a member without expanding it: stop here.
                        self._failed(
                            label,
                            "archive expands past DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES"
                            f" ({limits.max_archive_bytes}): the rest is not read",
                        )
                        return
                    if member.size > limits.max_member_bytes:
                        self._member_too_large(label, member.size, key)
                        self._failed(str(path), "archive stopped at an oversized member")
                        return
                    if not member.regular:
                        continue  # folders, links and devices are never followed
                    if len(member.name) <= _LABEL_NAME_CHARS:  # a DICOMDIR could name it
                        names.add(member.name.upper())
                    if self._done(key):
                        continue
                    try:
                        spool = self._read_member(
                            stream, member.name, limits.max_archive_bytes, member.size
                        )
                    except _OverLimitError as exc:
                        self._failed(label, exc.reason, key)
                        if exc.archive:
                            return
                        continue  # the walk skips the rest of it
                    if spool is None:
                        self._emit(_not_dicom_item(label, member.size, key))
                    elif _is_dicomdir(member.name):
                        file_sets.append((member.name, spool))
                    else:
                        self._emit(_bytes_item(label, spool, key))
        except _OverLimitError as exc:  # an extended header past its bound
            self._failed(str(path), exc.reason)
        finally:
            pending, file_sets = file_sets, []
            for name, spool in pending:  # checked once every member name is known
                self._archive_file_set(path, name, spool, names)


def _open_tar(path: Path) -> io.BufferedIOBase:
    """The tar stream of `path`, expanded as its first bytes say (gzip, bzip2, xz or none)."""
    with open(path, "rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):
        return lzma.open(path, "rb")
    return open(path, "rb")


@dataclass(frozen=True, slots=True)
class _TarMember:
    name: str
    size: int  # bytes of data after its header (none for folders, links, devices)
    regular: bool


class _TarStream:
    """The members of a tar stream, read in one pass; `read` reads the current member's data.

    Each 512-byte header block is parsed by `tarfile.TarInfo.frombuf`; the extended headers
    before a member (GNU long names, pax records, an old GNU sparse map) are refused past
    `_TAR_EXTENDED_HEADER_BYTES` before they are read, and nothing is kept once a member
    is passed. Data a caller leaves unread is skipped.
    """

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self._raw = raw
        self.position = 0  # bytes of the expanded stream passed
        self._left = 0  # data of the current member not read yet
        self._padding = 0  # then up to the next 512-byte block

    def read(self, size: int = -1, /) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        data = self._read(wanted)
        self._left -= len(data)
        if len(data) < wanted:
            raise tarfile.ReadError("unexpected end of data")
        return data

    def _read(self, size: int) -> bytes:
        data = self._raw.read(size) if size > 0 else b""
        while 0 < len(data) < size and (more := self._raw.read(size - len(data))):
            data += more
        self.position += len(data)
        return data

    def _skip(self, size: int) -> None:
        while size > 0:
            skipped = len(self._read(min(size, _READ_SIZE)))
            if not skipped:
                return  # the end: the next header read says so
            size -= skipped

    def _extended(self, size: int, total: int) -> bytes:
        if size < 0 or total > _TAR_EXTENDED_HEADER_BYTES:
            raise _OverLimitError(
                f"tar extended headers (long names, pax records) of one member declare {total}"
                f" bytes at byte {self.position}; import reads at most"
                f" {_TAR_EXTENDED_HEADER_BYTES}: the rest is not read",
                archive=True,
            )
        data = self._read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        self._skip(-size % tarfile.BLOCKSIZE)
        return data

    def __iter__(self) -> Iterator[_TarMember]:
        long_name: str | None = None
        records: dict[str, str] = {}
        global_records: dict[str, str] = {}
        extended = 0  # bytes of extended headers before the member ahead
        while True:
            self._skip(self._left + self._padding)
            self._left = self._padding = 0
            start = self.position
            block = self._read(tarfile.BLOCKSIZE)
            if not block.strip(b"\0"):
                if start == 0 and not block:
                    raise tarfile.ReadError("empty file")
                return  # the end-of-archive block, or (leniently, as tar) the end of the file
            header = tarfile.TarInfo.frombuf(block, "utf-8", "backslashreplace")
            if header.type in _TAR_NAME_HEADERS or header.type in _TAR_PAX_HEADERS:
                extended += header.size
                data = self._extended(header.size, extended)
                if header.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
                elif header.type == tarfile.XGLTYPE:
                    global_records.update(_pax_records(data))
                elif header.type != tarfile.GNUTYPE_LONGLINK:
                    records.update(_pax_records(data))
                continue
            if header.type == tarfile.GNUTYPE_SPARSE:
                more = block[482]  # an old GNU sparse map goes on in blocks of its own
                while more:
                    extended += tarfile.BLOCKSIZE
                    more = self._extended(tarfile.BLOCKSIZE, extended)[504]
            found = {**global_records, **records}
            name = found.get("path", long_name if long_name is not None else header.name)
            size = _pax_size(found["size"]) if "size" in found else header.size
            if size < 0:
                raise tarfile.ReadError(f"a member declares {size} bytes")
            if header.type in _TAR_NO_DATA:
                size = 0
            long_name, records, extended = None, {}, 0
            self._left, self._padding = size, -size % tarfile.BLOCKSIZE
            yield _TarMember(name, size, header.isreg())


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (`LENGTH KEYWORD=VALUE\\n`) that the walk uses,
    its path and size; the others (times, owners, attributes) are not kept."""
    found: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position, position + 20)
        try:
            length = int(data[position:space]) if space > position else 0
        except ValueError:
            length = 0
        record = data[space + 1 : position + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise tarfile.ReadError("invalid pax header")
        keyword, _, value = record[:-1].partition(b"=")
        if keyword in _PAX_KEPT:
            found[keyword.decode()] = value.decode("utf-8", "backslashreplace")
        position += length
    return found


def _pax_size(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise tarfile.ReadError(f"invalid pax size {value[:40]!r}") from None


async def iter_file_items(
    paths: Sequence[Path],
    limits: ReadLimits,
    journal: ImportJournal | None,
    *,
    queue_size: int,
) -> AsyncIterator[ImportItem]:
    """The items of `paths`, read ahead by a thread at most `queue_size` items."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ImportItem | None] = asyncio.Queue(max(1, queue_size))
    stop = threading.Event()
    failure: list[BaseException] = []

    def emit(item: ImportItem) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=_PUT_POLL)
                return
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    if future.cancel() and item.spool is not None:
                        item.spool.close()
                    raise _StoppedError from None

    def read() -> None:
        try:
            if stop.is_set():
                return
            _Reader(limits, journal, emit).run(paths)
        except _StoppedError:
            pass
        except BaseException as exc:
            failure.append(exc)
        finally:
            end = queue.put(None)
            try:
                asyncio.run_coroutine_threadsafe(end, loop)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                end.close()

    thread = threading.Thread(target=read, name="import-reader", daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not None:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while thread.is_alive() or not queue.empty():
            try:
                item = await asyncio.wait_for(queue.get(), _PUT_POLL)
            except TimeoutError:
                continue
            if item is None:
                break
            if item.spool is not None:
                item.spool.close()


def scan_totals(paths: Sequence[Path], stats: ImportStats, stop: threading.Event) -> None:
    """Count files and bytes ahead of the import, for progress; leaves the totals None when
    they cannot be known cheaply (compressed tars, a DICOMDIR given as the path)."""
    files = 0
    size = 0
    for name, entry_size in _iter_sizes(paths, stop):
        if name is None:
            return
        files += 1
        size += entry_size
    if not stop.is_set():
        stats.files_total, stats.bytes_total = files, size


def _iter_sizes(paths: Sequence[Path], stop: threading.Event) -> Iterator[tuple[str | None, int]]:
    """(name, bytes) of each file and archive member; (None, 0) when a total is unknowable."""
    for root in paths:
        try:
            info = root.stat()
        except OSError:
            yield str(root), 0
            continue
        if stat.S_ISREG(info.st_mode) and _is_dicomdir(root.name):
            yield None, 0
            return
        if not stat.S_ISDIR(info.st_mode):
            yield from _entry_sizes(root, info.st_size)
            continue
        for folder, dirnames, filenames in os.walk(root):
            if stop.is_set():
                yield None, 0
                return
            dirnames.sort()
            for name in filenames:
                path = Path(folder, name)
                try:
                    info = path.stat()
                except OSError:
                    yield str(path), 0
                    continue
                if stat.S_ISREG(info.st_mode):
                    yield from _entry_sizes(path, info.st_size)


def _entry_sizes(path: Path, size: int) -> Iterator[tuple[str | None, int]]:
    name = path.name.lower()
    if name.endswith(_COMPRESSED_TAR):
        yield None, 0
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        yield info.filename, info.file_size
        except _ARCHIVE_ERRORS:
            yield str(path), 0
    elif name.endswith(".tar"):
        try:
            with open(path, "rb") as file:
                for member in _TarStream(file):
                    if member.regular:
                        yield member.name, member.size
        except (*_ARCHIVE_ERRORS, _OverLimitError):
            yield str(path), 0
    else:
        yield str(path), size
