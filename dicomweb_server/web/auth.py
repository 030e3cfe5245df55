"""Authentication at the HTTP edge (issue 17): a request's Authorization header → a Principal.

Every request under the DICOMweb root is authenticated before it is routed (the principal
goes in the request's state); an OPTIONS request never is: capabilities stay readable without
credentials and CORS preflights are never blocked. A request at a site's root is authorized
here for that site (services/access.py decides); at the enterprise root the handlers decide,
because only they know which sites a search or a retrieve concerns. No token or key is ever
logged.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server import telemetry
from dicomweb_server.errors import DicomwebError, ForbiddenError, UnauthorizedError
from dicomweb_server.services import access
from dicomweb_server.services.principal import ANONYMOUS, Principal
from dicomweb_server.web.errors import error_response

__all__ = ["AuthMiddleware", "principal_of"]

_ROOT = "/dicomweb"
_SITES = "/dicomweb/sites/"


def principal_of(request: Request) -> Principal:
    """The caller (ANONYMOUS with every grant when access control is off)."""
    principal: Principal = request.scope.get("state", {}).get("principal", ANONYMOUS)
    return principal


class AuthMiddleware:
    """Authenticates DICOMweb requests and authorizes those at a site's root."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or not (path == _ROOT or path.startswith(_ROOT + "/"))
        ):
            await self.app(scope, receive, send)
            return
        authenticator = scope["app"].state.dicomweb.authenticator
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        try:
            principal = await authenticator.authenticate(
                None if raw is None else raw.decode("latin-1")
            )
            scope.setdefault("state", {})["principal"] = principal
            if principal is not ANONYMOUS:
                telemetry.set_request_user(principal.subject)  # in this request's log lines
            if path.startswith(_SITES):
                site = path[len(_SITES) :].split("/", 1)[0]
                role = access.role_for_method(scope.get("method", "GET"), path)
                access.check(principal, site, role)
        except (UnauthorizedError, ForbiddenError) as exc:
            response = error_response(exc.status, exc.reason, {"WWW-Authenticate": exc.challenge})
            await response(scope, receive, send)
            return
        except DicomwebError as exc:
            await error_response(exc.status, exc.public_reason)(scope, receive, send)
            return
        await self.app(scope, receive, send)
