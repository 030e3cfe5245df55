"""The only package that knows the HTTP server: uvicorn workers, patches, TLS, start-up checks.

`run(settings)` checks the settings and reaches the backends once in this process, so a bad
start exits non-zero with one readable line before any worker is forked; then it serves
with one worker per core (or `workers`), each configured like this process (logging
included), and returns the exit status: non-zero when a worker could not start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn

from dicomweb_server.backends import open_backends
from dicomweb_server.config import Settings
from dicomweb_server.errors import DicomwebError
from dicomweb_server.serve import limits
from dicomweb_server.serve.logs import log_config
from dicomweb_server.serve.metrics import multiprocess_metrics
from dicomweb_server.serve.tracing import tracing_problem

__all__ = ["StartupError", "check_backends", "run", "uvicorn_config", "worker_count"]

log = logging.getLogger("dicomweb_server.serve")

_WORKER_FACTORY = "dicomweb_server.serve.worker:create_worker_app"
_STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that failed before serving
_WORKER_HEALTHCHECK = 30  # seconds
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(Exception):
    """The server cannot start; the message is one line saying why."""


async def _reach_backends(settings: Settings) -> None:
    backends = await open_backends(settings)  # opening the index applies its migrations
    try:
        await backends.index.ping()
        await backends.blobs.ping()
    finally:
        await backends.close()


def check_backends(settings: Settings) -> None:
    """Open the index and the blob store once and ping both; StartupError if they fail."""
    try:
        asyncio.run(_reach_backends(settings))
    except DicomwebError as exc:
        raise StartupError(exc.reason) from None
    except (OSError, ValueError) as exc:
        raise StartupError(str(exc) or type(exc).__name__) from None


def worker_count(settings: Settings) -> int:
    """Worker processes to start: the setting, or one per core."""
    return settings.worker_count()


def uvicorn_config(
    settings: Settings, app: Any = _WORKER_FACTORY, **options: Any
) -> uvicorn.Config:
    """uvicorn's configuration for these settings: listening, TLS, logging and the limits on
    connections and request headers (serve/limits.py; uvicorn's h11 protocol with its own
    header limit where the httptools one cannot be bounded)."""
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,  # ours logs paths without query strings (no PHI)
        "log_config": log_config(settings.log_level, settings.log_format),
        "log_level": settings.log_level,
        "ssl_certfile": settings.ssl_certfile or None,
        "ssl_keyfile": settings.ssl_keyfile or None,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections or None,
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        # The supervisor kills a worker that does not answer its ping within this: a worker
        # starting on a loaded machine (imports before it can answer) took more than
        # uvicorn's 5 s and was killed over and over.
        "timeout_worker_healthcheck": _WORKER_HEALTHCHECK,
    }
    problem = limits.protocol_problem()
    if problem is None:
        header_limits = limits.HeaderLimits(
            settings.max_request_header_bytes,
            settings.max_request_headers,
            settings.header_timeout,
        )
        values["http"] = limits.limit_headers(header_limits)
    else:
        log.warning("request headers bounded by uvicorn's h11 protocol: %s", problem)
        values["http"] = "h11"
        values["h11_max_incomplete_event_size"] = settings.max_request_header_bytes
    values.update(options)
    return uvicorn.Config(app, **values)


def run(settings: Settings) -> int:
    """Serve until stopped; the exit status (StartupError before anything is served).

    Worker processes read their settings from DICOMWEB_* variables, as the CLI sets them.
    SIGTERM or SIGINT stop it gracefully: no new connections, requests in flight finish within
    DICOMWEB_SHUTDOWN_GRACE_SECONDS, then 0 (serve/supervisor.py with several workers).
    """
    settings.check()
    problem = tracing_problem(settings)
    if problem is not None:
        raise StartupError(problem)
    check_backends(settings)
    workers = worker_count(settings)
    with multiprocess_metrics(workers):
        return _serve(settings, workers)


def _serve(settings: Settings, workers: int) -> int:
    config = uvicorn_config(settings, factory=True, workers=workers)
    if workers == 1:
        return _serve_in_this_process(config)
    from dicomweb_server.serve.supervisor import Supervisor

    sock = config.bind_socket()
    supervisor = Supervisor(config, sockets=[sock])
    supervisor.run()
    failed = [p for p in supervisor.processes if getattr(p, "exitcode", None) == _STARTUP_FAILURE]
    if failed:
        log.error("%d worker(s) failed to start; see the lines above", len(failed))
        return 1
    return 0


def _serve_in_this_process(config: uvicorn.Config) -> int:
    """One server in this process; 0 once stopped by SIGTERM or SIGINT after serving.

    uvicorn stops gracefully on those signals and then raises the signal again under the
    handler it found, which by default kills the process (143 for SIGTERM, not 0). Ours,
    installed first, finds it instead and only asks the server to stop (again, harmlessly):
    a signal arriving before uvicorn installs its own is not lost either.
    """
    server = uvicorn.Server(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1
