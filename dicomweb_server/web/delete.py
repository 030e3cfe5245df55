"""DELETE of studies, series and instances, and the IOCM reject resource (issue 18).

`DELETE /studies/{study}[/series/{series}[/instances/{instance}]]` hides the named data at
once (204; 404 when unknown; 409 naming a legal hold or the site's minimum retention) and
`POST .../reject/{CodeValue}^{CodingSchemeDesignator}` does the same as an IOCM rejection,
answering as dcm4chee-arc does (200 with `{"count": N}`), which is what the OHIF Viewer's
`supportsReject` calls. Both need the `delete` grant. At a site's root they concern that
site; at the enterprise root, the copy the root would serve among the sites the caller may
delete from (services/sites.py). Nothing is named by a pattern or a query: a body, a query
string, a malformed UID or a UID of another level is a 400.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.domain.grants import Role
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.domain.lifecycle import DeleteTarget
from dicomweb_server.domain.rejection import parse_rejection_code
from dicomweb_server.errors import BadRequestError, NotFoundError, PreconditionFailedError
from dicomweb_server.services import access
from dicomweb_server.web.auth import principal_of
from dicomweb_server.web.params import site_of
from dicomweb_server.web.state import AppState

__all__ = [
    "delete_instance",
    "delete_series",
    "delete_study",
    "reject_instance",
    "reject_series",
    "reject_study",
]

_LEVELS = (
    ("study", "StudyInstanceUID"),
    ("series", "SeriesInstanceUID"),
    ("instance", "SOPInstanceUID"),
)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.dicomweb
    return state


def _who(request: Request) -> str:
    principal = principal_of(request)
    return principal.display_name or principal.subject


async def _refuse_body_and_query(request: Request) -> None:
    """A delete names its target in the path only: no query string, no body."""
    if request.url.query:
        raise BadRequestError(
            f"{request.method} takes no query parameters: name one study, series or instance"
            " in the path"
        )
    length = request.headers.get("content-length", "0").strip()
    if length != "0" and length != "":
        raise BadRequestError(f"{request.method} here takes no request body")
    if "transfer-encoding" in request.headers:
        async for chunk in request.stream():
            if chunk:
                raise BadRequestError(f"{request.method} here takes no request body")


def _check_if_match(request: Request) -> None:
    """If-Match (RFC 9110 13.1.1): these resources have no strong entity tag, so a list of
    tags never matches (412, nothing changed); `*` asks that the target exist."""
    condition = request.headers.get("if-match")
    if condition is not None and condition.strip() != "*":
        raise PreconditionFailedError(
            "If-Match names an entity tag, and this resource has no strong one: nothing was"
            " changed (If-Match: * asks only that it exist)"
        )


async def _target(request: Request, depth: int) -> DeleteTarget:
    """The study, series or instance in the path, at the site the request concerns."""
    await _refuse_body_and_query(request)
    _check_if_match(request)
    uids = [validate_uid(request.path_params[name], what) for name, what in _LEVELS[:depth]]
    site = site_of(request)
    if site is None:  # the enterprise root: the copy it would serve, among deletable sites
        principal = principal_of(request)
        site = await _state(request).sites.site_for_study(
            uids[0], lambda name: principal.allows(name, Role.DELETE)
        )
        request.state.audit_site = site  # web/audit.py: the record names the copy changed
        access.check(principal, site, Role.DELETE)
    # web/audit.py: the patient of what is deleted, read while its rows still exist
    request.state.audit_patients = await _state(request).audit.patients_of(site, uids[:1])
    return DeleteTarget(
        site,
        uids[0],
        uids[1] if depth > 1 else None,
        (uids[2],) if depth > 2 else None,
    )


async def _explain_not_found(request: Request, target: DeleteTarget, exc: NotFoundError) -> None:
    """A UID of another level (a series UID where a study UID belongs) is a 400, not a 404;
    with If-Match: * (the target must exist, RFC 9110 13.1.1) a missing one is a 412."""
    if request.headers.get("if-match") is not None:
        raise PreconditionFailedError(f"If-Match: * and {exc.reason}") from exc
    uids = [target.study_instance_uid, target.series_instance_uid]
    uids.append(target.sop_instance_uids[0] if target.sop_instance_uids else None)
    for (level, what), uid in zip(_LEVELS, uids, strict=True):
        if uid is None:
            continue
        found = await _state(request).delete.uid_level(target.site, uid)
        if found is not None and found != level:
            raise BadRequestError(
                f"{what} {uid} is the UID of {'an' if found == 'instance' else 'a'}"
                f" {found}, not of a {level}"
            ) from exc
    raise exc


async def _delete(request: Request, depth: int) -> Response:
    target = await _target(request, depth)
    try:
        await _state(request).delete.delete(target, who=_who(request))
    except NotFoundError as exc:
        await _explain_not_found(request, target, exc)
    return Response(status_code=204)


async def _reject(request: Request, depth: int) -> Response:
    code = parse_rejection_code(request.path_params["code"])
    target = await _target(request, depth)
    try:
        count = await _state(request).delete.reject(target, code, who=_who(request))
    except NotFoundError as exc:
        await _explain_not_found(request, target, exc)
        raise
    return Response(f'{{"count":{count}}}', media_type="application/json")


async def delete_study(request: Request) -> Response:
    """DELETE /studies/{study}: every instance of the study."""
    return await _delete(request, 1)


async def delete_series(request: Request) -> Response:
    """DELETE /studies/{study}/series/{series}: every instance of the series."""
    return await _delete(request, 2)


async def delete_instance(request: Request) -> Response:
    """DELETE /studies/{study}/series/{series}/instances/{instance}."""
    return await _delete(request, 3)


async def reject_study(request: Request) -> Response:
    """POST /studies/{study}/reject/{code}: IOCM rejection of a study (dcm4chee-arc)."""
    return await _reject(request, 1)


async def reject_series(request: Request) -> Response:
    """POST /studies/{study}/series/{series}/reject/{code}: what OHIF's reject calls."""
    return await _reject(request, 2)


async def reject_instance(request: Request) -> Response:
    """POST /studies/{study}/series/{series}/instances/{instance}/reject/{code}."""
    return await _reject(request, 3)
