"""Audit (issue 17): the middleware that records each request touching patient data, and the
`GET /audit` resource answering a FHIR R4 Bundle of AuditEvent resources.

The middleware sits just inside the request-id middleware, outside everything else (auth
included), so it sees every answer, refusals too. It classifies the path itself (a few string
comparisons: no route matching, no I/O) and, after the response, hands one `AuditEvent` to the
audit service's in-memory queue. OPTIONS (the capabilities document), paths outside the
DICOMweb root (/healthz, /metrics) and routes that touch no patient data are not recorded.

The caller is `scope["state"]["principal"]`, put there by the auth middleware (absent when
access control is off: ANONYMOUS). At the enterprise root, a WADO read or a delete leaves the
site whose copy it served or changed in `scope["state"]["audit_site"]` (web/params.py,
web/delete.py), so the record names that site and its patient, never a guess made when the
record is written. The STOW handler leaves the stored studies in
`scope["state"]["audit_studies"]`, the QIDO handler the number of results in
`scope["state"]["audit_results"]`; the change feed handlers leave what their answer showed
(`note_change_feed`). A handler that deletes or rejects leaves the patient of
the study, read before it changed it, in `scope["state"]["audit_patients"]`
({StudyInstanceUID: (PatientID, IssuerOfPatientID)}, web/delete.py), as the index may no
longer have it when the record is written.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_plus, urlencode

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.domain.audit import (
    AuditAction,
    AuditEvent,
    AuditQuery,
    AuditStudy,
    parse_audit_time,
    parse_patient,
)
from dicomweb_server.domain.audit_fhir import audit_event_resource
from dicomweb_server.domain.grants import ALL_SITES, Role
from dicomweb_server.errors import BadRequestError, NotAcceptableError
from dicomweb_server.services import access
from dicomweb_server.services.principal import ANONYMOUS, Principal
from dicomweb_server.web.auth import principal_of
from dicomweb_server.web.negotiation import parse_accept
from dicomweb_server.web.params import root_url_of, site_of

__all__ = [
    "FHIR_JSON",
    "AuditMiddleware",
    "classify",
    "note_change_feed",
    "search_audit_events",
]

FHIR_JSON = "application/fhir+json"
CLIENT_WENT_AWAY = 499  # the status recorded for a request its client abandoned
DEFAULT_PAGE = 100  # AuditEvent resources per Bundle without _count
MAX_PAGE = 1000  # the largest _count honoured
_ROOT = "/dicomweb"
_SEARCHABLE = ("studies", "series", "instances")
_LEVELS = ("studies", "series", "instances", "frames")
_READ_ENDINGS = {
    "metadata": AuditAction.METADATA,
    "rendered": AuditAction.RENDERED,
    "thumbnail": AuditAction.THUMBNAIL,
}
_PARAMETERS = ("patient", "study", "user", "site", "since", "until", "_count", "_cursor")
_NON_MATCH_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

Target = tuple[AuditAction, str | None, dict[str, str]]


def classify(method: str, path: str) -> Target | None:
    """(action, site, UIDs by level) of a request touching patient data, else None."""
    if not path.startswith(_ROOT):
        return None
    parts = path[len(_ROOT) :].strip("/").split("/")
    site = None
    if parts[0] == "sites" and len(parts) > 2:
        site, parts = parts[1], parts[2:]
    reading = method in ("GET", "HEAD")
    if parts[0] == "changefeed" and reading and parts[1:] in ([], ["latest"]):
        return AuditAction.CHANGEFEED, site, {}
    if len(parts) == 1:
        if parts[0] == "audit" and reading:
            return AuditAction.AUDIT, site, {}
        if parts[0] in _SEARCHABLE and reading:
            return AuditAction.SEARCH, site, {}
        if parts[0] == "studies" and method == "POST":
            return AuditAction.STORE, site, {}
        return None
    ids: dict[str, str] = {}
    position = 0
    for level in _LEVELS:
        if position + 1 >= len(parts) or parts[position] != level:
            break
        ids[level] = parts[position + 1]
        position += 2
    if not ids:
        return None
    rest = parts[position:]
    if not rest:
        if method == "POST" and len(ids) == 1:
            return AuditAction.STORE, site, ids
        if method == "DELETE" and "frames" not in ids:
            return AuditAction.DELETE, site, ids
        if reading:
            return (AuditAction.FRAMES if "frames" in ids else AuditAction.RETRIEVE), site, ids
        return None
    ending = rest[0]
    if reading and len(rest) == 1:
        if ending in _READ_ENDINGS and not ("frames" in ids and ending == "metadata"):
            return _READ_ENDINGS[ending], site, ids
        if ending in _SEARCHABLE[1:] and ending not in ids and "instances" not in ids:
            return AuditAction.SEARCH, site, ids
    if reading and ending == "bulkdata" and "instances" in ids and "frames" not in ids:
        return AuditAction.BULKDATA, site, ids
    if method == "POST" and ending == "reject":
        return AuditAction.REJECT, site, ids
    return None


def _match_keys(query_string: bytes) -> tuple[str, ...]:
    """The names of a QIDO query's parameters (never their values), paging and return keys
    left out."""
    keys = []
    for pair in query_string.split(b"&"):
        name = unquote_plus(pair.partition(b"=")[0].decode("latin-1"))
        if name and name not in _NON_MATCH_KEYS:
            keys.append(name)
    return tuple(keys)


class AuditMiddleware:
    """Records an AuditEvent after each request that reads or changes patient data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        target = classify(scope["method"], path)
        if target is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        cut = False
        try:
            await self.app(scope, receive, send_status)
        except ClientDisconnect:
            # The client left before its request was read (an aborted upload): its failure,
            # not ours, and nothing was done; 499 as nginx names it (outcome: minor failure).
            status = status or CLIENT_WENT_AWAY
            raise
        except BaseException:
            cut = status != 0  # a 200 went out and then the body broke off: not a success
            raise
        finally:
            self._record(scope, target, 500 if cut else status or 500)

    def _record(self, scope: Scope, target: Target, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        try:
            audit = scope["app"].state.dicomweb.audit
        except (KeyError, AttributeError):
            return  # the app is not started (no lifespan): nothing to record into
        action, site, ids = target
        principal: Principal = state.get("principal") or ANONYMOUS
        client = scope.get("client")
        event = AuditEvent(
            time=time.time(),
            subject=principal.subject,
            kind=principal.kind,
            display_name=principal.display_name,
            client=str(client[0]) if client else "",
            action=action,
            site=site or state.get("audit_site"),
            outcome=status,
            request_id=state.get("request_id", ""),
            study=ids.get("studies"),
            series=ids.get("series"),
            instance=ids.get("instances"),
        )
        if "audit_patients" in state:  # a deletion's handler: the rows are gone by write time
            event.patients = dict(state["audit_patients"])
        if action is AuditAction.STORE:
            event.studies = tuple(state.get("audit_studies", ()))
            event.site = site or audit.default_site
        elif action is AuditAction.SEARCH:
            event.query_keys = _match_keys(scope.get("query_string", b""))
            event.results = state.get("audit_results")
        elif action is AuditAction.CHANGEFEED:
            event.shown = tuple(state.get("audit_shown", ()))
            event.results = state.get("audit_results")
            event.detail = state.get("audit_detail", "")
        audit.record(event)


def note_change_feed(request: Request, body: bytes | None, *, latest: bool) -> None:
    """What a change feed answer (an array of entries, or the latest one) showed, for its
    record: each entry's study at its site, with the patient its metadata carried (an entry
    without metadata leaves the patient to be resolved from the index)."""
    parsed = orjson.loads(body) if body else []
    entries = [parsed] if isinstance(parsed, dict) else parsed
    shown: dict[AuditStudy, None] = {}
    bare: dict[AuditStudy, None] = {}
    for entry in entries:
        study, site = entry.get("StudyInstanceUid"), entry.get("Site")
        if not isinstance(study, str) or not isinstance(site, str):
            continue
        metadata = entry.get("Metadata")
        patient = _value(metadata, "00100020")
        if patient is None:
            bare[AuditStudy(study, site)] = None
        else:
            shown[AuditStudy(study, site, patient, _value(metadata, "00100021"))] = None
    with_patient = {(s.study_instance_uid, s.site) for s in shown}
    for study in bare:  # named without metadata only (a deleted instance's entry, or none)
        if (study.study_instance_uid, study.site) not in with_patient:
            shown[study] = None
    request.state.audit_shown = tuple(shown)
    request.state.audit_results = len(entries)
    has_metadata = any(isinstance(e, dict) and "Metadata" in e for e in entries)
    request.state.audit_detail = ",".join(
        what for what, on in (("latest", latest), ("metadata", has_metadata)) if on
    )


def _value(metadata: object, tag: str) -> str | None:
    """The first value of a text attribute of DICOM JSON, if there is one."""
    if not isinstance(metadata, dict):
        return None
    element = metadata.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


# -- GET /audit --------------------------------------------------------------------------


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequestError(f"{name} may be given once")
    if values and not values[0].strip():
        raise BadRequestError(f"{name} must not be empty")
    return values[0].strip() if values else None


def _integer(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise BadRequestError(f"{name} must be an integer from {low} to {high}")
    return int(text)


def _audit_query(request: Request) -> AuditQuery:
    unknown = sorted(set(request.query_params) - set(_PARAMETERS))
    if unknown:
        raise BadRequestError(
            f"unknown parameter {unknown[0][:40]!r}; audit searches take " + ", ".join(_PARAMETERS)
        )
    site = site_of(request)
    asked_site = _one(request, "site")
    if site is not None and asked_site not in (None, site):
        raise BadRequestError(f"this is site {site!r}'s root: it has only that site's records")
    patient = _one(request, "patient")
    patient_id, issuer = parse_patient(patient) if patient else (None, None)
    since, until = _one(request, "since"), _one(request, "until")
    return AuditQuery(
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        study_instance_uid=_one(request, "study"),
        user=_one(request, "user"),
        site=site or asked_site,
        since=None if since is None else parse_audit_time(since, "since"),
        until=None if until is None else parse_audit_time(until, "until"),
        limit=_integer(_one(request, "_count"), "_count", DEFAULT_PAGE, 1, MAX_PAGE),
        before=_integer(_one(request, "_cursor"), "_cursor", 0, 1, 2**62) or None,
    )


def _accept_fhir(header: str | None) -> None:
    if not header:
        return
    for media in parse_accept(header):
        if media.type in (FHIR_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptableError(f"audit events are available as {FHIR_JSON} only")


async def search_audit_events(request: Request) -> Response:
    """GET /audit: a FHIR R4 searchset Bundle of AuditEvent resources, newest first.

    `patient` (a PatientID, or `issuer|id`), `study`, `user` (subject or display name),
    `site`, `since` and `until` (dates or ISO 8601 date-times), `_count`; the `next` link
    carries `_cursor`. At a site's root only that site's records are searched.
    """
    if site_of(request) is None:  # a site's root is authorized by web/auth.py
        access.check(principal_of(request), ALL_SITES, Role.ADMIN)  # the trail of every site
    _accept_fhir(request.headers.get("accept"))
    query = _audit_query(request)
    state = request.app.state.dicomweb
    page = await state.audit.search(query)
    source = state.settings.audit_source
    base = f"{root_url_of(request)}/audit"
    asked = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
    links = [{"relation": "self", "url": _url(base, request.query_params.multi_items())}]
    if page.next_before is not None:
        links.append(
            {"relation": "next", "url": _url(base, [*asked, ("_cursor", str(page.next_before))])}
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"resource": audit_event_resource(record, source), "search": {"mode": "match"}}
            for record in page.records
        ],
    }
    return Response(orjson.dumps(bundle), media_type=FHIR_JSON)


def _url(base: str, params: list[tuple[str, str]]) -> str:
    return f"{base}?{urlencode(params)}" if params else base
