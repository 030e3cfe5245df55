"""Worker processes opening one fresh SQLite index at once (`serve --workers N` on a new data
folder): the migrations run under a lock, so exactly one process applies them."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import sqlite3
import time
from pathlib import Path

import dicomweb_server
from dicomweb_server.index.sqlite import SqliteInstanceIndex

_LATEST = max(
    int(p.name[:3])
    for p in (Path(dicomweb_server.__file__).parent / "index/migrations/sqlite").glob("*.sql")
)


def _open(path: str) -> None:
    async def run() -> None:
        index = await SqliteInstanceIndex.open(Path(path))
        await index.close()

    asyncio.run(run())


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_a_process_waits_for_the_migration_lock(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    context = multiprocessing.get_context("spawn")
    with open(tmp_path / "index.sqlite.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker is migrating
        process = context.Process(target=_open, args=(str(path),))
        process.start()
        time.sleep(3)
        assert process.is_alive()
        assert not path.exists() or _user_version(path) == 0
    process.join(60)
    assert process.exitcode == 0
    assert _user_version(path) == _LATEST


def test_processes_opening_a_new_index_together_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_open, args=(str(path),)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    assert _user_version(path) == _LATEST
