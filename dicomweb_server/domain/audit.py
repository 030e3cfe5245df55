"""Audit (issue 17): what one request did to patient data, and the codes each action maps to.

An `AuditEvent` is one request as the web layer saw it (who, from where, what, the UIDs in its
path, its HTTP status). An `AuditRecord` is what the trail keeps: one event, or a roll-up of a
user's image reads of one study over a few minutes ("study viewed"), with the PatientID of each
study resolved from the index. QIDO match keys are kept by keyword only, never their values.

Event codes are DICOM's (PS3.15 A.5.3, CID 400-402, code system DCM), with the IHE Radiology
transaction as event type where one fits (QIDO-RS RAD-129, WADO-RS RAD-107, STOW-RS RAD-108).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum

from dicomweb_server.errors import BadRequestError

__all__ = [
    "APPLICATION_START",
    "APPLICATION_STOP",
    "DCM",
    "ROLLED_UP",
    "AuditAction",
    "AuditCode",
    "AuditEvent",
    "AuditPage",
    "AuditQuery",
    "AuditRecord",
    "AuditStudy",
    "EventCodes",
    "event_codes",
    "iso_time",
    "outcome_indicator",
    "parse_audit_time",
    "parse_patient",
]

DCM = "DCM"  # DICOM's own code system (PS3.16), as DICOM audit messages name it


class AuditAction(StrEnum):
    """What a request did; the last three are not requests' own."""

    SEARCH = "search"  # QIDO-RS
    CHANGEFEED = "changefeed"  # the change feed (its entries name studies, with metadata)
    RETRIEVE = "retrieve"  # WADO-RS instances (whole DICOM objects leave the server)
    METADATA = "metadata"
    FRAMES = "frames"
    RENDERED = "rendered"
    THUMBNAIL = "thumbnail"
    BULKDATA = "bulkdata"
    STORE = "store"  # STOW-RS
    DELETE = "delete"  # a DELETE, retention expiry, or a purge of the trash
    RESTORE = "restore"  # deleted instances brought back from the trash (the CLI)
    REJECT = "reject"
    AUDIT = "audit"  # the audit trail was read (DICOM "Audit Log Used")
    ADMIN = "admin"  # sites, API keys
    EXPORT = "export"  # a study written to media by the export command (DICOM "Export")
    VIEW = "view"  # a roll-up of METADATA..BULKDATA reads of one study by one user
    APPLICATION = "application"  # the server started or stopped


# Image reads a viewer makes by the hundred: rolled up per user and study into one VIEW record.
ROLLED_UP = frozenset(
    {
        AuditAction.METADATA,
        AuditAction.FRAMES,
        AuditAction.RENDERED,
        AuditAction.THUMBNAIL,
        AuditAction.BULKDATA,
    }
)


@dataclass(frozen=True, slots=True)
class AuditCode:
    """A coded value: `code` in `system` (DCM, or IHE's transactions), with its meaning."""

    code: str
    system: str
    display: str


@dataclass(frozen=True, slots=True)
class EventCodes:
    """How one action is reported: DICOM EventID, EventActionCode, EventTypeCodes, and the
    role of the requestor and of this server (DCM 110153 Source, 110152 Destination)."""

    event_id: AuditCode
    action_code: str  # C, R, U, D, E
    event_types: tuple[AuditCode, ...]
    requestor_role: AuditCode | None
    server_role: AuditCode | None


def _dcm(code: str, display: str) -> AuditCode:
    return AuditCode(code, DCM, display)


def _ihe(code: str, display: str) -> AuditCode:
    return AuditCode(code, "IHE Transactions", display)


_SOURCE = _dcm("110153", "Source Role ID")
_DESTINATION = _dcm("110152", "Destination Role ID")
_QUERY = _dcm("110112", "Query")
_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
_QIDO = _ihe("RAD-129", "QIDO-RS Query")
_WADO = _ihe("RAD-107", "WADO-RS Retrieve")
_STOW = _ihe("RAD-108", "Store Instances over the Web")
_READ = EventCodes(_ACCESSED, "R", (_WADO,), _DESTINATION, _SOURCE)

_CODES: dict[AuditAction, EventCodes] = {
    # The requestor asks (Source), the server answers (Destination): PS3.15 A.5.3.10
    AuditAction.SEARCH: EventCodes(_QUERY, "E", (_QIDO,), _SOURCE, _DESTINATION),
    # A query of what changed (no IHE transaction): each entry's study and patient recorded
    AuditAction.CHANGEFEED: EventCodes(_QUERY, "E", (), _SOURCE, _DESTINATION),
    # Whole instances leave the server: A.5.3.4, read at the source
    AuditAction.RETRIEVE: EventCodes(_TRANSFERRED, "R", (_WADO,), _DESTINATION, _SOURCE),
    AuditAction.METADATA: _READ,
    AuditAction.FRAMES: _READ,
    AuditAction.RENDERED: _READ,
    AuditAction.THUMBNAIL: _READ,
    AuditAction.BULKDATA: _READ,
    AuditAction.VIEW: _READ,
    # Instances arrive: A.5.3.4, created at the destination
    AuditAction.STORE: EventCodes(_TRANSFERRED, "C", (_STOW,), _SOURCE, _DESTINATION),
    AuditAction.DELETE: EventCodes(_dcm("110105", "DICOM Study Deleted"), "D", (), None, None),
    # Instances come back from the trash: accessed with a create action
    AuditAction.RESTORE: EventCodes(_ACCESSED, "C", (), None, None),
    # Rejection hides instances (IOCM): accessed with a delete action, as dcm4chee reports it
    AuditAction.REJECT: EventCodes(_ACCESSED, "D", (), None, None),
    AuditAction.AUDIT: EventCodes(_dcm("110101", "Audit Log Used"), "R", (), None, None),
    # Instances leave for media (A.5.3.6), read at the source; the media is in the detail
    AuditAction.EXPORT: EventCodes(_dcm("110106", "Export"), "R", (), None, _SOURCE),
    AuditAction.ADMIN: EventCodes(
        _dcm("110113", "Security Alert"),
        "E",
        (_dcm("110129", "Security Configuration"),),
        None,
        None,
    ),
    AuditAction.APPLICATION: EventCodes(
        _dcm("110100", "Application Activity"), "E", (), None, _dcm("110150", "Application")
    ),
}

APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")


def event_codes(action: str) -> EventCodes:
    """The codes of an action (an unknown one, from a newer server, reads as an access)."""
    try:
        return _CODES[AuditAction(action)]
    except ValueError:
        return _READ


def outcome_indicator(status: int) -> int:
    """HTTP status → DICOM EventOutcomeIndicator / FHIR R4 AuditEvent.outcome: 0 success,
    4 minor failure (the client's: 4xx), 8 serious failure (the server's: 5xx or none)."""
    if 100 <= status < 400:
        return 0
    if 400 <= status < 500:
        return 4
    return 8


@dataclass(slots=True)
class AuditEvent:
    """One request that read or changed patient data, as the web layer saw it.

    `site` is the site the request concerned: at the enterprise root, the one whose copy a
    WADO read served or a delete changed; None when none was chosen (a QIDO there spans every
    site; a request refused before its handler ran).
    """

    time: float
    subject: str
    kind: str
    display_name: str
    client: str
    action: AuditAction
    site: str | None
    outcome: int
    request_id: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    studies: tuple[str, ...] = ()  # STOW: the studies stored
    query_keys: tuple[str, ...] = ()  # QIDO: keywords (or tags) of the match keys, no values
    results: int | None = None  # QIDO: how many results were returned
    detail: str = ""  # APPLICATION: start or stop; CHANGEFEED: latest, metadata
    # Studies the answer showed, each at its site (a change feed spans sites), with the
    # patient when the answer carried it
    shown: tuple[AuditStudy, ...] = ()
    # Patients known to the handler (a deletion, whose study rows are gone by write time):
    # StudyInstanceUID → (PatientID, IssuerOfPatientID)
    patients: dict[str, tuple[str, str | None]] | None = None


@dataclass(frozen=True, slots=True)
class AuditStudy:
    """A study a record concerns, at its site, with the patient it belongs to (None when the
    index had no such study when the record was written)."""

    study_instance_uid: str
    site: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None


@dataclass(slots=True)
class AuditRecord:
    """One entry of the audit trail: a request, or a roll-up of a user's reads of a study.

    `time` is when the activity began and `end_time` when its last request was made (the same
    for a single request). `counts` says how many requests of each kind a roll-up holds.
    """

    time: float
    end_time: float
    subject: str
    kind: str
    display_name: str
    client: str
    action: str
    site: str | None
    outcome: int
    request_id: str
    studies: tuple[AuditStudy, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    query_keys: tuple[str, ...] = ()
    results: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    id: int | None = None  # given by the store


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of an audit search; None matches anything. Newest first, `limit` at a time,
    continuing below the record id `before` (the previous page's last)."""

    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_instance_uid: str | None = None
    user: str | None = None  # a subject or a display name
    site: str | None = None
    since: float | None = None  # records that end at or after this (Unix seconds)
    until: float | None = None  # records that begin before this
    limit: int = 100
    before: int | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of records, newest first; `next_before` continues it (None: the last page)."""

    records: list[AuditRecord]
    next_before: int | None


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_audit_time(text: str, name: str) -> float:
    """`2024-05-01` (midnight UTC) or an ISO 8601 date-time (UTC unless it says otherwise)
    → Unix seconds; BadRequestError naming the parameter otherwise."""
    value = text.strip()
    try:
        if _DATE.fullmatch(value):
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise BadRequestError(
            f"{name} must be a date (2024-05-01) or an ISO 8601 date-time, got {value[:40]!r}"
        ) from None
    return moment.timestamp()


def parse_patient(text: str) -> tuple[str, str | None]:
    """FHIR token syntax: `id` (any issuer) or `issuer|id` → (PatientID, issuer or None)."""
    issuer, bar, patient = text.rpartition("|")
    if not bar:
        return text, None
    return patient, issuer


def iso_time(seconds: float) -> str:
    """Unix seconds → `2024-05-01T10:00:00.123Z` (FHIR instant, xsd:dateTime)."""
    if not math.isfinite(seconds):
        seconds = 0.0
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
