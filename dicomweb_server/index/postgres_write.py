"""PostgreSQL: add a batch of instances in one transaction, with a few statements per batch.

Locks are taken in the order `add_instance` takes them, level by level: every instance row
(by SOP Instance UID), then every series row (by Series Instance UID), then every study row,
each level sorted, so concurrent batches and single adds wait for each other but never in a
cycle. Counters and value sets are rewritten under the row lock, as in `add_instance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.aggregates import (
    instance_row,
    merged_series_attributes,
    new_series_row,
)
from dicomweb_server.index.base import AddOutcome
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.events_postgres import append_created
from dicomweb_server.index.postgres_add import _RowVanishedError, count_into_study

if TYPE_CHECKING:
    from dicomweb_server.index.postgres import Connection

__all__ = ["add_batch"]


@dataclass(slots=True)
class _SeriesGroup:
    """The batch's created instances of one series, and what they claim about it."""

    study_instance_uid: str
    positions: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


async def add_batch(
    conn: Connection, site: str, instances: Sequence[NewInstance]
) -> list[AddOutcome | None]:
    """Add each instance whose SOP Instance UID is first of its kind in the batch.

    Repeats within the batch get None: the caller adds them afterwards, each alone, so they
    see this batch's rows as `add_instance` would have. So does every instance of a batch
    that puts one series in two studies (the order of the adds decides which one wins). Run
    inside a READ COMMITTED
    transaction; raises what `add_instance` raises on collisions (the caller retries).
    """
    outcomes: list[AddOutcome | None] = [None] * len(instances)
    first: dict[str, int] = {}
    claims: dict[str, str] = {}
    for position, new in enumerate(instances):
        record = new.record
        first.setdefault(record.sop_instance_uid, position)
        if claims.setdefault(record.series_instance_uid, record.study_instance_uid) != (
            record.study_instance_uid
        ):
            return outcomes  # one series in two studies: only one-by-one adds judge that right
    order = sorted(first.values(), key=lambda p: instances[p].record.sop_instance_uid)
    inserted = await _insert_instances(conn, site, [instances[p] for p in order])
    taken = [p for p in order if instances[p].record.sop_instance_uid not in inserted]
    if taken:
        await _judge_taken(conn, site, instances, taken, outcomes)
    groups: dict[str, _SeriesGroup] = {}
    for position in order:
        record = instances[position].record
        row_id = inserted.get(record.sop_instance_uid)
        if row_id is None:
            continue
        group = groups.setdefault(
            record.series_instance_uid, _SeriesGroup(record.study_instance_uid)
        )
        group.positions.append(position)
        group.ids.append(row_id)
    new_series: dict[str, int] = {}
    for series_uid in sorted(groups):
        group = groups[series_uid]
        records = [instances[p].record for p in sorted(group.positions)]
        created = await _count_into_series(conn, site, series_uid, records)
        if created is None:
            for position in group.positions:
                outcomes[position] = AddOutcome.CONFLICT
            await conn.execute("DELETE FROM instances WHERE id = ANY($1::bigint[])", group.ids)
            continue
        for position in group.positions:
            outcomes[position] = AddOutcome.CREATED
        study = group.study_instance_uid
        new_series[study] = new_series.get(study, 0) + (1 if created else 0)
    by_study: dict[str, list[InstanceRecord]] = {}
    for position, new in enumerate(instances):
        if outcomes[position] is AddOutcome.CREATED:
            by_study.setdefault(new.record.study_instance_uid, []).append(new.record)
    for study in sorted(by_study):
        await count_into_study(conn, site, by_study[study], new_series.get(study, 0))
    # The outbox, last (it holds the event counter until COMMIT): in the order sent.
    await append_created(
        conn,
        site,
        [
            (new.record, inserted[new.record.sop_instance_uid])
            for position, new in enumerate(instances)
            if outcomes[position] is AddOutcome.CREATED
        ],
    )
    return outcomes


async def _insert_instances(
    conn: Connection, site: str, instances: list[NewInstance]
) -> dict[str, int]:
    """Insert the rows (in the given order); {SOP Instance UID: id} of those not yet taken."""
    rows_to_insert = [instance_row(site, new) for new in instances]
    columns = list(rows_to_insert[0])
    width = len(columns)
    values = []
    args: list[Any] = []
    for index, row in enumerate(rows_to_insert):
        marks = ", ".join(f"${index * width + n}" for n in range(1, width + 1))
        values.append(f"({marks})")
        args.extend(row.values())
    rows = await conn.fetch(
        f"INSERT INTO instances ({', '.join(columns)}) VALUES"
        f" {', '.join(values)} ON CONFLICT (site, sop_instance_uid) DO NOTHING"
        " RETURNING sop_instance_uid, id",
        *args,
    )
    return {row[0]: row[1] for row in rows}


async def _judge_taken(
    conn: Connection,
    site: str,
    instances: Sequence[NewInstance],
    positions: list[int],
    outcomes: list[AddOutcome | None],
) -> None:
    """Taken SOP Instance UIDs (committed by others): IDENTICAL when the same place and bytes."""
    rows = await conn.fetch(
        "SELECT sop_instance_uid, study_instance_uid, series_instance_uid, digest"
        " FROM instances WHERE site = $1 AND sop_instance_uid = ANY($2::text[])",
        site,
        [instances[p].record.sop_instance_uid for p in positions],
    )
    existing = {row[0]: (row[1], row[2], row[3]) for row in rows}
    for position in positions:
        new = instances[position]
        record = new.record
        found = existing.get(record.sop_instance_uid)
        if found is None:  # only if it was deleted in between; the caller's retry inserts
            raise _RowVanishedError("instance")
        same = found == (record.study_instance_uid, record.series_instance_uid, new.digest)
        outcomes[position] = AddOutcome.IDENTICAL if same else AddOutcome.CONFLICT


async def _count_into_series(
    conn: Connection, site: str, series_uid: str, records: list[InstanceRecord]
) -> bool | None:
    """Count `records` into their series (created if new): True created, None other study."""
    study = records[0].study_instance_uid
    update = (
        "UPDATE series SET number_of_instances = number_of_instances + $4"
        " WHERE site = $1 AND series_instance_uid = $2 AND study_instance_uid = $3"
        " RETURNING id, attributes"
    )
    update_args = (site, series_uid, study, len(records))
    row = await conn.fetchrow(update, *update_args)
    if row is None:
        columns = new_series_row(site, records)
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        inserted = await conn.fetchval(
            f"INSERT INTO series ({', '.join(columns)}) VALUES ({marks})"
            " ON CONFLICT (site, series_instance_uid) DO NOTHING RETURNING id",
            *columns.values(),
        )
        if inserted is not None:
            return True
        # Someone committed the series meanwhile: lock it and see which study it is in.
        owner = await conn.fetchval(
            "SELECT study_instance_uid FROM series WHERE site = $1 AND series_instance_uid = $2"
            " FOR UPDATE",
            site,
            series_uid,
        )
        if owner is None:
            raise _RowVanishedError("series")
        if owner != study:
            return None
        row = await conn.fetchrow(update, *update_args)
        if row is None:
            raise _RowVanishedError("series")
    merged = merged_series_attributes(row[1], records)
    if merged != row[1]:
        await conn.execute("UPDATE series SET attributes = $1 WHERE id = $2", merged, row[0])
    return False
