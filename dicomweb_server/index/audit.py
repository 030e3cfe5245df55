"""Audit rows as both indexes store them (`audit_events`, `audit_studies`), and the search SQL.

A record's lists (series, instances, query keys, counts) live in one JSON `detail` column:
nothing searches them. What is searched (time, user, site, study, patient) has its own
indexed column; the studies of a record, each with its patient, are rows of `audit_studies`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dicomweb_server.domain.audit import AuditPage, AuditQuery, AuditRecord, AuditStudy

__all__ = [
    "EVENT_COLUMNS",
    "EXPIRY_BATCH",
    "STUDY_COLUMNS",
    "AuditSql",
    "event_values",
    "group_studies",
    "page_of",
    "record_from_row",
    "search_sql",
    "studies_sql",
    "study_values",
]

EVENT_COLUMNS = (
    "time",
    "end_time",
    "subject",
    "kind",
    "display_name",
    "client",
    "action",
    "site",
    "outcome",
    "request_id",
    "detail",
)
STUDY_COLUMNS = (
    "event_id",
    "end_time",
    "site",
    "study_instance_uid",
    "patient_id",
    "issuer_of_patient_id",
)
EXPIRY_BATCH = 10_000  # records removed per expiry transaction (a long DELETE blocks writers)


@dataclass(frozen=True, slots=True)
class AuditSql:
    """A statement and its parameters."""

    text: str
    params: list[Any]


def _detail(record: AuditRecord) -> str:
    detail: dict[str, Any] = {}
    if record.series:
        detail["series"] = list(record.series)
    if record.instances:
        detail["instances"] = list(record.instances)
    if record.query_keys:
        detail["keys"] = list(record.query_keys)
    if record.results is not None:
        detail["results"] = record.results
    if record.counts:
        detail["counts"] = record.counts
    if record.detail:
        detail["text"] = record.detail
    return orjson.dumps(detail).decode()


def event_values(record: AuditRecord) -> tuple[Any, ...]:
    """A record's values in EVENT_COLUMNS order."""
    return (
        record.time,
        record.end_time,
        record.subject,
        record.kind,
        record.display_name,
        record.client,
        record.action,
        record.site,
        record.outcome,
        record.request_id,
        _detail(record),
    )


def study_values(event_id: int, record: AuditRecord) -> list[tuple[Any, ...]]:
    """The `audit_studies` rows of a record stored as `event_id`."""
    return [
        (
            event_id,
            record.end_time,
            study.site,
            study.study_instance_uid,
            study.patient_id,
            study.issuer_of_patient_id,
        )
        for study in record.studies
    ]


def record_from_row(row: Any, studies: Sequence[AuditStudy]) -> AuditRecord:
    """A row of `id` then EVENT_COLUMNS, and its studies, as a record."""
    detail = orjson.loads(row[11] or "{}")
    return AuditRecord(
        id=int(row[0]),
        time=float(row[1]),
        end_time=float(row[2]),
        subject=row[3],
        kind=row[4],
        display_name=row[5],
        client=row[6],
        action=row[7],
        site=row[8],
        outcome=int(row[9]),
        request_id=row[10],
        studies=tuple(studies),
        series=tuple(detail.get("series", ())),
        instances=tuple(detail.get("instances", ())),
        query_keys=tuple(detail.get("keys", ())),
        results=detail.get("results"),
        counts=dict(detail.get("counts", {})),
        detail=detail.get("text", ""),
    )


def search_sql(query: AuditQuery, mark: Callable[[int], str]) -> AuditSql:
    """Records matching `query`, newest first, one more than the limit (to know of a next
    page). `mark(n)` is the n-th (1-based) placeholder of the driver."""
    params: list[Any] = []

    def p(value: Any) -> str:
        params.append(value)
        return mark(len(params))

    where: list[str] = []
    by_study: list[str] = []
    if query.patient_id is not None:
        by_study.append(f"patient_id = {p(query.patient_id)}")
        if query.issuer_of_patient_id is not None:
            by_study.append(f"COALESCE(issuer_of_patient_id, '') = {p(query.issuer_of_patient_id)}")
    if query.study_instance_uid is not None:
        by_study.append(f"study_instance_uid = {p(query.study_instance_uid)}")
    if by_study:
        where.append(f"id IN (SELECT event_id FROM audit_studies WHERE {' AND '.join(by_study)})")
    if query.user is not None:
        where.append(f"(subject = {p(query.user)} OR display_name = {p(query.user)})")
    if query.site is not None:
        where.append(f"site = {p(query.site)}")
    if query.since is not None:
        where.append(f"end_time >= {p(query.since)}")
    if query.until is not None:
        where.append(f"time < {p(query.until)}")
    if query.before is not None:
        where.append(f"id < {p(query.before)}")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    text = (
        f"SELECT id, {', '.join(EVENT_COLUMNS)} FROM audit_events{clause}"
        f" ORDER BY id DESC LIMIT {p(query.limit + 1)}"
    )
    return AuditSql(text, params)


def studies_sql(event_ids: Sequence[int], mark: Callable[[int], str]) -> AuditSql:
    """The study rows of the given records."""
    marks = ", ".join(mark(n) for n in range(1, len(event_ids) + 1))
    return AuditSql(
        "SELECT event_id, site, study_instance_uid, patient_id, issuer_of_patient_id"
        f" FROM audit_studies WHERE event_id IN ({marks})",
        list(event_ids),
    )


def group_studies(rows: Sequence[Any]) -> dict[int, list[AuditStudy]]:
    """Rows of `studies_sql` by record id, in row order."""
    found: dict[int, list[AuditStudy]] = {}
    for row in rows:
        found.setdefault(int(row[0]), []).append(AuditStudy(row[2], row[1], row[3], row[4]))
    return found


def page_of(rows: Sequence[Any], studies: dict[int, list[AuditStudy]], limit: int) -> AuditPage:
    """The records of a page and the cursor of the next one."""
    records = [record_from_row(row, studies.get(int(row[0]), [])) for row in rows[:limit]]
    more = len(rows) > limit and bool(records)
    return AuditPage(records, records[-1].id if more else None)
