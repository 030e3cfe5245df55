"""The change feed: `GET /changefeed` and `GET /changefeed/latest`, as Microsoft's DICOM
service defines them (entries of Sequence, StudyInstanceUid, SeriesInstanceUid,
SopInstanceUid, Action, Timestamp, State, Metadata), plus `Site`.

Under a site root the feed shows that site; at the enterprise root, every site (the caller
may read). Without `startTime`/`endTime`, `offset` is a Sequence: the entries after it
(version 1 semantics; a consumer keeps the last Sequence it processed and never misses an
entry, as sequences are handed out in commit order). With either, `offset` counts the
entries of that time window to skip (version 2).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.domain.events import parse_time
from dicomweb_server.domain.grants import EVERY_GRANT, Role
from dicomweb_server.errors import BadRequestError
from dicomweb_server.services import access
from dicomweb_server.services.events import feed_sites
from dicomweb_server.web.audit import note_change_feed
from dicomweb_server.web.auth import principal_of
from dicomweb_server.web.negotiation import accept_json
from dicomweb_server.web.params import site_of
from dicomweb_server.web.state import AppState

__all__ = ["read_change_feed", "read_latest_change_feed"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 200
_PARAMETERS = ("offset", "limit", "starttime", "endtime", "includemetadata")
_MAX_OFFSET = 2**63 - 1


def _parameters(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query parameters by lowercase name (ASP.NET binds them case-insensitively); unknown
    ones are ignored, a repeated one is a 400."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        key = name.lower()
        if key not in allowed:
            continue
        if key in found:
            raise BadRequestError(f"query parameter {name} is given more than once")
        found[key] = value
    return found


def _integer(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadRequestError(f"{name} must be an integer from {low} to {high}, got {text[:20]!r}")
    return int(text)


def _boolean(text: str | None) -> bool:
    if text is None:
        return True  # Microsoft's default
    value = text.lower()
    if value not in ("true", "false"):
        raise BadRequestError(f"includemetadata must be true or false, got {text[:20]!r}")
    return value == "true"


async def _sites(request: Request) -> frozenset[str] | None:
    """What this request's feed shows: its site root's site, or at the enterprise root every
    site the caller may read (None: every site, for a caller who may read them all)."""
    site = site_of(request)
    if site is not None:  # web/auth.py authorized the site root
        return feed_sites(site, None)
    principal = principal_of(request)
    if principal.grants == EVERY_GRANT:
        return None
    state: AppState = request.app.state.dicomweb
    readable = access.readable_sites(principal, sorted(await state.sites.names()))
    if not readable:
        access.check(principal, state.settings.default_site, Role.READ)  # names the grant
    return feed_sites(None, set(readable))


async def read_change_feed(request: Request) -> Response:
    """GET /changefeed?startTime=&endTime=&offset=&limit=&includemetadata="""
    state: AppState = request.app.state.dicomweb
    accept_json(request.headers.get("accept"))
    given = _parameters(request, _PARAMETERS)
    offset = _integer(given.get("offset", "0"), "offset", 0, _MAX_OFFSET)
    limit = _integer(given.get("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT)
    start = None if "starttime" not in given else parse_time(given["starttime"], "startTime")
    end = None if "endtime" not in given else parse_time(given["endtime"], "endTime")
    if start is not None and end is not None and end <= start:
        raise BadRequestError("endTime must be after startTime")
    windowed = start is not None or end is not None
    body = await state.changefeed.read(
        await _sites(request),
        limit=limit,
        after=0 if windowed else offset,
        skip=offset if windowed else 0,
        start=start,
        end=end,
        metadata=_boolean(given.get("includemetadata")),
    )
    note_change_feed(request, body, latest=False)  # patient data leaves: audited
    return Response(body, media_type="application/json")


async def read_latest_change_feed(request: Request) -> Response:
    """GET /changefeed/latest?includemetadata=: the latest entry; 204 while the feed is empty."""
    state: AppState = request.app.state.dicomweb
    accept_json(request.headers.get("accept"))
    given = _parameters(request, ("includemetadata",))
    body = await state.changefeed.latest(
        await _sites(request), metadata=_boolean(given.get("includemetadata"))
    )
    note_change_feed(request, body, latest=True)
    if body is None:
        return Response(status_code=204)
    return Response(body, media_type="application/json")
