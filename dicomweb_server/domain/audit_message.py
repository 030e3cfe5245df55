"""An audit record as a DICOM audit message (PS3.15 A.5), the XML IHE ATNA repositories take.

Element order and attributes follow the A.5.1 schema: EventIdentification (EventID,
EventTypeCode*, EventOutcomeDescription?), one ActiveParticipant per participant (the requestor,
then this server, each with its RoleIDCode), AuditSourceIdentification, then one
ParticipantObjectIdentification per patient, study and query (ParticipantObjectIDTypeCode, a
ParticipantObjectName or ParticipantObjectQuery, ParticipantObjectDetail*). Coded values carry
csd-code, codeSystemName and originalText; detail values are base64, as the schema requires.
PatientIDs are in HL7 CX form (`id^^^issuer`), as IHE asks.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

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

__all__ = ["audit_message_xml"]

_RFC3881 = "RFC-3881"
_PATIENT_NUMBER = AuditCode("2", _RFC3881, "Patient Number")
_SEARCH_CRITERIA = AuditCode("10", _RFC3881, "Search Criteria")
_URI = AuditCode("12", _RFC3881, "URI")
_STUDY_UID = AuditCode("110180", DCM, "Study Instance UID")


def _code(parent: ET.Element, tag: str, code: AuditCode) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": code.code,
            "codeSystemName": code.system,
            "displayName": code.display,
            "originalText": code.display,
        },
    )


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    ET.SubElement(
        parent,
        "ParticipantObjectDetail",
        {"type": kind, "value": base64.b64encode(value.encode()).decode()},
    )


def _object(
    message: ET.Element,
    object_id: str,
    type_code: str,
    role: str,
    id_type: AuditCode,
) -> ET.Element:
    element = ET.SubElement(
        message,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": object_id,
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    return element


def _token(text: str) -> str:
    """xsd:token: no line breaks or tabs, no leading, trailing or doubled spaces."""
    return " ".join(text.split())


def audit_message_xml(record: AuditRecord, source: str, host: str) -> bytes:
    """The record as an AuditMessage (UTF-8, with its XML declaration); `source` is the
    AuditSourceID and this server's UserID, `host` its network access point."""
    codes = event_codes(record.action)
    message = ET.Element("AuditMessage")
    event = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": codes.action_code,
            "EventDateTime": iso_time(record.time),
            "EventOutcomeIndicator": str(outcome_indicator(record.outcome)),
        },
    )
    _code(event, "EventID", codes.event_id)
    types = codes.event_types
    if record.action == AuditAction.APPLICATION:
        types = (APPLICATION_STOP if record.detail == "stop" else APPLICATION_START,)
    for event_type in types:
        _code(event, "EventTypeCode", event_type)
    if outcome_indicator(record.outcome):
        ET.SubElement(event, "EventOutcomeDescription").text = f"HTTP status {record.outcome}"

    if record.action != AuditAction.APPLICATION:
        requestor = {
            "UserID": record.subject or "anonymous",
            "AlternativeUserID": record.kind,
            "UserIsRequestor": "true",
        }
        if record.display_name:
            requestor["UserName"] = record.display_name
        if record.client:
            requestor["NetworkAccessPointID"] = _token(record.client)
            requestor["NetworkAccessPointTypeCode"] = "2"
        participant = ET.SubElement(message, "ActiveParticipant", requestor)
        if codes.requestor_role is not None:
            _code(participant, "RoleIDCode", codes.requestor_role)
    server = ET.SubElement(
        message,
        "ActiveParticipant",
        {
            "UserID": source,
            "UserIsRequestor": "false",
            "NetworkAccessPointID": _token(host),
            "NetworkAccessPointTypeCode": "1",
        },
    )
    if codes.server_role is not None:
        _code(server, "RoleIDCode", codes.server_role)

    source_attributes = {"AuditSourceID": _token(source)}
    if record.site:
        source_attributes["AuditEnterpriseSiteID"] = record.site
    audit_source = ET.SubElement(message, "AuditSourceIdentification", source_attributes)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    patients: dict[str, None] = {}
    for study in record.studies:
        if study.patient_id is not None:
            issuer = study.issuer_of_patient_id
            patients[f"{study.patient_id}^^^{issuer}" if issuer else study.patient_id] = None
    for patient in patients:
        element = _object(message, _token(patient) or "-", "1", "1", _PATIENT_NUMBER)
        ET.SubElement(element, "ParticipantObjectName").text = _token(patient) or "-"
    for study in record.studies:
        element = _object(message, study.study_instance_uid, "2", "3", _STUDY_UID)
        ET.SubElement(element, "ParticipantObjectName").text = study.study_instance_uid
        if study.site:
            _detail(element, "site", study.site)
        for kind, count in record.counts.items():
            _detail(element, kind, str(count))
    if record.action == AuditAction.SEARCH:
        element = _object(message, "QIDO-RS", "2", "24", _SEARCH_CRITERIA)
        query = "&".join(record.query_keys).encode()  # keywords only, never values
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query).decode()
        if record.results is not None:
            _detail(element, "results", str(record.results))
    if record.action == AuditAction.AUDIT:
        element = _object(message, "audit", "2", "13", _URI)
        ET.SubElement(element, "ParticipantObjectName").text = "audit trail"
    return bytes(ET.tostring(message, encoding="utf-8", xml_declaration=True))
