"""Operations endpoints at the server root, outside /dicomweb: liveness, readiness, metrics.

They never need credentials (probes and scrapers have none), so they live in this one module
for access control to exempt: `OPS_ROUTES` and `OPS_PATHS`.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb_server import telemetry
from dicomweb_server.web.state import AppState

__all__ = ["OPS_PATHS", "OPS_ROUTES", "healthz", "metrics", "readyz"]

_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}


async def healthz(request: Request) -> Response:
    """Liveness: the process answers. Never the backends: an outage must not restart servers."""
    return Response(b'{"status":"ok"}', media_type=_JSON, headers=_NO_STORE)


async def readyz(request: Request) -> Response:
    """Readiness: 200 when the index and the object store both answer within
    DICOMWEB_READY_TIMEOUT, else 503 naming the one (or both) that did not."""
    state: AppState = request.app.state.dicomweb
    found = await state.status.readiness()
    body = {
        "status": "ready" if found.ready else "unavailable",
        "index": found.index,
        "object_store": found.object_store,
    }
    return Response(
        orjson.dumps(body),
        status_code=200 if found.ready else 503,
        media_type=_JSON,
        headers=_NO_STORE,
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format (or OpenMetrics when asked for), for every worker together."""
    body, media_type = await asyncio.to_thread(telemetry.exposition, request.headers.get("accept"))
    return Response(body, media_type=media_type, headers=_NO_STORE)


OPS_ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
OPS_PATHS = frozenset(route.path for route in OPS_ROUTES)
