"""Path parameters → validated keys; the only place URL text becomes a UID."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from dicomweb_server.domain.grants import Role
from dicomweb_server.domain.identifiers import (
    InstanceKey,
    SeriesKey,
    StudyKey,
    validate_uid,
)
from dicomweb_server.errors import BadRequestError
from dicomweb_server.services import access
from dicomweb_server.web.auth import principal_of

__all__ = [
    "accept_of",
    "frame_numbers",
    "instance_key",
    "query_value",
    "root_url_of",
    "search_sites",
    "series_key",
    "site_of",
    "site_root_url",
    "store_site",
    "study_key",
]

_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() takes "²" and "٣"


def site_of(request: Request) -> str | None:
    """The site whose root the request came in at; None at the enterprise root."""
    site: str | None = request.path_params.get("site")
    return site


def store_site(request: Request) -> str:
    """The site a STOW stores into: the request's site (authorized by web/auth.py), else the
    default site, which the caller must be allowed to write."""
    site = site_of(request)
    if site is None:
        site = _state(request).settings.default_site
        access.check(principal_of(request), site, Role.WRITE)
    return site


async def search_sites(request: Request) -> tuple[str, ...]:
    """The sites a search covers: its site root's (authorized by web/auth.py), or at the
    enterprise root every site the caller may read (the default site first), never a 403
    for the others; a 403 only for a caller who may read no site at all."""
    site = site_of(request)
    if site is not None:
        return (site,)
    state = _state(request)
    principal = principal_of(request)
    default = state.settings.default_site
    names = sorted(await state.sites.names(), key=lambda name: (name != default, name))
    readable = tuple(access.readable_sites(principal, names))
    if not readable:
        access.check(principal, default, Role.READ)  # names the missing grant
    return readable


def root_url_of(request: Request) -> str:
    """The absolute DICOMweb root the request came in at (a site's root, or the enterprise
    root), for RetrieveURLs, BulkDataURIs and Content-Locations."""
    return site_root_url(_state(request).settings.root_url, site_of(request))


def site_root_url(root_url: str, site: str | None) -> str:
    """A site's DICOMweb root under the enterprise root (the root itself for None)."""
    return root_url if site is None else f"{root_url}/sites/{site}"


async def study_key(request: Request) -> StudyKey:
    """The study in the path, at the request's site (at the enterprise root: the site whose
    copy the root serves, services/sites.py)."""
    uid = validate_uid(request.path_params["study"], "StudyInstanceUID")
    site = site_of(request)
    if site is None:  # the enterprise root: a copy the caller may read (web/auth.py at a site)
        principal = principal_of(request)
        site = await _state(request).sites.site_for_study(
            uid, lambda name: principal.allows(name, Role.READ)
        )
        request.state.audit_site = site  # web/audit.py: the record names the copy served
        access.check(principal, site, Role.READ)
    return StudyKey(site, uid)


async def series_key(request: Request) -> SeriesKey:
    study = await study_key(request)
    return SeriesKey(
        study.site,
        study.study_instance_uid,
        validate_uid(request.path_params["series"], "SeriesInstanceUID"),
    )


async def instance_key(request: Request) -> InstanceKey:
    series = await series_key(request)
    return InstanceKey(
        series.site,
        series.study_instance_uid,
        series.series_instance_uid,
        validate_uid(request.path_params["instance"], "SOPInstanceUID"),
    )


def query_value(request: Request, name: str) -> str | None:
    """A query parameter given at most once (a 400 when repeated), or None."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequestError(f"query parameter {name!r} is given more than once")
    return values[0] if values else None


def accept_of(request: Request) -> str | None:
    """What the client accepts: the `accept` query parameter, which replaces the Accept header
    when present (PS3.18 8.3.3.1: a link in a browser cannot set headers), else the header.

    The response now depends on Accept: web/browser.py labels it `Vary: Accept`."""
    request.state.vary_accept = True
    parameter = query_value(request, "accept")
    return parameter if parameter is not None else request.headers.get("accept")


def _state(request: Request) -> Any:
    return request.app.state.dicomweb


def frame_numbers(text: str, max_count: int = 10_000) -> list[int]:
    """`1,3,5` → [1, 3, 5] (PS3.18 10.4.1.1.4), each frame once in the order first asked for:
    a repeated number is answered once (a 20 KB URL of one frame repeated must not become
    gigabytes). Anything but ASCII digits, an empty item or too many frames is a 400."""
    items = text.split(",")
    numbers: dict[int, None] = {}
    for item in items:
        item = item.strip()
        if not _DIGITS.fullmatch(item):
            raise BadRequestError(
                f"frame list {text[:64]!r} must be positive integers joined by ','"
                + (" (an item is empty)" if not item else "")
            )
        numbers[int(item)] = None
        if len(numbers) > max_count:
            raise BadRequestError(f"at most {max_count} different frames may be asked for at once")
    return list(numbers)
