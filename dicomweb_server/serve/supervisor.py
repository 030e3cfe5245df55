"""uvicorn's worker supervisor with what a graceful stop and multi-process metrics need.

On SIGTERM (or SIGINT) uvicorn's `Multiprocess` sends SIGTERM to every worker and waits for
them; each worker stops accepting, lets its requests in flight finish within
DICOMWEB_SHUTDOWN_GRACE_SECONDS, runs the lifespan shutdown and exits 0. Two additions:

- The parent's own copy of the listening socket is closed first. The workers close theirs as
  they stop; with the parent's open too, the kernel would keep queueing new connections that
  no one accepts until the parent exits. Now they are refused, and a load balancer retries.
- A worker that exits (stopped, crashed and replaced, or retired by SIGTTOU/SIGHUP) has its live
  metrics files removed (serve/metrics.py).

Only public methods are overridden, each calling uvicorn's own: a uvicorn that renamed one
runs its own behaviour, which is correct, only less tidy.
"""

from __future__ import annotations

from uvicorn.supervisors import Multiprocess

from dicomweb_server.serve.metrics import worker_exited

__all__ = ["Supervisor"]


class Supervisor(Multiprocess):
    """`Multiprocess` that closes the listening socket on exit and reaps workers' metrics."""

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _reaped(self, before: set[int]) -> None:
        for pid in before - self._pids():
            worker_exited(pid)

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        super().join_all()
        for pid in self._pids():
            worker_exited(pid)

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        super().keep_subprocess_alive()
        self._reaped(before)

    def handle_signals(self) -> None:
        before = self._pids()
        super().handle_signals()
        self._reaped(before)
