"""Rows of the lifecycle tables (issue 18) as both indexes read and write them.

A trashed instance keeps its instance row column for column, plus a snapshot of its series
and study rows (every column but `id`, as JSON) so that a restore can recreate them exactly
when the delete removed them. Snapshots are taken by column name, so columns added to those
tables later are kept too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.domain.lifecycle import Hold, StudyFacts
from dicomweb_server.index.aggregates import add_to_set
from dicomweb_server.index.base import TrashedInstance

__all__ = [
    "ALL_HOLDS",
    "HOLD_COLUMNS",
    "INSTANCE_ROW_COLUMNS",
    "TRASHED_COLUMNS",
    "held_trash",
    "hold_from_row",
    "joined_set",
    "not_found",
    "snapshot",
    "trashed_from_row",
    "unsnapshot",
]

# Every column of an instance row but its id, as deleted_instances repeats them.
INSTANCE_ROW_COLUMNS = (
    "site",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "transfer_syntax_uid",
    "blob_key",
    "size",
    "digest",
    "number_of_frames",
    "pixel",
    "bulk",
    "attributes",
    "metadata",
)
TRASHED_COLUMNS = (
    "id",
    "site",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "blob_key",
    "digest",
    "deleted_at",
)
HOLD_COLUMNS = (
    "id",
    "reason",
    "created",
    "created_by",
    "site",
    "patient_id",
    "issuer_of_patient_id",
    "study_instance_uid",
)
# Every legal hold, oldest first (both backends' list_holds, and purge's reading of the trash)
ALL_HOLDS = f"SELECT {', '.join(HOLD_COLUMNS)} FROM legal_holds ORDER BY id"
_BYTES = "$bytes"


def trashed_from_row(row: Any) -> TrashedInstance:
    """A row of TRASHED_COLUMNS as a TrashedInstance."""
    return TrashedInstance(
        id=int(row[0]),
        key=InstanceKey(row[1], row[2], row[3], row[4]),
        blob_key=row[5],
        digest=row[6],
        deleted_at=float(row[7]),
    )


def held_trash(rows: Iterable[Any], holds: list[Hold]) -> list[TrashedInstance]:
    """Rows of TRASHED_COLUMNS plus `study_row` as TrashedInstances, each `held_by` the first
    of `holds` that covers its study as it was when deleted (its snapshot has the patient)."""
    trashed: list[TrashedInstance] = []
    held: dict[tuple[str, str], int | None] = {}
    for row in rows:
        item = trashed_from_row(row)
        study = (item.key.site, item.key.study_instance_uid)
        if study not in held:
            held[study] = _held_by(holds, study, row[len(TRASHED_COLUMNS)]) if holds else None
        hold_id = held[study]
        trashed.append(item if hold_id is None else replace(item, held_by=hold_id))
    return trashed


def _held_by(holds: list[Hold], study: tuple[str, str], study_row: bytes | str) -> int | None:
    columns: dict[str, Any] = orjson.loads(study_row)
    facts = StudyFacts(
        site=study[0],
        study_instance_uid=study[1],
        patient_id=columns.get("patient_id"),
        issuer_of_patient_id=columns.get("issuer_of_patient_id"),
        study_date=columns.get("study_date"),
        received=float(columns.get("received") or 0.0),
    )
    return next((hold.id for hold in holds if hold.covers(facts)), None)


def hold_from_row(row: Any) -> Hold:
    """A row of HOLD_COLUMNS as a Hold."""
    return Hold(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5], row[6], row[7])


def snapshot(columns: Mapping[str, Any]) -> bytes:
    """A series or study row (without its id) as JSON, binary columns base64-encoded."""
    encoded: dict[str, Any] = {}
    for name, value in columns.items():
        if name == "id":
            continue
        if isinstance(value, bytes | bytearray | memoryview):
            value = {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
        encoded[name] = value
    return orjson.dumps(encoded)


def unsnapshot(data: bytes | str, columns: Iterable[str]) -> dict[str, Any]:
    """A snapshot back as column values, for the table's current `columns` only."""
    decoded: dict[str, Any] = orjson.loads(data)
    wanted = set(columns) - {"id"}
    row: dict[str, Any] = {}
    for name, value in decoded.items():
        if name not in wanted:
            continue
        if isinstance(value, dict) and set(value) == {_BYTES}:
            value = base64.b64decode(value[_BYTES])
        row[name] = value
    return row


def joined_set(values: Iterable[str | None]) -> str:
    """Values as a backslash-joined sorted set, as the add paths keep value sets."""
    joined = ""
    for value in values:
        joined = add_to_set(joined, value)
    return joined


def not_found(study: str, series: str | None, sops: tuple[str, ...] | None) -> str:
    """The 404 reason for a delete that found nothing."""
    if sops is not None:
        return f"instance {', '.join(sops[:3])} not found in series {series} of study {study}"
    if series is not None:
        return f"series {series} not found in study {study}"
    return f"study {study} not found"
