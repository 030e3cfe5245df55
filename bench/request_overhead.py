"""What the request middleware costs per request (issue 21): `python -m bench.request_overhead`.

Drives a trivial ASGI app (a route answering 200 with 2 bytes, as Starlette would) through
three wrappers, in-process and without a server or a socket, so only the middleware's own
work is measured:

- `bare`: the app alone;
- `before`: the middleware as it was before issue 21 (a request id and the access line);
- `after`: web/observe.py's middleware (request id, access line, request context, the request
  histogram and byte counters by transaction), in the metrics mode given.

It runs itself twice, with in-process metrics (one worker) and with prometheus-client's
multi-process files (PROMETHEUS_MULTIPROC_DIR, what `serve` uses with several workers), and
prints the cost per request of each: the fastest of several interleaved rounds. The access
line goes to a handler that discards it, the same for `before` and `after`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

_REQUESTS = 5_000
_ROUNDS = 25


def _before_middleware(app: Any) -> Any:
    """The RequestContextMiddleware of app.py before issue 21."""
    log = logging.getLogger("dicomweb_server.access")

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "").encode("unicode_escape").decode("ascii")
            log.info(
                "%s %s %s %d %.1fms",
                request_id,
                scope.get("method", "-"),
                path,
                status,
                (time.perf_counter() - started) * 1000,
            )

    return middleware


def _endpoint() -> None:
    """Stands for a routed handler (its name makes the transaction `search`)."""


_endpoint.__name__ = "search_for_studies"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["endpoint"] = _endpoint  # what Starlette's router leaves in the scope
    scope["path_params"] = {}
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"[]", "more_body": False})


async def _round(app: Any) -> float:
    scope_template = {
        "type": "http",
        "method": "GET",
        "path": "/dicomweb/studies",
        "headers": [(b"host", b"x")],
        "query_string": b"PatientID=X",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    started = time.perf_counter()
    for _ in range(_REQUESTS):
        await app(dict(scope_template), receive, send)
    return (time.perf_counter() - started) / _REQUESTS


def _measure() -> dict[str, float]:
    from dicomweb_server.web.observe import RequestContextMiddleware

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - for the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    access = logging.getLogger("dicomweb_server.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    apps = {
        "bare": _app,
        "before": _before_middleware(_app),
        "after": RequestContextMiddleware(_app),
    }
    # Interleaved rounds, the fastest of each kept: on a shared machine the other load only
    # ever adds time, so the minimum is the closest to the middleware's own cost.
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(_ROUNDS):
        for name, app in apps.items():
            times[name].append(asyncio.run(_round(app)))
    return {name: min(found) for name, found in times.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        for name, seconds in _measure().items():
            print(f"{name} {seconds * 1e6:.2f}")
        return
    print(f"µs per request, fastest of {_ROUNDS} interleaved rounds of {_REQUESTS} requests")
    for mode in ("in-process metrics", "multi-process metrics"):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory() as folder:
            if mode.startswith("multi"):
                env["PROMETHEUS_MULTIPROC_DIR"] = folder
            output = subprocess.run(
                [sys.executable, "-m", "bench.request_overhead", "--child"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        costs = dict(line.split() for line in output.splitlines())
        bare, before, after = (float(costs[k]) for k in ("bare", "before", "after"))
        print(
            f"{mode}: bare {bare:.2f}, before {before:.2f} (+{before - bare:.2f}),"
            f" after {after:.2f} (+{after - bare:.2f}); issue 21 adds {after - before:.2f} µs"
        )


if __name__ == "__main__":
    main()
