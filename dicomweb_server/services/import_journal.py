"""The import journal: what an earlier run of the same import finished, so a re-run skips it.

The journal tracks one unfinished run: it is deleted when a run completes, so running a
finished import again processes everything again (and reports identical duplicates). It is
one small SQLite file per set of arguments. An entry is (name, size, mtime): a file's path,
an archive member's `archive!member` with the archive's mtime, or a pulled study's URL. An
entry is written only once its outcome is final (indexed, or refused for what the bytes are),
so a run killed at any point resumes where its last commit left it; anything in flight then
is simply done again, which the store judges an identical duplicate.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ImportJournal", "JournalKey", "journal_path"]

JournalKey = tuple[str, int, int]  # name, size, mtime in nanoseconds

_COMMIT_EVERY = 500  # entries, or
_COMMIT_SECONDS = 1.0  # seconds, whichever comes first


def journal_path(folder: Path, *arguments: str) -> Path:
    """`folder/.import-journal-<hash>.sqlite`, the hash of the arguments that define a run."""
    digest = hashlib.sha256("\0".join(arguments).encode("utf-8", "surrogateescape"))
    return folder / f".import-journal-{digest.hexdigest()[:16]}.sqlite"


class ImportJournal:
    """Entries done by earlier runs (read once, at open) and this run's, committed in batches."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS done (name TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " mtime INTEGER NOT NULL, outcome TEXT NOT NULL)"
        )
        self._done = {
            _name_of(name): (size, mtime)
            for name, size, mtime in self._conn.execute("SELECT name, size, mtime FROM done")
        }
        self._pending: list[tuple[str, int, int, str]] = []
        self._last_commit = time.monotonic()

    def __len__(self) -> int:
        return len(self._done)

    def is_done(self, key: JournalKey) -> bool:
        """True when an earlier run finished this name with the same size and mtime."""
        name, size, mtime = key
        return self._done.get(name) == (size, mtime)

    def record(self, key: JournalKey, outcome: str) -> None:
        """Note a final outcome; it is committed with the next batch."""
        self._pending.append((*key, outcome))
        now = time.monotonic()
        if len(self._pending) >= _COMMIT_EVERY or now - self._last_commit >= _COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Write the pending entries in one transaction."""
        self._last_commit = time.monotonic()
        if not self._pending:
            return
        pending = [(_stored_name(name), *rest) for name, *rest in self._pending]
        self._pending = []
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR REPLACE INTO done (name, size, mtime, outcome) VALUES (?, ?, ?, ?)",
                pending,
            )

    def reset(self) -> None:
        """Forget every entry (a run asked to start over)."""
        self._pending = []
        self._done = {}
        self._conn.execute("DELETE FROM done")

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._conn.close()

    def discard(self) -> None:
        """Close and delete the journal: the run it tracked is complete."""
        self._pending = []
        self._conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __enter__(self) -> ImportJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _stored_name(name: str) -> bytes:
    """A name as the journal keeps it: the bytes it stands for. A path that is not UTF-8
    (a file named on another system) comes from the OS with surrogates, which SQLite's text
    cannot hold."""
    return name.encode("utf-8", "surrogateescape")


def _name_of(stored: bytes | str) -> str:
    return stored.decode("utf-8", "surrogateescape") if isinstance(stored, bytes) else stored
