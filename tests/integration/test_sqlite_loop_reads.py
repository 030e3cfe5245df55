"""Point reads of the SQLite index on the event loop (index/sqlite.py `LoopReads`): the
viewer paths' lookups skip the hop to a reader thread while they stay fast, and go back to
the threads after one that waited or when the database is busy."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from index_cases import Built, InstanceFactory
from pydicom.uid import generate_uid

from dicomweb_server.config import Settings
from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey
from dicomweb_server.index import sqlite as sqlite_index
from dicomweb_server.index.sqlite import LoopReads, SqliteInstanceIndex

SITE = "default"


class ThreadCalls:
    """Counts the calls the index hands to its reader threads."""

    def __init__(self, index: SqliteInstanceIndex) -> None:
        self.count = 0
        original = index._readers.run

        async def counted(fn: Callable[[], Any]) -> Any:
            self.count += 1
            return await original(fn)

        index._readers.run = counted  # type: ignore[method-assign]


async def stored(index: SqliteInstanceIndex, tmp_path: Path) -> Built:
    built = InstanceFactory(tmp_path / "instances").make(generate_uid(), generate_uid())
    await index.add_instance(SITE, built.record, built.blob_key, built.size, built.digest)
    return built


def key_of(built: Built) -> InstanceKey:
    r = built.record
    return InstanceKey(SITE, r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)


@pytest_asyncio.fixture
async def index(tmp_path: Path) -> AsyncIterator[SqliteInstanceIndex]:
    opened = await SqliteInstanceIndex.open(tmp_path / "index.sqlite", loop_read_max_seconds=1.0)
    yield opened
    await opened.close()


async def read_all(index: SqliteInstanceIndex, built: Built) -> list[Any]:
    key = key_of(built)
    r = built.record
    return [
        await index.get_instance(key),
        await index.get_metadata(key),
        await index.study_versions([SITE], r.study_instance_uid),
        await index.series_exists(SeriesKey(SITE, r.study_instance_uid, r.series_instance_uid)),
        await index.rejected_among(SITE, [r.sop_instance_uid, generate_uid()]),  # each STOW
        await index.sites_holding_study(r.study_instance_uid),  # the enterprise root
        await index.get_api_key("no-such-key"),  # an API key not in the cache
    ]


async def test_point_reads_run_on_the_loop_with_the_answers_of_the_threads(
    index: SqliteInstanceIndex, tmp_path: Path
) -> None:
    built = await stored(index, tmp_path)
    calls = ThreadCalls(index)
    on_loop = await read_all(index, built)
    assert calls.count == 0
    assert on_loop[0] is not None and on_loop[0].key == key_of(built)
    assert set(on_loop[2]) == {SITE} and on_loop[3] is True

    index.loop_reads.max_seconds = 0  # DICOMWEB_SQLITE_LOOP_READ_MAX_MS=0: always threads
    on_threads = await read_all(index, built)
    assert calls.count == 7
    assert on_threads == on_loop


async def test_a_missing_instance_is_none_on_the_loop(
    index: SqliteInstanceIndex, tmp_path: Path
) -> None:
    built = await stored(index, tmp_path)
    r = built.record
    calls = ThreadCalls(index)
    missing = InstanceKey(SITE, r.study_instance_uid, r.series_instance_uid, generate_uid())
    assert await index.get_instance(missing) is None
    assert await index.study_versions([SITE], generate_uid()) == {}
    assert calls.count == 0


async def test_a_read_that_waits_sends_point_reads_back_to_the_threads(
    index: SqliteInstanceIndex, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read that waits off the CPU (a slow disk, a network file system) past the bound
    holds the loop: point reads go back to the threads for a while, with one log line."""
    built = await stored(index, tmp_path)
    calls = ThreadCalls(index)
    index.loop_reads.max_seconds = 0.01

    def waiting(conn: sqlite3.Connection) -> Any:
        time.sleep(0.03)  # as a read from a slow disk would
        return conn.execute("SELECT count(*) FROM instances").fetchone()[0]

    with caplog.at_level(logging.INFO, logger="dicomweb_server.index.sqlite"):
        assert await index._point_read(waiting) == 1
    assert (calls.count, index.loop_reads.pauses) == (0, 1)  # it ran on the loop, and waited
    assert "reader threads for 60 s" in caplog.text
    assert await index.get_instance(key_of(built)) is not None
    assert (calls.count, index.loop_reads.pauses) == (1, 1)  # paused: on a thread


async def test_a_long_rejection_lookup_stays_on_a_thread(
    index: SqliteInstanceIndex, tmp_path: Path
) -> None:
    """One STOW batch's rejection check is a point read; a list long enough to be real CPU
    work for the loop goes to a thread."""
    built = await stored(index, tmp_path)
    calls = ThreadCalls(index)
    few = [built.record.sop_instance_uid, *(generate_uid() for _ in range(49))]
    assert await index.rejected_among(SITE, few) == {}
    assert calls.count == 0
    many = [*few, *(generate_uid() for _ in range(100))]
    assert await index.rejected_among(SITE, many) == {}
    assert calls.count == 1


def test_time_on_the_cpu_is_not_a_wait() -> None:
    """A read that computes (or a process descheduled by a busy machine, a thread waiting for
    the GIL, within the bound) is not waiting for the disk: only time off the CPU counts."""
    wall, cpu = [0.0], [0.0]
    reads = LoopReads(0.01, wall=lambda: wall[0], cpu=lambda: cpu[0])
    started = reads.start()
    wall[0] += 0.5
    cpu[0] += 0.495  # half a second of work, 5 ms off the CPU
    reads.finish(started)
    assert reads.allowed() and reads.pauses == 0
    started = reads.start()
    wall[0] += 0.02
    cpu[0] += 0.005  # 15 ms off the CPU: a slow disk
    reads.finish(started)
    assert not reads.allowed() and reads.pauses == 1


def test_the_pause_ends_after_its_time() -> None:
    now = [100.0]
    reads = LoopReads(0.01, pause_seconds=60, clock=lambda: now[0])
    assert reads.allowed()
    reads.record(0.004)  # the GIL changing hands
    assert reads.allowed() and reads.pauses == 0
    reads.record(0.012)
    assert not reads.allowed() and reads.pauses == 1
    now[0] += 59.9
    assert not reads.allowed()
    now[0] += 0.2
    assert reads.allowed()
    assert not LoopReads(0).allowed()  # 0: never on the loop


async def test_a_busy_database_sends_the_read_to_a_thread_without_holding_the_loop(
    index: SqliteInstanceIndex, tmp_path: Path
) -> None:
    """The loop's connection never waits for a lock: the read goes to a reader thread, which
    waits (busy_timeout) while the event loop goes on serving."""
    built = await stored(index, tmp_path)
    holder = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long STOW commit would hold it
    holder.execute("UPDATE studies SET version = version")
    calls = ThreadCalls(index)
    threads: list[str] = []

    def read(conn: sqlite3.Connection) -> Any:
        threads.append(threading.current_thread().name)
        conn.execute("BEGIN IMMEDIATE")  # needs the lock the holder has
        try:
            return conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        finally:
            conn.execute("ROLLBACK")

    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(ticking())
    asyncio.get_running_loop().call_later(0.3, holder.execute, "ROLLBACK")
    try:
        assert await index._point_read(read) == 1
    finally:
        ticker.cancel()
        holder.close()
    assert calls.count == 1
    assert threads[0] == threading.current_thread().name  # tried on the loop first
    assert threads[1].startswith("sqlite-reader")
    assert ticks >= 10  # the loop went on while the thread waited
    assert index.loop_reads.allowed()  # a busy database is not a slow read
    assert await index.get_instance(key_of(built)) is not None


async def test_an_error_on_the_loop_is_the_index_unavailable(
    index: SqliteInstanceIndex,
) -> None:
    def broken(conn: sqlite3.Connection) -> Any:
        return conn.execute("SELECT nothing FROM nowhere").fetchone()

    with pytest.raises(sqlite_index.IndexUnavailableError, match="index unavailable"):
        await index._point_read(broken)


async def test_the_setting_reaches_the_index(tmp_path: Path) -> None:
    from dicomweb_server.backends import open_index

    for value, expected in (("2", 0.002), ("0", 0.0)):
        settings = Settings(
            data_dir=tmp_path / value, database_url="", sqlite_loop_read_max_ms=float(value)
        )
        opened = await open_index(settings)
        try:
            assert isinstance(opened, SqliteInstanceIndex)
            assert opened.loop_reads.max_seconds == pytest.approx(expected)
        finally:
            await opened.close()
    assert Settings().sqlite_loop_read_max_ms == 25.0
