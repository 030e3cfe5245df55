"""An audit record as a FHIR R4 AuditEvent resource (issue 17).

Codes as DICOM defines them for its audit messages (PS3.15 A.5, carried over into FHIR by the
AuditEvent resource and IHE's Basic Audit Log Patterns): `type` is the DICOM EventID (DCM
110112 Query, 110103 DICOM Instances Accessed, 110104 DICOM Instances Transferred, 110105 DICOM
Study Deleted, 110101 Audit Log Used, ...), `subtype` the IHE transaction (RAD-129 QIDO-RS,
RAD-107 WADO-RS, RAD-108 STOW-RS) and our own action code. The patient is an entity whose
identifier is the PatientID (IssuerOfPatientID as its system when that is a URI or an OID,
as the assigner otherwise); the study an entity identified by its Study Instance UID; a QIDO
query an entity holding its match keys (keywords only); a change feed read an entity naming
it beside the studies and patients its entries showed. Roll-up counts and QIDO result (and
change feed entry) counts are entity details.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from dicomweb_server.domain.audit import (
    APPLICATION_START,
    APPLICATION_STOP,
    DCM,
    AuditAction,
    AuditCode,
    AuditRecord,
    event_codes,
    iso_time,
    outcome_indicator,
)

__all__ = [
    "ACTION_SYSTEM",
    "DCM_SYSTEM",
    "audit_event_resource",
    "patient_identifier",
]

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
IHE_SYSTEM = "urn:ihe:event-type-code"  # IHE transactions, as IHE's FHIR guides code them
ACTION_SYSTEM = "urn:dicomweb-server:audit-action"  # our action names (search, frames, view...)
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_MAX_DETAIL_UIDS = 50  # series or instance UIDs shown per study entity


def _coding(code: AuditCode) -> dict[str, str]:
    system = {DCM: DCM_SYSTEM}.get(code.system, IHE_SYSTEM)
    return {"system": system, "code": code.code, "display": code.display}


def patient_identifier(patient_id: str, issuer: str | None) -> dict[str, Any]:
    """A FHIR Identifier for a PatientID: the issuer is its system when it is a URI or an OID
    (`urn:oid:...`), its assigner's name otherwise (a system must be a URI)."""
    identifier: dict[str, Any] = {"value": patient_id}
    if issuer:
        if _OID.fullmatch(issuer):
            identifier["system"] = f"urn:oid:{issuer}"
        elif _URI.fullmatch(issuer):
            identifier["system"] = issuer
        else:
            identifier["assigner"] = {"display": issuer}
    return identifier


def _detail(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "valueString": value}


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    patients: dict[tuple[str, str | None], None] = {}
    for study in record.studies:
        if study.patient_id is not None:
            patients[(study.patient_id, study.issuer_of_patient_id)] = None
    for patient_id, issuer in patients:
        entities.append(
            {
                "what": {"identifier": patient_identifier(patient_id, issuer)},
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for study in record.studies:
        details = [_detail("site", study.site)] if study.site else []
        details += [_detail(kind, str(count)) for kind, count in record.counts.items()]
        if len(record.studies) == 1:
            series = record.series[:_MAX_DETAIL_UIDS]
            details += [_detail("SeriesInstanceUID", uid) for uid in series]
            instances = record.instances[:_MAX_DETAIL_UIDS]
            details += [_detail("SOPInstanceUID", uid) for uid in instances]
        entities.append(
            {
                "what": {
                    "identifier": {
                        "type": {
                            "coding": [
                                {
                                    "system": DCM_SYSTEM,
                                    "code": "110180",
                                    "display": "Study Instance UID",
                                }
                            ]
                        },
                        "system": "urn:dicom:uid",
                        "value": f"urn:oid:{study.study_instance_uid}",
                    }
                },
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": _OBJECT_ROLE, "code": "3", "display": "Report"},
                **({"detail": details} if details else {}),
            }
        )
    if record.action == AuditAction.SEARCH:
        query = "&".join(record.query_keys)
        entity: dict[str, Any] = {
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
            "description": ", ".join(record.query_keys) or "(no match keys)",
            "query": base64.b64encode(query.encode()).decode(),
        }
        if record.results is not None:
            entity["detail"] = [_detail("results", str(record.results))]
        entities.append(entity)
    elif record.action == AuditAction.CHANGEFEED:
        feed: dict[str, Any] = {
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
            "description": " ".join(["change feed", *record.detail.split(",")]).strip(),
        }
        if record.results is not None:
            feed["detail"] = [_detail("entries", str(record.results))]
        entities.append(feed)
    return entities


def audit_event_resource(record: AuditRecord, source: str) -> dict[str, Any]:
    """The record as a FHIR R4 AuditEvent; `source` names this server (the observer)."""
    codes = event_codes(record.action)
    subtypes = [_coding(code) for code in codes.event_types]
    if record.action == AuditAction.APPLICATION:
        subtypes = [_coding(APPLICATION_STOP if record.detail == "stop" else APPLICATION_START)]
    subtypes.append({"system": ACTION_SYSTEM, "code": record.action, "display": record.action})
    outcome = outcome_indicator(record.outcome)
    requestor: dict[str, Any] = {
        "who": {
            "identifier": {
                "system": f"urn:dicomweb-server:principal:{record.kind}",
                "value": record.subject,
            },
            **({"display": record.display_name} if record.display_name else {}),
        },
        "requestor": True,
    }
    if codes.requestor_role is not None:
        requestor["type"] = {"coding": [_coding(codes.requestor_role)]}
    if record.client:
        requestor["network"] = {"address": record.client, "type": "2"}
    server: dict[str, Any] = {"who": {"display": source}, "requestor": False}
    if codes.server_role is not None:
        server["type"] = {"coding": [_coding(codes.server_role)]}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        **({"id": str(record.id)} if record.id is not None else {}),
        "type": _coding(codes.event_id),
        "subtype": subtypes,
        "action": codes.action_code,
        "period": {"start": iso_time(record.time), "end": iso_time(record.end_time)},
        "recorded": iso_time(record.end_time),
        "outcome": str(outcome),
        "agent": [requestor, server] if record.action != AuditAction.APPLICATION else [server],
        "source": {
            **({"site": record.site} if record.site else {}),
            "observer": {"display": source},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if outcome:
        resource["outcomeDesc"] = f"HTTP {record.outcome}"
    if record.request_id:
        resource["extension"] = [
            {
                "url": "urn:dicomweb-server:audit-request-id",
                "valueString": record.request_id,
            }
        ]
    entities = _entities(record)
    if entities:
        resource["entity"] = entities
    return resource
