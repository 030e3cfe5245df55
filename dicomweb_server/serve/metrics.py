"""Metrics of a multi-worker server: one directory per run where every worker writes its values.

prometheus-client's multi-process mode is chosen when a process first imports it, from
PROMETHEUS_MULTIPROC_DIR. `serve` sets it before its workers start (they are spawned, so they
import afresh), to a new temporary directory per run unless the environment already names one
(which is then kept, as given). When a worker exits its live gauges' files are removed
(`mark_process_dead`), so the connection gauges count live workers only; its counters and
histograms stay, so the server's totals never go backwards when a worker is replaced.

A run removes its directory when it stops. One that was killed cannot, so each run holds a
lock on an `.owner` file in its directory for as long as it lives, and a starting server
removes the directories whose lock nobody holds any more: their server is gone. A lock (not a
process id) is right even across containers that share the temporary folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import multiprocess

__all__ = ["ENV", "multiprocess_metrics", "worker_exited"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "dicomweb-metrics-"
_OWNER = ".owner"  # locked by the run that owns the directory; not a *.db file prometheus reads

log = logging.getLogger("dicomweb_server.serve")


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[str | None]:
    """The metrics directory for this run (None: one process, its own registry suffices)."""
    given = os.environ.get(ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    if workers == 1:
        yield None
        return
    _remove_abandoned(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=_PREFIX)
    owner = _own(Path(path))
    os.environ[ENV] = path
    try:
        yield path
    finally:
        del os.environ[ENV]
        shutil.rmtree(path, ignore_errors=True)
        os.close(owner)


def _own(folder: Path) -> int:
    """Lock the folder's owner file for this run's lifetime; returns the descriptor to keep.

    The file is locked under another name, then renamed into place, so nobody can find an
    `.owner` that is not locked yet."""
    staging = folder / f"{_OWNER}.{os.getpid()}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(staging, folder / _OWNER)
    return fd


def _remove_abandoned(temp: Path) -> None:
    """Remove the metrics folders of runs that were killed: their owner file is not locked.
    Folders without one (made by older versions, or being made right now) are left alone."""
    for folder in temp.glob(_PREFIX + "*"):
        try:
            fd = os.open(folder / _OWNER, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its server is running
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the metrics folder of a server that was killed: %s", folder)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


def worker_exited(pid: int) -> None:
    """Forget a stopped worker's live gauges (its counters and histograms are kept)."""
    path = os.environ.get(ENV)
    if path:
        try:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.warning("could not remove worker %d's metrics files: %s", pid, exc)
