"""Metrics of a multi-worker server: one directory per run where every worker writes its values.

prometheus-client's multi-process mode is chosen when a process first imports it, from
PROMETHEUS_MULTIPROC_DIR. `serve` sets it before its workers start (they are spawned, so they
import afresh), to a new temporary directory per run unless the environment already names one
(which is then kept, as given). When a worker exits its live gauges' files are removed
(`mark_process_dead`), so the connection gauges count live workers only; its counters and
histograms stay, so the server's totals never go backwards when a worker is replaced.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import multiprocess

__all__ = ["ENV", "multiprocess_metrics", "worker_exited"]

ENV = "PROMETHEUS_MULTIPROC_DIR"

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
    path = tempfile.mkdtemp(prefix="dicomweb-metrics-")
    os.environ[ENV] = path
    try:
        yield path
    finally:
        del os.environ[ENV]
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Forget a stopped worker's live gauges (its counters and histograms are kept)."""
    path = os.environ.get(ENV)
    if path:
        try:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.warning("could not remove worker %d's metrics files: %s", pid, exc)
