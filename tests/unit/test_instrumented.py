"""services/instrumented.py (issue 21): the proxies time and count, and hide no capability."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from dicomweb_server.errors import BackendUnavailableError, NotFoundError
from dicomweb_server.index.base import ConnectionPool, IndexCounts
from dicomweb_server.index.batch import BatchInstanceIndex
from dicomweb_server.index.sqlite import SqliteInstanceIndex
from dicomweb_server.services.instrumented import instrumented_blobs, instrumented_index
from dicomweb_server.storage.base import LocalFiles, local_region
from dicomweb_server.storage.filesystem import FilesystemBlobStore


def _count(operation: str) -> float:
    name = "dicomweb_object_store_duration_seconds_count"
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


def _errors(operation: str) -> float:
    name = "dicomweb_object_store_errors_total"
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


class _Remote:
    """A store without local files, whose reads fail like a backend that is down."""

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        raise BackendUnavailableError("blob store unavailable")

    async def delete(self, key: str) -> None:
        raise NotFoundError("gone")


def test_issue21_proxies_keep_the_capabilities_isinstance_finds(tmp_path: Path) -> None:
    blobs = instrumented_blobs(FilesystemBlobStore(tmp_path / "objects"))
    assert isinstance(blobs, LocalFiles)
    # Python 3.12 checks protocol members statically: they must be on the proxy's class.
    assert inspect.getattr_static(blobs, "local_path")
    assert local_region(blobs, "a/b", 0, 1) is not None  # zero-copy still sees files
    remote = instrumented_blobs(_Remote())
    assert not isinstance(remote, LocalFiles)
    with pytest.raises(AttributeError):
        inspect.getattr_static(remote, "local_path")

    index = instrumented_index(SqliteInstanceIndex(tmp_path / "index.sqlite"))
    for capability in (BatchInstanceIndex, IndexCounts, ConnectionPool):
        assert isinstance(index, capability)
    for name in ("add_instances", "counts", "connections"):
        assert inspect.getattr_static(index, name)


async def test_issue21_object_store_requests_are_timed_and_failures_counted(
    tmp_path: Path,
) -> None:
    blobs = instrumented_blobs(FilesystemBlobStore(tmp_path / "objects"))
    puts, gets, ranges = _count("put"), _count("get"), _count("read_range")
    assert await blobs.put("1/2/3", _chunks(b"abc", b"def")) == 6
    assert b"".join([chunk async for chunk in blobs.iter_get("1/2/3")]) == b"abcdef"
    assert await blobs.read_range("1/2/3", 1, 2) == b"bc"
    assert (_count("put"), _count("get"), _count("read_range")) == (puts + 1, gets + 1, ranges + 1)

    remote = instrumented_blobs(_Remote())
    failed, deletes = _errors("read_range"), _errors("delete")
    with pytest.raises(BackendUnavailableError):
        await remote.read_range("k", 0, 1)
    with pytest.raises(NotFoundError):
        await remote.delete("k")
    assert _errors("read_range") == failed + 1
    assert _errors("delete") == deletes  # a missing object is an answer, not a failure
