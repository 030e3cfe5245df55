"""`dicomweb-server audit`: search the audit trail (issue 17) with the filters of GET /audit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import Any

import orjson

from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import (
    AuditQuery,
    AuditRecord,
    iso_time,
    parse_audit_time,
    parse_patient,
)
from dicomweb_server.domain.audit_fhir import audit_event_resource
from dicomweb_server.errors import DicomwebError

__all__ = ["add_commands"]

_PAGE = 1000


def add_commands(commands: Any) -> None:
    audit = commands.add_parser(
        "audit", help="search the audit trail: who read or changed which patient's data"
    )
    audit.add_argument("--patient", help="a PatientID, or ISSUER|ID")
    audit.add_argument("--study", help="a Study Instance UID")
    audit.add_argument("--user", help="a user's subject or display name")
    audit.add_argument("--site", help="a site's records only")
    audit.add_argument("--since", help="records ending at or after this date or date-time")
    audit.add_argument("--until", help="records beginning before this date or date-time")
    audit.add_argument("--limit", type=int, default=1000, help="at most this many records")
    audit.add_argument(
        "--format",
        choices=("table", "ndjson"),
        default="table",
        help="a table, or one FHIR R4 AuditEvent resource per line",
    )
    audit.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    audit.set_defaults(run=_run)


def _query(args: argparse.Namespace, limit: int) -> AuditQuery:
    patient_id, issuer = parse_patient(args.patient) if args.patient else (None, None)
    return AuditQuery(
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        study_instance_uid=args.study,
        user=args.user,
        site=args.site,
        since=None if args.since is None else parse_audit_time(args.since, "--since"),
        until=None if args.until is None else parse_audit_time(args.until, "--until"),
        limit=limit,
    )


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("dicomweb-server: --limit must be 1 or more", file=sys.stderr)
        return 2
    try:
        query = _query(args, min(args.limit, _PAGE))
    except DicomwebError as exc:
        print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
        return 2
    return asyncio.run(_search(settings, args, query))


async def _search(settings: Settings, args: argparse.Namespace, query: AuditQuery) -> int:
    from dicomweb_server.backends import open_index
    from dicomweb_server.services.audit import AuditService

    index = await open_index(settings)
    try:
        service = AuditService.from_settings(index, settings)  # not started: it only reads
        records: list[AuditRecord] = []
        before = None
        while len(records) < args.limit:
            page = await service.search(replace(query, before=before))
            records += page.records
            before = page.next_before
            if before is None:
                break
    except DicomwebError as exc:
        print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        await index.close()
    records = records[: args.limit]
    if args.format == "ndjson":
        out = sys.stdout.buffer
        for record in records:
            out.write(orjson.dumps(audit_event_resource(record, settings.audit_source)) + b"\n")
        out.flush()
    else:
        _table(records)
    return 0


def _patients(record: AuditRecord) -> str:
    found = {
        f"{s.issuer_of_patient_id}|{s.patient_id}" if s.issuer_of_patient_id else s.patient_id
        for s in record.studies
        if s.patient_id is not None
    }
    return ",".join(sorted(found)) or "-"


def _detail(record: AuditRecord) -> str:
    parts = [f"{kind}={count}" for kind, count in record.counts.items()]
    if record.query_keys:
        parts.append("keys=" + ",".join(record.query_keys))
    if record.results is not None:
        parts.append(f"results={record.results}")
    if record.detail:
        parts.append(record.detail)
    return " ".join(parts)


def _table(records: list[AuditRecord]) -> None:
    rows = [
        (
            iso_time(record.time)[:19] + "Z",
            record.display_name or record.subject,
            record.action,
            str(record.outcome),
            record.site or "*",
            _patients(record),
            ",".join(s.study_instance_uid for s in record.studies) or "-",
            _detail(record),
        )
        for record in records
    ]
    header = ("TIME", "USER", "ACTION", "STATUS", "SITE", "PATIENT", "STUDY", "DETAIL")
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(7)]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), end=""
        )
        print(f"  {row[7]}".rstrip())
