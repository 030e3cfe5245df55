"""The embedded blob store: a folder on disk, written by temp file and atomic rename."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from dicomweb_server.errors import NotFoundError, StoreUnavailableError
from dicomweb_server.storage.base import DEFAULT_CHUNK_SIZE, BlobInfo

__all__ = ["FilesystemBlobStore"]

# Keys are built from validated UIDs and hex digests; anything else never touches the disk.
_WRITE_BATCH = 8 << 20  # bytes of a put gathered before a worker thread writes them
_MAX_IOV = 512  # buffers per writev call (Linux allows 1024)
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _write_all(fd: int, tmp: Path, buffers: list[bytes | memoryview]) -> int:
    """Append `buffers` to the temporary file (opened on the first call); returns its fd."""
    if fd < 0:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        while buffers:
            written = os.writev(fd, buffers[:_MAX_IOV])
            while buffers and written >= len(buffers[0]):
                written -= len(buffers[0])
                del buffers[0]
            if written:  # a short write stopped inside a buffer
                buffers[0] = memoryview(buffers[0])[written:]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _finish(fd: int, tmp: Path, buffers: list[bytes | memoryview], path: Path) -> None:
    """Write the last buffers, fsync, close and rename into place (making parent folders)."""
    fd = _write_all(fd, tmp, buffers)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except FileNotFoundError:  # the first object of its series: make the folders once
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)


_LIST_BATCH = 1000  # objects listed per worker-thread hop


def _take(found: Iterator[BlobInfo], count: int) -> list[BlobInfo]:
    return list(itertools.islice(found, count))


def _walk_folder(folder: Path, key_prefix: str, prefix: str) -> Iterator[BlobInfo]:
    """Objects in and under `folder` whose key starts with `prefix`, in key order: a folder's
    entries sort by their name with a `/` after folder names, which is the order of the keys."""
    try:
        with os.scandir(folder) as listing:
            entries = [
                (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name, entry)
                for entry in listing
            ]
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (yet), or deleted while we listed
    entries.sort(key=lambda pair: pair[0])
    for name, entry in entries:
        key = key_prefix + name
        if name.endswith("/"):
            if key == ".tmp/" or not (key.startswith(prefix) or prefix.startswith(key)):
                continue  # partial writes, or a folder the prefix excludes
            yield from _walk_folder(Path(entry.path), key, prefix)
            continue
        if not key.startswith(prefix) or not entry.is_file():
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue  # deleted while we listed
        yield BlobInfo(key, stat.st_size, stat.st_mtime)


class FilesystemBlobStore:
    """Objects as files under `root`; a put writes `<root>/.tmp/<uuid>` then renames."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._root_text = str(root)
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self._root / _check_key(key)

    async def put(self, key: str, chunks: AsyncIterator[bytes | memoryview]) -> int:
        """Write `<root>/.tmp/<uuid>`, fsync, then rename it into place.

        Chunks are gathered up to `_WRITE_BATCH` bytes and written by one vectored write in a
        worker thread, so a small object costs one thread hop (write, fsync, rename) and the
        event loop never waits on the disk.
        """
        path = self._path(key)
        tmp = self._tmp / uuid.uuid4().hex
        pending: list[bytes | memoryview] = []
        pending_bytes = 0
        size = 0
        fd = -1
        try:
            async for chunk in chunks:
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= _WRITE_BATCH:
                    fd = await asyncio.to_thread(_write_all, fd, tmp, pending)
                    size += pending_bytes
                    pending, pending_bytes = [], 0
            size += pending_bytes
            await asyncio.to_thread(_finish, fd, tmp, pending, path)
            fd = -1  # closed by _finish
        except OSError as exc:
            raise StoreUnavailableError(f"blob store write failed: {exc.strerror}") from exc
        finally:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
        return size

    async def iter_get(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: ASYNC230, SIM115 - closed below
        except FileNotFoundError as exc:
            raise NotFoundError(f"object {key} not found") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"blob store read failed: {exc.strerror}") from exc
        with handle:
            handle.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)

        def _read() -> bytes:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(length)

        try:
            data = await asyncio.to_thread(_read)
        except FileNotFoundError as exc:
            raise NotFoundError(f"object {key} not found") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"blob store read failed: {exc.strerror}") from exc
        if len(data) != length:
            raise NotFoundError(f"object {key} is shorter than the requested range")
        return data

    def local_path(self, key: str) -> str:
        """The object's file (LocalFiles): nothing is opened or checked here."""
        return os.path.join(self._root_text, _check_key(key))

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def iter_objects(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Every object under `prefix` in key order (as S3 lists), read a batch at a time: memory
        holds one folder's names and one batch, never the whole listing."""
        found = self._walk(prefix)
        while batch := await asyncio.to_thread(_take, found, _LIST_BATCH):
            for info in batch:
                yield info

    def _walk(self, prefix: str) -> Iterator[BlobInfo]:
        base = prefix.rpartition("/")[0]  # the deepest folder the prefix names whole
        folder = self._root / base if base else self._root
        yield from _walk_folder(folder, f"{base}/" if base else "", prefix)

    async def ping(self) -> None:
        """The folder is there and writable."""
        if not await asyncio.to_thread(os.access, self._tmp, os.W_OK | os.X_OK):
            raise StoreUnavailableError("blob store folder is missing or not writable")

    async def close(self) -> None:
        return None
