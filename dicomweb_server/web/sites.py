"""Mounting the DICOMweb route table at the root and at every site's root (issue 16).

`/dicomweb/...` is the enterprise root and `/dicomweb/sites/{site}/...` a site's root, both
serving the same route table (web/routes.py), so every resource, present and future, exists
under each. A site root first checks its site (a name breaking the pattern is a 400, an
unknown site a 404 naming it). Paths with a trailing slash are served as without it, never
redirected: a redirect would be built from the request's Host header.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.errors import DicomwebError
from dicomweb_server.web.capabilities import root_route
from dicomweb_server.web.dispatch import ShapeRouter
from dicomweb_server.web.errors import error_response

__all__ = ["SITES", "TrailingSlashMiddleware", "dicomweb_mounts"]

ROOT = "/dicomweb"
SITES = ROOT + "/sites/{site}"


class _SiteRoot:
    """The route table under one site's root, reached only for a site that exists."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            site = scope.get("path_params", {}).get("site", "")
            try:
                await scope["app"].state.dicomweb.sites.check_exists(site)
            except DicomwebError as exc:
                await error_response(exc.status, exc.reason)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def dicomweb_mounts(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The route table at every site's root, then at the enterprise root (both answer
    OPTIONS without their trailing slash, PS3.18 8.9)."""
    table = list(routes)
    site_root = root_route(SITES, table)
    shaped = ShapeRouter(table)  # one for both mounts: it keeps nothing between requests
    return [
        Route(SITES, _SiteRoot(site_root.app)),
        Mount(SITES, app=_SiteRoot(shaped)),
        root_route(ROOT, table),
        Mount(ROOT, app=shaped),
    ]


class TrailingSlashMiddleware:
    """`/dicomweb/studies/` is `/dicomweb/studies`: served, not redirected to a URL built from
    the request's Host header (which a client may set to anything)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(ROOT + "/") and path.endswith("/"):
                # In place, as the router updates it: the access log and the request metrics
                # outside read the route the router records in this same scope.
                scope["path"] = path.rstrip("/")
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    scope["raw_path"] = raw.rstrip(b"/")
        await self.app(scope, receive, send)
