"""Study and series rows, and the instance row, as both indexes write them: one aggregate writer.

A study row holds the study's match columns, its attributes (those of the first instance,
filled in by later ones), ModalitiesInStudy and SOPClassesInStudy as value sets, and its
counts (PS3.18 10.6.3); a series row likewise. SQLite and PostgreSQL differ in how they lock
and batch, never in what these rows hold: both build them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from dicomweb_server.domain.query import fold_for_fuzzy
from dicomweb_server.domain.records import InstanceRecord, bulk_to_json, pixel_to_json
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.rows import merge_attributes

__all__ = [
    "INT4_MAX",
    "INT4_MIN",
    "SERIES_TEXT_COLUMNS",
    "STUDY_TEXT_COLUMNS",
    "StudySets",
    "add_to_set",
    "as_int",
    "as_text",
    "instance_row",
    "merged_series_attributes",
    "merged_study",
    "new_series_row",
    "new_study_row",
]

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1  # integer columns (PostgreSQL's, and SQLite's too)

STUDY_TEXT_COLUMNS = (
    "patient_id",
    "patient_name",
    "issuer_of_patient_id",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "referring_physician_name",
    "study_description",
)

SERIES_TEXT_COLUMNS = (
    "modality",
    "series_description",
    "performed_procedure_step_start_date",
    "performed_procedure_step_start_time",
    "requested_procedure_id",
    "scheduled_procedure_step_id",
    "body_part_examined",
    "protocol_name",
    "manufacturer",
    "manufacturer_model_name",
    "station_name",
    "institution_name",
)

# (attributes, ModalitiesInStudy, SOPClassesInStudy) of a study row.
StudySets = tuple[bytes, str, str]


def as_text(value: str | int | None) -> str | None:
    """A value for a text column; text cannot hold NUL (PostgreSQL), which never matches."""
    return None if value is None else str(value).replace("\x00", "")


def as_int(value: str | int | None) -> int | None:
    """A value for an integer column; out of int4 range it cannot be matched, so not stored."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if INT4_MIN <= number <= INT4_MAX else None


def _fold(value: str | int | None) -> str | None:
    return None if value is None else as_text(fold_for_fuzzy(str(value)))


def add_to_set(joined: str, value: str | int | None) -> str:
    """Add `value` to a backslash-joined sorted set (DICOM's multi-value separator)."""
    items = {v for v in joined.split("\\") if v}
    if value:
        items.add(str(value).replace("\x00", ""))
    return "\\".join(sorted(items))


def _study_sets(records: Sequence[InstanceRecord], start: StudySets) -> StudySets:
    attributes, modalities, sop_classes = start
    for record in records:
        attributes = merge_attributes(attributes, record.study_attributes)
        modalities = add_to_set(modalities, record.series_columns.get("modality"))
        sop_classes = add_to_set(sop_classes, record.sop_class_uid)
    return attributes, modalities, sop_classes


def new_study_row(site: str, records: Sequence[InstanceRecord], new_series: int) -> dict[str, Any]:
    """The row of a study these records (of one study) create, counted in."""
    first = records[0]
    columns = first.study_columns
    attributes, modalities, sop_classes = _study_sets(
        records, (orjson.dumps(first.study_attributes), "", "")
    )
    return {
        "site": site,
        "study_instance_uid": first.study_instance_uid,
        **{column: as_text(columns.get(column)) for column in STUDY_TEXT_COLUMNS},
        "patient_name_fold": _fold(columns.get("patient_name")),
        "referring_physician_name_fold": _fold(columns.get("referring_physician_name")),
        "modalities_in_study": modalities,
        "sop_classes_in_study": sop_classes,
        "number_of_series": new_series,
        "number_of_instances": len(records),
        "attributes": attributes,
    }


def merged_study(stored: StudySets, records: Sequence[InstanceRecord]) -> StudySets:
    """A study row's attributes and value sets with these records added (PS3.18 10.6.3)."""
    attributes, modalities, sop_classes = stored
    if isinstance(attributes, str):
        attributes = attributes.encode()
    return _study_sets(records, (attributes, modalities or "", sop_classes or ""))


def new_series_row(site: str, records: Sequence[InstanceRecord]) -> dict[str, Any]:
    """The row of a series these records (of one series) create, counted in."""
    first = records[0]
    columns = first.series_columns
    return {
        "site": site,
        "study_instance_uid": first.study_instance_uid,
        "series_instance_uid": first.series_instance_uid,
        **{column: as_text(columns.get(column)) for column in SERIES_TEXT_COLUMNS},
        "series_number": as_int(columns.get("series_number")),
        "number_of_instances": len(records),
        "attributes": merged_series_attributes(orjson.dumps(first.series_attributes), records),
    }


def merged_series_attributes(stored: bytes | str, records: Sequence[InstanceRecord]) -> bytes:
    """A series row's attributes with these records' added."""
    merged = stored if isinstance(stored, bytes) else stored.encode()
    for record in records:
        merged = merge_attributes(merged, record.series_attributes)
    return merged


def instance_row(site: str, new: NewInstance) -> dict[str, Any]:
    """The instance row, column by column."""
    record = new.record
    return {
        "site": site,
        "study_instance_uid": record.study_instance_uid,
        "series_instance_uid": record.series_instance_uid,
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "instance_number": as_int(record.instance_columns.get("instance_number")),
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "blob_key": new.blob_key,
        "size": new.size,
        "digest": new.digest,
        "number_of_frames": record.number_of_frames,
        "pixel": pixel_to_json(record.pixel),
        "bulk": bulk_to_json(record.bulk),
        "attributes": orjson.dumps(record.instance_attributes),
        "metadata": record.metadata,
    }
