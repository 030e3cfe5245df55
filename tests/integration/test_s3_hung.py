"""A hung object store (SeaweedFS frozen with SIGSTOP): every S3 call fails within the
backend timeout, and a read that stalls mid-body is cut, while slow but steady transfers
are not.

A frozen process still has its sockets: the kernel accepts connections and buffers bytes,
and nothing ever answers. That is unlike a store that is down (connection refused, at
once) and is what a wedged gateway or a partitioned network looks like. The tests freeze a
SeaweedFS of their own, so the session's store is never touched.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import services
from dicomfiles import ct_dataset, multipart_body, to_part10
from pydicom import Dataset

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.errors import BackendUnavailableError
from dicomweb_server.storage.s3 import MIN_PART_SIZE, S3BlobStore

TIMEOUT = 2.0  # the stores' backend timeout in these tests
BOUND = TIMEOUT + 1.5  # a hung call must fail within this many seconds
MIB = 1 << 20
KEY = "1.2.840.10008.1/1.2.3/1.2.3.4"
BASE = "http://testserver/dicomweb"


@pytest.fixture(scope="module")
def hung_s3() -> Iterator[tuple[services.S3Endpoint, int]]:
    """A private SeaweedFS and the id of its process (one `weed server` runs it all)."""
    with services.seaweedfs_s3() as endpoint:
        yield endpoint, _listening_process(endpoint)


def _listening_process(endpoint: services.S3Endpoint) -> int:
    """The `weed` process started for `endpoint` (its S3 port is on its command line)."""
    port = endpoint.endpoint_url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"-s3.port={port}".encode() in argv and b"server" in argv:
            return int(entry.name)
    raise AssertionError(f"no weed process serving S3 on port {port}")


def _stopped(pid: int) -> bool:
    """Every thread of the process is stopped (a signal stops them one by one)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        if stat[stat.rindex(")") + 2] not in "Tt":
            return False
    return True


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while not _stopped(pid):
            assert time.monotonic() < deadline, "SeaweedFS did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def bucket(
    hung_s3: tuple[services.S3Endpoint, int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    endpoint, _ = hung_s3
    for name, value in services.aws_environment(endpoint).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    name = services.create_bucket(endpoint)
    # SeaweedFS makes a bucket's volumes on its first write, which can take longer than the
    # short timeout here.
    services._s3_client(endpoint).put_object(Bucket=name, Key="warm-up", Body=b"")
    yield name
    services.delete_bucket(endpoint, name)


@pytest_asyncio.fixture
async def store(
    hung_s3: tuple[services.S3Endpoint, int], bucket: str
) -> AsyncIterator[S3BlobStore]:
    endpoint, _ = hung_s3
    blob_store = await S3BlobStore.create(
        bucket,
        prefix="blobs/",
        endpoint_url=endpoint.endpoint_url,
        region=endpoint.region,
        multipart_threshold=MIN_PART_SIZE,
        part_size=MIN_PART_SIZE,
        backend_timeout=TIMEOUT,
    )
    yield blob_store
    await blob_store.close()


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def _chunks(data: bytes, size: int = 256 * 1024, pause: float = 0) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        if pause:
            await asyncio.sleep(pause)
        yield data[offset : offset + size]


async def _read(store: S3BlobStore, key: str, start: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.iter_get(key, start, length)])


async def _listing(store: S3BlobStore) -> list[str]:
    return [info.key async for info in store.iter_objects()]


async def _fails_in_time(what: str, call: Callable[[], Awaitable[Any]]) -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        # The outer bound only keeps a regression from hanging the suite.
        await asyncio.wait_for(call(), BOUND * 4)
        pytest.fail(f"{what} succeeded against a frozen store")
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"{what} took {elapsed:.1f}s against a timeout of {TIMEOUT}s"


async def test_every_call_to_a_frozen_store_fails_within_the_timeout(
    store: S3BlobStore, hung_s3: tuple[services.S3Endpoint, int]
) -> None:
    _, pid = hung_s3
    small, large = _data(100_000), _data(2 * MIN_PART_SIZE + 123)
    await store.put(KEY, _chunks(small))
    await store.put(f"{KEY}.large", _chunks(large))
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "put": lambda: store.put(f"{KEY}.new", _chunks(small)),
        "multipart put": lambda: store.put(f"{KEY}.new-large", _chunks(large)),
        "get": lambda: _read(store, KEY),
        "ranged get": lambda: _read(store, f"{KEY}.large", MIN_PART_SIZE, 1000),
        "read_range": lambda: store.read_range(KEY, 10, 100),
        "head": lambda: store.read_range(KEY, 10, 0),
        "delete": lambda: store.delete(KEY),
        "listing": lambda: _listing(store),
        "ping": store.ping,
    }
    with frozen(pid):
        for what, call in calls.items():
            await _fails_in_time(what, call)
    # Thawed: the same store serves again. (What the frozen store had received by then, a
    # put or a delete, may still take effect, as after any timeout: a STOW's unindexed
    # objects are the orphan sweep's.)
    await store.put(f"{KEY}.after", _chunks(small))
    assert await _read(store, f"{KEY}.after") == small
    assert await store.read_range(f"{KEY}.large", 5, 10) == large[5:15]


async def test_a_read_stalling_mid_body_is_cut_after_the_timeout(
    store: S3BlobStore, hung_s3: tuple[services.S3Endpoint, int]
) -> None:
    """Frozen after the first bytes: the rest (more than socket buffers hold) never comes."""
    _, pid = hung_s3
    data = _data(64 * MIB)
    await store.put(KEY, _chunks(data, MIB))
    for read in (
        lambda: store.iter_get(KEY, chunk_size=64 * 1024),
        lambda: store.iter_get(KEY, 1, chunk_size=64 * 1024),  # ranged: another path
    ):
        chunks = read()
        await anext(chunks)
        with frozen(pid):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError):
                async with asyncio.timeout(BOUND * 4):
                    async for _ in chunks:
                        pass
            elapsed = time.monotonic() - started
        assert elapsed < BOUND + 1, f"a stalled read was cut after {elapsed:.1f}s"


async def test_slow_callers_are_not_cut(store: S3BlobStore) -> None:
    """The deadline is about a store that stops answering, not about transfers that take
    long: a producer or a consumer that pauses longer than the timeout is never cut."""
    data = _data(3 * MIN_PART_SIZE + 5)
    pause = TIMEOUT * 1.5

    async def slow_producer() -> AsyncIterator[bytes]:
        for number, offset in enumerate(range(0, len(data), MIB)):
            if number in (2, 7):  # inside the first part, then with a multipart upload open
                await asyncio.sleep(pause)
            yield data[offset : offset + MIB]

    assert await store.put(KEY, slow_producer()) == len(data)
    received = bytearray()
    async for chunk in store.iter_get(KEY, chunk_size=MIB):
        if not received or len(received) > MIN_PART_SIZE > len(received) - len(chunk):
            await asyncio.sleep(pause)
        received += chunk
    assert received == data


async def test_stow_and_wado_against_a_frozen_store_answer_503_in_time(
    tmp_path: Path,
    hung_s3: tuple[services.S3Endpoint, int],
    bucket: str,
    pg_database_url: str,
) -> None:
    """The server over PostgreSQL and the frozen store: STOW and WADO answer 503 within the
    backend timeout, instead of holding the request (and a store slot) until S3 thaws."""
    endpoint, pid = hung_s3
    settings = Settings(
        data_dir=tmp_path / "data",
        base_url=BASE,
        database_url=pg_database_url,
        storage_url=f"s3://{bucket}/objects",
        s3_endpoint_url=endpoint.endpoint_url,
        backend_timeout=TIMEOUT,
    )
    stored, extra = ct_dataset(), ct_dataset()
    path = (
        f"/studies/{stored.StudyInstanceUID}/series/{stored.SeriesInstanceUID}"
        f"/instances/{stored.SOPInstanceUID}"
    )
    application = create_app(settings)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=BASE) as http,
    ):

        async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            # The outer bound only keeps a regression from hanging the suite.
            response = await asyncio.wait_for(request, BOUND * 4)
            return response, time.monotonic() - started

        def stow(instance: Dataset) -> Awaitable[httpx.Response]:
            body, content_type = multipart_body([to_part10(instance)])
            return http.post("/studies", content=body, headers={"Content-Type": content_type})

        response = await stow(stored)
        assert response.status_code == 200, response.text
        with frozen(pid):
            response, elapsed = await timed(stow(extra))
            assert response.status_code == 503, response.text
            assert "the object store" in response.json()["reason"]
            assert elapsed < BOUND, f"STOW took {elapsed:.1f}s"

            accept = {"Accept": 'multipart/related; type="application/dicom"'}
            response, elapsed = await timed(http.get(path, headers=accept))
            assert response.status_code == 503, response.text
            assert elapsed < BOUND, f"WADO took {elapsed:.1f}s"
