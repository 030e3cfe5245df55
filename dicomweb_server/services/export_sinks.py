"""Where an export writes: a folder, or one streamed .zip with the same layout.

Both take generated relative names only (`DICOM/P0000001/...`, `DICOMDIR`, `MANIFEST.csv`);
nothing read from data ever becomes part of a path. Nor does anything already in the folder:
each file is created new (O_EXCL) and no name is followed through a symbolic link
(O_NOFOLLOW, folder by folder from the root), so an export never writes over a file, inside
the folder or, through a link, outside it. Files are streamed and hashed as they
are written, chunk by chunk in a worker thread, so memory stays flat whatever their size.
Zip entries are STORED: DICOM pixel data is either compressed already or noise-like, and
deflating it would cost a CPU core for a few percent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

__all__ = ["ExportSink", "FolderSink", "SinkWriteError", "ZipSink"]

_WRITE_BATCH = 4 << 20  # bytes gathered before a worker thread writes them
_ZIP64_ABOVE = 1 << 30  # entries that may grow past this are written with zip64 sizes
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SinkWriteError(Exception):
    """The destination refused a write (a full disk, a permission); the export stops."""

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")
        self.reason = str(self)


class ExportSink(Protocol):
    """A destination for generated names."""

    async def write_file(
        self, name: str, chunks: AsyncIterator[bytes | memoryview], size_hint: int
    ) -> tuple[int, str]:
        """Write a file from a stream; return its size and SHA-256 (hex)."""
        ...

    async def write_with(self, name: str, writer: Callable[[BinaryIO], object]) -> None:
        """Write a file by handing `writer` a binary stream (in a worker thread)."""
        ...

    async def discard(self, name: str) -> None:
        """Remove `name`, the file written last: its bytes turned out not to be the stored
        ones, and no file is left in DEST that its DICOMDIR and MANIFEST.csv do not list."""
        ...

    async def close(self, *, complete: bool) -> None:
        """Finish (complete) or abandon the export."""
        ...


def _write(file: IO[bytes], digest: Any, pending: list[bytes | memoryview]) -> None:
    for chunk in pending:
        digest.update(chunk)
        file.write(chunk)


async def _stream(file: IO[bytes], chunks: AsyncIterator[bytes | memoryview]) -> tuple[int, str]:
    digest = hashlib.sha256()
    pending: list[bytes | memoryview] = []
    pending_bytes = 0
    size = 0
    async for chunk in chunks:
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= _WRITE_BATCH:
            await asyncio.to_thread(_write, file, digest, pending)
            size += pending_bytes
            pending, pending_bytes = [], 0
    if pending:
        await asyncio.to_thread(_write, file, digest, pending)
        size += pending_bytes
    return size, digest.hexdigest()


class FolderSink:
    """Files under `root` (created with the first file)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, folders: list[str], *, make: bool) -> int:
        """A descriptor of the folder `root/folders...` (made as needed with `make`), opened
        part by part; an OSError (ELOOP, ENOTDIR) when a part is a symbolic link."""
        at = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for folder in folders:
                if make:
                    with contextlib.suppress(FileExistsError):  # made for an earlier file
                        os.mkdir(folder, dir_fd=at)
                inner = os.open(folder, _FOLDER, dir_fd=at)
                os.close(at)
                at = inner
        except BaseException:
            os.close(at)
            raise
        return at

    def _open(self, name: str) -> IO[bytes]:
        """A new file at `name`, its folders made as needed; FileExistsError when the name is
        taken, an OSError (ELOOP, ENOTDIR) when a part of it is a symbolic link."""
        self.root.mkdir(parents=True, exist_ok=True)
        *folders, leaf = name.split("/")
        at = self._folder(folders, make=True)
        try:
            return os.fdopen(os.open(leaf, _NEW_FILE, 0o666, dir_fd=at), "wb")
        finally:
            os.close(at)

    def _remove(self, name: str) -> None:
        *folders, leaf = name.split("/")
        at = self._folder(folders, make=False)
        try:
            os.unlink(leaf, dir_fd=at)
        finally:
            os.close(at)

    async def write_file(
        self, name: str, chunks: AsyncIterator[bytes | memoryview], size_hint: int
    ) -> tuple[int, str]:
        try:
            file = await asyncio.to_thread(self._open, name)
            try:
                return await _stream(file, chunks)
            finally:
                await asyncio.to_thread(file.close)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def write_with(self, name: str, writer: Callable[[BinaryIO], object]) -> None:
        def run() -> None:
            with self._open(name) as file:
                writer(cast(BinaryIO, file))

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def discard(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._remove, name)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def close(self, *, complete: bool) -> None:
        return None


class ZipSink:
    """One .zip at `path`, written as `path.partial` and renamed once complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._partial.unlink(missing_ok=True)  # an interrupted export's (a link: itself)
            self._file = os.fdopen(os.open(self._partial, _NEW_FILE, 0o666), "w+b")
            self._zip = zipfile.ZipFile(
                self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True
            )
        except OSError as exc:
            raise SinkWriteError(str(path), exc) from exc

    def _entry(self, name: str, size_hint: int) -> IO[bytes]:
        info = zipfile.ZipInfo(name, time.localtime()[:6])
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        return self._zip.open(info, "w", force_zip64=size_hint > _ZIP64_ABOVE)

    async def write_file(
        self, name: str, chunks: AsyncIterator[bytes | memoryview], size_hint: int
    ) -> tuple[int, str]:
        try:
            entry = await asyncio.to_thread(self._entry, name, size_hint)
            try:
                return await _stream(entry, chunks)
            finally:
                await asyncio.to_thread(entry.close)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def write_with(self, name: str, writer: Callable[[BinaryIO], object]) -> None:
        def run() -> None:
            with self._entry(name, 0) as entry:
                writer(cast(BinaryIO, entry))

        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def discard(self, name: str) -> None:
        """Cut the last entry off the end of the file. The writer appends each entry where
        the central directory will start (`start_dir`), and writes that directory from its
        list of entries at close: both go back to before the entry."""
        archive = self._zip

        def cut() -> None:
            entry = archive.filelist[-1]
            if entry.filename != name:
                raise OSError(f"{name} is not the last entry written")
            archive.filelist.pop()
            del archive.NameToInfo[name]
            self._file.seek(entry.header_offset)
            self._file.truncate()
            archive.start_dir = entry.header_offset

        try:
            await asyncio.to_thread(cut)
        except OSError as exc:
            raise SinkWriteError(name, exc) from exc

    async def close(self, *, complete: bool) -> None:
        def finish() -> None:
            try:
                try:
                    self._zip.close()
                finally:
                    self._file.close()  # handed to ZipFile open: it leaves it open
            except OSError:
                if complete:
                    raise
            if complete:
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(finish)
        except OSError as exc:
            await asyncio.to_thread(self._partial.unlink, missing_ok=True)
            raise SinkWriteError(str(self.path), exc) from exc
