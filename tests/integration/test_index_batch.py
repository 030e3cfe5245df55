"""`add_instances` (index/batch.py) on every index: the same outcomes and rows as one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from index_cases import Built, InstanceFactory
from pydicom.uid import generate_uid

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import parse_query
from dicomweb_server.index.base import AddOutcome, InstanceIndex
from dicomweb_server.index.batch import BatchInstanceIndex, NewInstance, add_instances
from dicomweb_server.index.postgres import PostgresInstanceIndex
from dicomweb_server.index.sqlite import SqliteInstanceIndex

ONE_BY_ONE, BATCHED = "one-by-one", "batched"


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[InstanceIndex]:
    opened: InstanceIndex
    if request.param == "sqlite":
        opened = await SqliteInstanceIndex.open(tmp_path / "index.sqlite")
    else:
        opened = await PostgresInstanceIndex.open(
            request.getfixturevalue("pg_database_url"), max_size=4
        )
    yield opened
    await opened.close()


def _new(built: Built) -> NewInstance:
    return NewInstance(built.record, built.blob_key, built.size, built.digest)


async def _both(index: InstanceIndex, batch: list[Built]) -> list[AddOutcome]:
    """Add `batch` one by one in one site and as a batch in another; the outcomes must agree."""
    alone = [
        await index.add_instance(ONE_BY_ONE, b.record, b.blob_key, b.size, b.digest) for b in batch
    ]
    together = await add_instances(index, BATCHED, [_new(b) for b in batch])
    assert together == alone
    return together


async def _rows(index: InstanceIndex, site: str) -> dict[Level, list[dict[str, Any]]]:
    found = {}
    for level in Level:
        page = await index.search(parse_query([("limit", "1000")], level, site, None, None))
        found[level] = sorted(page.rows, key=repr)
    return found


async def test_indexes_add_batches(index: InstanceIndex) -> None:
    assert isinstance(index, BatchInstanceIndex)


async def test_batch_outcomes_and_rows_match_one_by_one(
    index: InstanceIndex, factory: InstanceFactory
) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    series_1, series_2, series_3 = generate_uid(), generate_uid(), generate_uid()
    kept = factory.make(study_a, series_1, patient_name="Kept^One")
    assert await _both(index, [kept]) == [AddOutcome.CREATED]

    clash = factory.make(study_a, series_1, kept.sop, patient_name="Other^Content")
    repeat = factory.make(study_a, series_2, modality="MR")
    outcomes = await _both(
        index,
        [
            factory.make(study_a, series_1, instance_number=7),
            kept,  # stored already, same bytes: IDENTICAL
            clash,  # stored already, other bytes: CONFLICT
            repeat,  # a new series, modality MR joins the study's set
            factory.make(study_b, series_3, modality="NM"),  # a new study
            repeat,  # repeated within the batch
            factory.make(study_a, series_2, modality="MR", series_description="second"),
        ],
    )
    new, same, clash_ = AddOutcome.CREATED, AddOutcome.IDENTICAL, AddOutcome.CONFLICT
    assert outcomes == [new, same, clash_, new, new, same, new]
    outcomes = await _both(
        index,
        [
            factory.make(study_b, series_1),  # series 1 is in study A: CONFLICT
            factory.make(study_b, series_3, instance_number=2),
            factory.make(study_b, series_1),
        ],
    )
    assert outcomes == [clash_, new, clash_]
    assert await _rows(index, BATCHED) == await _rows(index, ONE_BY_ONE)


async def test_batch_putting_one_series_in_two_studies_matches_one_by_one(
    index: InstanceIndex, factory: InstanceFactory
) -> None:
    series = generate_uid()
    first, second = generate_uid(), generate_uid()
    outcomes = await _both(
        index,
        [
            factory.make(first, series),
            factory.make(second, series),
            factory.make(first, series),
        ],
    )
    assert outcomes == [AddOutcome.CREATED, AddOutcome.CONFLICT, AddOutcome.CREATED]
    assert await _rows(index, BATCHED) == await _rows(index, ONE_BY_ONE)


@pytest.fixture
def factory(tmp_path: Path) -> InstanceFactory:
    return InstanceFactory(tmp_path / "instances")
