"""Issue 22 item 4: the scale run's COPY loader writes exactly the rows the add path writes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import services

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.qido_copy import copy_index, settle
from bench.qido_corpus import QidoSizes, add_corpus_sites, load_index
from dicomweb_server.index.postgres import PostgresInstanceIndex

# Set per row by the database, not by what was stored: its own numbering and clock.
_UNCOMPARED = {"id", "version", "received"}


@pytest.fixture
def second_database_url(postgres_url: str) -> Iterator[str]:
    url = services.create_database(postgres_url)
    yield url
    services.drop_database(postgres_url, url)


async def _rows(url: str, table: str, key: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY site, {key}")
    finally:
        await conn.close()
    return [{k: v for k, v in row.items() if k not in _UNCOMPARED} for row in rows]


async def _load(url: str, sizes: QidoSizes, *, copy: bool, end: int) -> int:
    index = await PostgresInstanceIndex.open(url, max_size=4)
    try:
        await add_corpus_sites(index, sizes)
        if not copy:
            return await load_index(index, sizes, concurrency=2, batch=3)
        # In two calls and small chunks: a load continues where the previous one ended.
        first = await copy_index(url, sizes, end_study=end, chunk=2)
        return first + await copy_index(url, sizes, first_study=end, chunk=3)
    finally:
        await index.close()


async def test_copy_loader_writes_the_rows_of_the_add_path(
    pg_database_url: str, second_database_url: str
) -> None:
    # Three sites, one to four series a study, three instances a series.
    sizes = QidoSizes(studies=11, instances_per_series=3, sites=3)
    assert await _load(pg_database_url, sizes, copy=False, end=0) == sizes.instances
    assert await _load(second_database_url, sizes, copy=True, end=5) == sizes.instances
    await settle(second_database_url)
    for table, key in (
        ("studies", "study_instance_uid"),
        ("series", "series_instance_uid"),
        ("instances", "sop_instance_uid"),
    ):
        added = await _rows(pg_database_url, table, key)
        copied = await _rows(second_database_url, table, key)
        assert len(copied) == len(added) > 0
        for expected, got in zip(added, copied, strict=True):
            assert got == expected, table
    # Study versions still come from the trigger: every study row got its own.
    conn = await asyncpg.connect(second_database_url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM studies")]
    finally:
        await conn.close()
    assert len(set(versions)) == sizes.studies and min(versions) > 0
