"""The BlobStore contract, run against every implementation: filesystem and S3 (SeaweedFS)."""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from services import S3Endpoint, aws_environment, pending_uploads
from yarl import URL

from dicomweb_server.errors import BackendUnavailableError, NotFoundError
from dicomweb_server.storage.base import (
    BlobStore,
    FileRegion,
    LocalFiles,
    local_region,
    read_if_cached,
    read_sendable,
    read_view,
)
from dicomweb_server.storage.filesystem import FilesystemBlobStore
from dicomweb_server.storage.s3 import MIN_PART_SIZE, S3BlobStore
from dicomweb_server.storage.s3_presign import Credentials

MIB = 1 << 20
PART_SIZE = MIN_PART_SIZE  # the smallest S3 allows, so multipart tests stay small
LARGE = 2 * PART_SIZE + 12_345  # three parts, the last one short
KEY = "1.2.840.10008.1/1.2.3/1.2.3.4"


class UpstreamError(Exception):
    """Raised by a test's input stream, standing in for a client that hangs up."""


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def _chunks(data: bytes, size: int = 64 * 1024 + 7) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def _failing(data: bytes, fail_after: int) -> AsyncIterator[bytes]:
    """Yield `data` in chunks, then raise once `fail_after` bytes have been sent."""
    sent = 0
    async for chunk in _chunks(data, MIB):
        yield chunk
        sent += len(chunk)
        if sent >= fail_after:
            raise UpstreamError("client went away")


async def _read(store: BlobStore, key: str, start: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.iter_get(key, start, length)])


async def _keys(store: BlobStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.iter_objects(prefix)]


def _use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: S3Endpoint) -> None:
    for name, value in aws_environment(endpoint).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


async def _s3_store(endpoint: S3Endpoint, bucket: str, prefix: str = "blobs/") -> S3BlobStore:
    return await S3BlobStore.create(
        bucket,
        prefix=prefix,
        endpoint_url=endpoint.endpoint_url,
        region=endpoint.region,
        multipart_threshold=PART_SIZE,
        part_size=PART_SIZE,
    )


@pytest_asyncio.fixture(params=["filesystem", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    """Each implementation in turn; S3 gets a fresh bucket and a key prefix."""
    blob_store: BlobStore
    if request.param == "filesystem":
        blob_store = FilesystemBlobStore(tmp_path / "blobs")
    else:
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        _use_endpoint(request.getfixturevalue("monkeypatch"), endpoint)
        blob_store = await _s3_store(endpoint, request.getfixturevalue("s3_bucket"))
    yield blob_store
    await blob_store.close()


async def test_put_then_get_returns_identical_bytes(store: BlobStore) -> None:
    # Empty, tiny, a few chunks, exactly one part (the multipart threshold), several parts.
    for size in [0, 1, 100_000, PART_SIZE, LARGE]:
        key = f"{KEY}.{size}"
        data = _data(size)
        assert await store.put(key, _chunks(data)) == size
        chunks = [chunk async for chunk in store.iter_get(key, chunk_size=100_000)]
        assert b"".join(chunks) == data, f"{size} bytes"
        assert all(0 < len(chunk) <= 100_000 for chunk in chunks), f"{size} bytes"


async def test_iter_get_range(store: BlobStore) -> None:
    data = _data(LARGE)
    await store.put(KEY, _chunks(data))
    ranges: list[tuple[int, int | None]] = [
        (0, 10),
        (5, None),
        (PART_SIZE - 10, 20),  # across a part boundary
        (LARGE - 1, None),
        (LARGE - 10, 100),  # runs past the end: what is there
        (LARGE, None),  # at the end: nothing
        (LARGE + 100, 5),  # past the end: nothing
        (123, 0),
    ]
    for start, length in ranges:
        end = None if length is None else start + length
        got = await _read(store, KEY, start, length)
        assert got == data[start:end], f"start={start} length={length}"


async def test_read_range_returns_exact_bytes(store: BlobStore) -> None:
    data = _data(LARGE)
    await store.put(KEY, _chunks(data))
    assert await store.read_range(KEY, 0, 1) == data[:1]
    assert await store.read_range(KEY, PART_SIZE - 3, 7) == data[PART_SIZE - 3 : PART_SIZE + 4]
    assert await store.read_range(KEY, LARGE - 50, 50) == data[-50:]
    assert await store.read_range(KEY, 17, 0) == b""


async def test_read_range_past_the_end_is_not_found(store: BlobStore) -> None:
    await store.put(KEY, _chunks(_data(100)))
    for start, length in [(90, 11), (100, 1), (5_000, 10)]:
        with pytest.raises(NotFoundError):
            await store.read_range(KEY, start, length)


async def test_missing_key_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        await _read(store, KEY)
    with pytest.raises(NotFoundError):
        await _read(store, KEY, start=10, length=10)
    with pytest.raises(NotFoundError):
        await _read(store, KEY, start=0, length=0)
    with pytest.raises(NotFoundError):
        await store.read_range(KEY, 0, 10)
    with pytest.raises(NotFoundError):
        await store.read_range(KEY, 0, 0)


async def test_delete_is_idempotent(store: BlobStore) -> None:
    await store.delete(KEY)  # never existed
    await store.put(KEY, _chunks(b"x" * 10))
    await store.delete(KEY)
    await store.delete(KEY)
    with pytest.raises(NotFoundError):
        await store.read_range(KEY, 0, 1)
    assert await _keys(store) == []


async def test_iter_objects_filters_by_prefix(store: BlobStore) -> None:
    keys = ["1.2.3/1.2.4/a", "1.2.3/1.2.5/b", "1.2.30/x", "9/y.json"]
    started = time.time()
    for key in reversed(keys):
        await store.put(key, _chunks(key.encode()))
    assert sorted(await _keys(store)) == keys
    infos = [info async for info in store.iter_objects()]
    assert {info.key: info.size for info in infos} == {key: len(key) for key in keys}
    assert all(started - 5 <= info.modified <= time.time() + 5 for info in infos)
    assert sorted(await _keys(store, "1.2.3/")) == keys[:2]
    assert sorted(await _keys(store, "1.2.3")) == keys[:3]  # a string prefix, not a folder
    assert await _keys(store, "8") == []


@pytest.mark.parametrize("fail_after", [MIB, LARGE], ids=["single-put", "multipart"])
async def test_failed_put_leaves_nothing(store: BlobStore, fail_after: int) -> None:
    with pytest.raises(UpstreamError):
        await store.put(KEY, _failing(_data(LARGE + MIB), fail_after))
    with pytest.raises(NotFoundError):
        await _read(store, KEY)
    assert await _keys(store) == []


@pytest.mark.parametrize("fail_after", [MIB, LARGE], ids=["single-put", "multipart"])
async def test_failed_overwrite_keeps_the_old_object(store: BlobStore, fail_after: int) -> None:
    old = _data(1000, seed=1)
    await store.put(KEY, _chunks(old))
    with pytest.raises(UpstreamError):
        await store.put(KEY, _failing(_data(LARGE + MIB, seed=2), fail_after))
    assert await _read(store, KEY) == old


async def test_overwrite_replaces_the_object(store: BlobStore) -> None:
    for first, second in [(LARGE, 1000), (1000, LARGE), (10, 20)]:
        key = f"{KEY}.{first}.{second}"
        await store.put(key, _chunks(_data(first, seed=1)))
        replacement = _data(second, seed=2)
        assert await store.put(key, _chunks(replacement)) == second
        assert await _read(store, key) == replacement, f"{first} then {second} bytes"
    assert len(await _keys(store)) == 3


async def test_local_region_names_the_span_of_a_local_file_or_nothing(store: BlobStore) -> None:
    data = _data(100_000)
    await store.put(KEY, _chunks(data))
    region = local_region(store, KEY, 10, 500)
    if isinstance(store, S3BlobStore):
        assert region is None  # S3 objects are not local files
        assert not isinstance(store, LocalFiles)
        return
    assert region is not None
    assert (region.offset, region.count) == (10, 500)
    assert bytes(region.view()) == data[10:510]


async def test_views_and_sendable_reads_hold_the_span(store: BlobStore) -> None:
    data = _data(LARGE)
    await store.put(KEY, _chunks(data))
    for start, length in [(0, 10), (5, 200_000), (LARGE - 1, 1)]:
        assert bytes(await read_view(store, KEY, start, length)) == data[start : start + length]
        sendable = await read_sendable(store, KEY, start, length)
        got = sendable.view() if isinstance(sendable, FileRegion) else sendable
        assert bytes(got) == data[start : start + length]
    with pytest.raises(NotFoundError):
        await read_sendable(store, KEY, LARGE - 1, 2)
    with pytest.raises(NotFoundError):
        await read_view(store, "missing/key", 0, 200_000)


def _filesystem_of(path: str) -> str:
    """The type of the filesystem holding `path` (Linux /proc/self/mounts)."""
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point, fs_type = line.split()[1:3]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best
            ):
                best, kind = point, fs_type
    return kind


async def test_issue22_spans_in_memory_are_read_without_waiting_for_the_disk(
    store: BlobStore,
) -> None:
    """`read_if_cached`: a span of a local file whose pages are all in memory is read at once;
    anything it cannot serve that way (pages on disk only, a short or missing file, S3, a span
    over the bound) is None, for the usual read."""
    data = _data(LARGE)
    await store.put(KEY, _chunks(data))
    region = local_region(store, KEY, 0, LARGE)
    if region is None:
        assert read_if_cached(store, KEY, 0, 100) is None  # S3: never
        return
    with open(region.path, "rb") as file:  # written through the page cache: in memory now
        assert file.read() == data
        for start, length in [(0, 10), (5, 200_000), (LARGE - 1, 1)]:
            got = read_if_cached(store, KEY, start, length)
            assert got is not None and bytes(got) == data[start : start + length]
        assert read_if_cached(store, KEY, LARGE - 1, 2) is None  # past the end
        assert read_if_cached(store, KEY, 0, 0) is None
        assert read_if_cached(store, "missing/key", 0, 10) is None
        assert read_if_cached(store, KEY, 0, (4 << 20) + 1) is None  # over the bound
        os.fsync(file.fileno())  # clean pages can be dropped
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if _filesystem_of(region.path) != "tmpfs":  # where memory is the disk, nothing is dropped
        assert read_if_cached(store, KEY, 5, 200_000) is None  # on disk only: never waited for
    assert await store.read_range(KEY, 5, 200_000) == data[5:200_005]


async def test_ping_answers_while_the_store_is_up(store: BlobStore) -> None:
    await store.ping()


async def test_invalid_keys_are_refused(store: BlobStore) -> None:
    for key in ["", "/abs", "a//b", "../x", "a/./b", "a b", "a/", "é"]:
        if isinstance(store, LocalFiles):
            with pytest.raises(ValueError):
                local_region(store, key, 0, 1)
        with pytest.raises(ValueError):
            await store.put(key, _chunks(b"x"))
        with pytest.raises(ValueError):
            await store.read_range(key, 0, 1)
        with pytest.raises(ValueError):
            await _read(store, key)


# --- S3 only -----------------------------------------------------------------------------------


async def test_s3_failed_multipart_put_is_aborted(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_endpoint(monkeypatch, s3_endpoint)
    store = await _s3_store(s3_endpoint, s3_bucket)
    try:
        with pytest.raises(UpstreamError):
            await store.put(KEY, _failing(_data(LARGE + MIB), LARGE))
    finally:
        await store.close()
    assert pending_uploads(s3_endpoint, s3_bucket) == []


async def test_s3_prefixes_keep_stores_apart(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_endpoint(monkeypatch, s3_endpoint)
    first = await _s3_store(s3_endpoint, s3_bucket, prefix="one")
    second = await _s3_store(s3_endpoint, s3_bucket, prefix="one-two/")
    try:
        await first.put(KEY, _chunks(b"first"))
        await second.put(KEY, _chunks(b"second"))
        assert await _keys(first) == [KEY]
        assert await _keys(second) == [KEY]
        assert await first.read_range(KEY, 0, 5) == b"first"
        await first.delete(KEY)
        assert await second.read_range(KEY, 0, 6) == b"second"
    finally:
        await first.close()
        await second.close()


async def test_s3_missing_bucket_is_backend_unavailable(
    s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_endpoint(monkeypatch, s3_endpoint)
    store = await _s3_store(s3_endpoint, "no-such-bucket-for-dicomweb-tests")
    try:
        with pytest.raises(BackendUnavailableError, match="NoSuchBucket"):
            await store.put(KEY, _chunks(b"x"))
    finally:
        await store.close()


async def test_s3_wrong_credentials_are_backend_unavailable(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_endpoint(monkeypatch, s3_endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = await _s3_store(s3_endpoint, s3_bucket)
    try:
        with pytest.raises(BackendUnavailableError):
            await store.put(KEY, _chunks(b"x"))
        with pytest.raises(BackendUnavailableError):
            await store.read_range(KEY, 0, 1)
        with pytest.raises(BackendUnavailableError):
            await _keys(store)
    finally:
        await store.close()


async def test_s3_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 on loopback: nothing listens, so every connection is refused at once.
    endpoint = S3Endpoint("http://127.0.0.1:1", "key", "secret", "us-east-1")
    _use_endpoint(monkeypatch, endpoint)
    defaults = await S3BlobStore.create("bucket", endpoint_url=endpoint.endpoint_url)
    single_try = await S3BlobStore.create(
        "bucket", endpoint_url=endpoint.endpoint_url, max_attempts=1
    )
    try:
        async with asyncio.timeout(60):
            # Default settings: three attempts with standard-mode backoff, well under 10 s.
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="cannot connect"):
                await defaults.put(KEY, _chunks(b"x"))
            assert time.monotonic() - started < 10
            with pytest.raises(BackendUnavailableError):
                await _read(single_try, KEY)
            with pytest.raises(BackendUnavailableError):
                await single_try.read_range(KEY, 0, 1)
            with pytest.raises(BackendUnavailableError):
                await single_try.delete(KEY)
            with pytest.raises(BackendUnavailableError):
                await _keys(single_try)
    finally:
        await defaults.close()
        await single_try.close()


async def test_put_of_many_views_keeps_their_order(store: BlobStore) -> None:
    # STOW hands over the received chunks, often views of them; more than one writev takes.
    data = _data(2_000_000, seed=3)

    async def views() -> AsyncIterator[bytes | memoryview]:
        view = memoryview(data)
        for offset in range(0, len(data), 997):
            yield view[offset : offset + 997]

    assert await store.put(KEY, views()) == len(data)
    assert await _read(store, KEY) == data


async def test_iter_objects_lists_in_key_order_across_folders(store: BlobStore) -> None:
    """The folder store lists in byte order of the keys, as S3 does: `a-b/x` < `a.b` < `a/b` <
    `a0`, whatever the folders (SeaweedFS lists folder by folder: only the set is checked
    there), and a prefix may end inside a folder's name."""
    keys = ["s/a/b", "s/a-b/x", "s/a.b", "s/a0", "s/a/a/z", "s/ab/c", "t/a"]
    for key in keys:
        await store.put(key, _chunks(b"x"))
    in_order = isinstance(store, FilesystemBlobStore)
    for prefix in ("s/", "s/a", "s/a/", "s/a/a/z", "u/"):
        listed = await _keys(store, prefix)
        expected = sorted(k for k in keys if k.startswith(prefix))
        assert (listed if in_order else sorted(listed)) == expected, prefix


async def test_s3_reads_are_signed_here_once_botocore_agrees(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read URL is botocore's; it shows the layout, and once our signature of it is
    botocore's the store signs later read URLs itself (storage/s3_presign.py), which the
    gateway accepts: whole objects, ranges, a missing key is still NotFoundError."""
    _use_endpoint(monkeypatch, s3_endpoint)
    store = await _s3_store(s3_endpoint, s3_bucket)
    try:
        data = _data(300_000, seed=7)
        await store.put(KEY + ".first", _chunks(data))  # botocore's PUT URL
        assert store._presigners["PUT"] is not None
        await store.put(KEY, _chunks(data))  # ours
        assert "GET" not in store._presigners  # nothing read yet
        assert await _read(store, KEY) == data  # botocore's URL
        assert store._presigners["GET"] is not None
        assert await _read(store, KEY) == data  # ours
        # The gateway checks signatures: a URL signed with another secret is refused.
        get_presigner = store._presigners["GET"]
        assert get_presigner is not None
        forged = get_presigner.url(
            "blobs/" + KEY,
            Credentials(s3_endpoint.access_key, "not-the-secret", None),
            datetime.datetime.now(datetime.UTC),
            60,
        )
        assert store._http is not None
        async with store._http.get(URL(forged, encoded=True)) as refused:
            assert refused.status == 403
        put_presigner = store._presigners["PUT"]
        assert put_presigner is not None
        forged_put = put_presigner.url(
            "blobs/" + KEY + ".forged",
            Credentials(s3_endpoint.access_key, "not-the-secret", None),
            datetime.datetime.now(datetime.UTC),
            60,
        )
        async with store._http.put(URL(forged_put, encoded=True), data=b"x") as refused:
            assert refused.status == 403
        with pytest.raises(NotFoundError):
            await store.read_range(KEY + ".forged", 0, 1)
        assert await _read(store, KEY + ".first") == data
        assert await store.read_range(KEY, 1000, 5000) == data[1000:6000]
        assert await _read(store, KEY, 299_990) == data[299_990:]
        with pytest.raises(NotFoundError):
            await store.read_range(KEY + ".missing", 0, 10)
    finally:
        await store.close()
