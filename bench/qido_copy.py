"""The QIDO corpus written into PostgreSQL by COPY: 10 million instances in minutes (issue 22).

`load_index` stores through the index's add path, a transaction per 50 instances, at about
3,000 instances a second: an hour for 10 million. This loader writes the same rows with COPY.
Each study's instance, series and study rows are built by the functions the add path itself
uses (`dicomweb_server.index.aggregates`) from the same templated records, so a study loaded
here holds what storing its instances one by one would have left (a test compares the two,
column by column). Only what no search reads is left out: the events outbox (`events`,
`study_activity`), whose rows announce stores to subscribers.

The rows of a chunk of studies are built in a thread while the previous chunk is copied, one
transaction per chunk, so an interrupted load leaves whole studies only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

from bench.qido_corpus import (
    QidoInstance,
    QidoSizes,
    QidoTemplate,
    checked_template,
    iter_instances,
    new_instance,
)
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.aggregates import instance_row, new_series_row, new_study_row

__all__ = ["copy_index", "settle"]

_TABLES = ("instances", "series", "studies")
Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _columns(template: QidoTemplate) -> tuple[tuple[str, ...], ...]:
    """The column names of each table's rows, in `_TABLES` order."""
    item = next(iter_instances(QidoSizes(studies=1, instances_per_series=1)))
    new = new_instance(template, item)
    return (
        tuple(instance_row(item.site, new)),
        tuple(new_series_row(item.site, [new.record])),
        tuple(new_study_row(item.site, [new.record], 1)),
    )


def _study_rows(template: QidoTemplate, items: list[QidoInstance], out: Rows) -> None:
    """Append one study's rows (its items in corpus order) to `out`."""
    site = items[0].site
    records: list[InstanceRecord] = []
    series = 0
    for _, group in itertools.groupby(items, key=lambda item: item.series):
        in_series = []
        for item in group:
            new = new_instance(template, item)
            out[0].append(tuple(instance_row(site, new).values()))
            in_series.append(new.record)
        out[1].append(tuple(new_series_row(site, in_series).values()))
        records += in_series
        series += 1
    out[2].append(tuple(new_study_row(site, records, series).values()))


def _chunk(template: QidoTemplate, studies: Iterator[list[QidoInstance]], count: int) -> Rows:
    out: Rows = ([], [], [])
    for items in itertools.islice(studies, count):
        _study_rows(template, items, out)
    return out


async def copy_index(
    database_url: str,
    sizes: QidoSizes,
    *,
    first_study: int = 0,
    end_study: int | None = None,
    chunk: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """COPY studies [first_study, end_study) of the corpus into the index at `database_url`
    (migrated, its sites added: `add_corpus_sites`); return how many instances were written.
    The studies must not be in the index yet (COPY stops at the first duplicate key)."""
    import asyncpg

    template = checked_template()
    columns = _columns(template)
    end = sizes.studies if end_study is None else min(end_study, sizes.studies)
    studies = (
        list(items)
        for _, items in itertools.groupby(
            iter_instances(sizes, first_study), key=lambda item: item.study
        )
    )
    remaining = max(0, end - first_study)
    written = 0
    conn = await asyncpg.connect(database_url)
    try:
        next_rows = asyncio.create_task(
            asyncio.to_thread(_chunk, template, studies, min(chunk, remaining))
        )
        while remaining > 0:
            rows = await next_rows
            remaining -= len(rows[2])
            if not rows[2]:
                break
            if remaining > 0:  # the next chunk is built while this one is copied
                next_rows = asyncio.create_task(
                    asyncio.to_thread(_chunk, template, studies, min(chunk, remaining))
                )
            async with conn.transaction():
                for table, names, records in zip(_TABLES, columns, rows, strict=True):
                    await conn.copy_records_to_table(table, records=records, columns=names)
            written += len(rows[0])
            if progress is not None:
                progress(written)
    finally:
        if not next_rows.done():
            next_rows.cancel()
        await conn.close()
    return written


async def settle(database_url: str) -> None:
    """After a bulk load, what a DBA would do before opening for business, so that nothing
    the load left behind is measured as the server's cost: VACUUM (ANALYZE) the index tables
    (planner statistics and the visibility map current, so autovacuum does not start on
    them), CHECKPOINT, then flush the kernel's dirty pages (gigabytes of them after a large
    load, which would otherwise throttle every write the server makes while they drain)."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(_TABLES)}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    await asyncio.to_thread(os.sync)
