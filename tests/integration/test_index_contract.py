"""The InstanceIndex contract, run against every implementation (SQLite file, PostgreSQL).

Records come from real Part 10 files (pydicom's test data with fresh UIDs) via parse_part10.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from index_cases import Built, InstanceFactory, TcpProxy
from pydicom.uid import generate_uid

import dicomweb_server
from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.identifiers import InstanceKey, SeriesKey, StudyKey
from dicomweb_server.domain.lifecycle import DeleteTarget, Hold, StudyFacts
from dicomweb_server.domain.query import parse_query
from dicomweb_server.errors import BackendUnavailableError
from dicomweb_server.index import ordered
from dicomweb_server.index.aggregates import instance_row, new_series_row, new_study_row
from dicomweb_server.index.base import (
    AddOutcome,
    InstanceIndex,
    Lifecycle,
    Rejection,
    SearchPage,
)
from dicomweb_server.index.batch import NewInstance
from dicomweb_server.index.postgres import PostgresInstanceIndex, migrate
from dicomweb_server.index.sqlite import SqliteInstanceIndex

SITE = "default"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
NM_CLASS = "1.2.840.10008.5.1.4.1.1.7"

_PG_MIGRATIONS = Path(dicomweb_server.__file__).parent / "index" / "migrations" / "postgres"


# --- fixtures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One implementation; `open` opens another index on the same store (another process)."""

    name: str
    open: Callable[[], Awaitable[InstanceIndex]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "index.sqlite"
        return Backend("sqlite", lambda: SqliteInstanceIndex.open(path))
    url = request.getfixturevalue("pg_database_url")
    return Backend("postgres", lambda: PostgresInstanceIndex.open(url, max_size=4))


@pytest_asyncio.fixture
async def index(backend: Backend) -> AsyncIterator[InstanceIndex]:
    opened = await backend.open()
    yield opened
    await opened.close()


@pytest.fixture
def factory(tmp_path: Path) -> InstanceFactory:
    return InstanceFactory(tmp_path / "instances")


def key_of(built: Built, site: str = SITE) -> InstanceKey:
    r = built.record
    return InstanceKey(site, r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)


async def add(index: InstanceIndex, built: Built, site: str = SITE) -> AddOutcome:
    return await index.add_instance(site, built.record, built.blob_key, built.size, built.digest)


async def search(
    index: InstanceIndex,
    level: Level,
    params: list[tuple[str, str]] | None = None,
    study: str | None = None,
    series: str | None = None,
    site: str = SITE,
) -> SearchPage:
    return await index.search(parse_query(params or [], level, site, study, series))


def uids(page: SearchPage, tag: str) -> list[str]:
    return [row[tag]["Value"][0] for row in page.rows]


def value(row: dict[str, Any], tag: str) -> Any:
    return row[tag].get("Value", [])


# --- a small catalogue: three studies, five series, ten instances --------------------------------


@dataclass
class Catalogue:
    """What `catalogue` stored, in insertion order."""

    study_a: str
    study_b: str
    study_c: str
    series_a1: str
    series_a2: str
    series_b1: str
    series_c1: str
    series_c2: str
    a1: list[Built]  # InstanceNumber 3, 1, 2, none (inserted in that order)
    a2: list[Built]
    b1: list[Built]
    c1: list[Built]
    c2: list[Built]

    @property
    def all(self) -> list[Built]:
        return self.a1 + self.a2 + self.b1 + self.c1 + self.c2


@pytest_asyncio.fixture
async def catalogue(index: InstanceIndex, factory: InstanceFactory) -> Catalogue:
    sa, sb, sc = generate_uid(), generate_uid(), generate_uid()
    se_a1, se_a2, se_b1, se_c1, se_c2 = (generate_uid() for _ in range(5))
    pa: dict[str, Any] = {"patient_name": "DOE^JOHN", "patient_id": "P_1", "study_date": "20200115"}
    pa["accession_number"] = "A%1"
    pb: dict[str, Any] = {"patient_name": "DOE^JANE", "patient_id": "PX1", "study_date": "20200220"}
    pb["accession_number"] = "AB1"
    pc: dict[str, Any] = {"patient_name": "Smïth^Ann", "patient_id": "Q9", "study_date": "20210301"}
    pc["accession_number"] = "C1"
    cat = Catalogue(
        study_a=sa,
        study_b=sb,
        study_c=sc,
        series_a1=se_a1,
        series_a2=se_a2,
        series_b1=se_b1,
        series_c1=se_c1,
        series_c2=se_c2,
        a1=[
            factory.make(sa, se_a1, instance_number=n, series_number=1, **pa)
            for n in (3, 1, 2, None)
        ],
        # The series' first instance lacks SeriesDescription; the second adds it.
        a2=[
            factory.make(sa, se_a2, instance_number=1, series_number=2, **pa),
            factory.make(
                sa, se_a2, instance_number=2, series_number=2, series_description="late", **pa
            ),
        ],
        b1=[factory.make(sb, se_b1, modality="MR", instance_number=n, **pb) for n in (1, 2)],
        c1=[factory.make(sc, se_c1, series_number=1, **pc)],
        c2=[factory.make(sc, se_c2, modality="NM", series_number=2, **pc)],
    )
    for built in cat.all:
        assert await add(index, built) is AddOutcome.CREATED
    return cat


# --- add_instance --------------------------------------------------------------------------------


async def test_add_reports_created_identical_conflict(
    index: InstanceIndex, factory: InstanceFactory
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = factory.make(study, series, sop)
    assert await add(index, first) is AddOutcome.CREATED
    assert await add(index, first) is AddOutcome.IDENTICAL
    # Same UIDs, different content: the stored copy is kept.
    changed = factory.make(study, series, sop, series_description="changed")
    assert changed.digest != first.digest
    assert await add(index, changed) is AddOutcome.CONFLICT
    # Same SOP Instance UID in another series (PS3.4 C.6.2.1: one place per UID).
    assert await add(index, factory.make(study, generate_uid(), sop)) is AddOutcome.CONFLICT
    # A new instance naming the existing series under another study.
    other_study = generate_uid()
    stray = factory.make(other_study, series)
    assert await add(index, stray) is AddOutcome.CONFLICT

    stored = await index.get_instance(key_of(first))
    assert stored is not None and stored.digest == first.digest
    assert await index.get_instance(key_of(stray)) is None
    assert not await index.series_exists(SeriesKey(SITE, other_study, series))
    studies = await search(index, Level.STUDY)
    assert uids(studies, "0020000D") == [study]
    assert value(studies.rows[0], "00201206") == [1]
    assert value(studies.rows[0], "00201208") == [1]
    assert [k async for k in index.iter_blob_keys()] == [first.blob_key]


async def test_sites_are_separate(index: InstanceIndex, factory: InstanceFactory) -> None:
    built = factory.make(generate_uid(), generate_uid())
    assert await add(index, built) is AddOutcome.CREATED
    assert await add(index, built, site="other") is AddOutcome.CREATED
    assert await add(index, built, site="other") is AddOutcome.IDENTICAL
    assert len((await search(index, Level.INSTANCE, site="other")).rows) == 1
    assert (await search(index, Level.STUDY, site="nowhere")).rows == []
    assert await index.get_instance(key_of(built, "other")) is not None
    assert await index.get_instance(key_of(built, "nowhere")) is None


async def test_aggregates(index: InstanceIndex, catalogue: Catalogue) -> None:
    c = catalogue
    studies = {row["0020000D"]["Value"][0]: row for row in (await search(index, Level.STUDY)).rows}
    counts = {
        uid: (value(row, "00201206"), value(row, "00201208"), value(row, "00080061"))
        for uid, row in studies.items()
    }
    assert counts == {
        c.study_a: ([2], [6], ["CT"]),
        c.study_b: ([1], [2], ["MR"]),
        c.study_c: ([2], [2], ["CT", "NM"]),
    }
    assert value(studies[c.study_a], "00080062") == [CT_CLASS]
    assert value(studies[c.study_c], "00080062") == sorted([CT_CLASS, NM_CLASS])
    assert value(studies[c.study_a], "00080056") == ["ONLINE"]
    series = {row["0020000E"]["Value"][0]: row for row in (await search(index, Level.SERIES)).rows}
    assert {uid: value(row, "00201209") for uid, row in series.items()} == {
        c.series_a1: [4],
        c.series_a2: [2],
        c.series_b1: [2],
        c.series_c1: [1],
        c.series_c2: [1],
    }
    # Series attributes keep the first instance's values and gain what later ones add.
    assert value(series[c.series_a2], "0008103E") == ["late"]
    assert value(series[c.series_a2], "00201208") == [6]  # study aggregates on series rows


# --- search (PS3.18 10.6, PS3.4 C.2.2.2 matching) -------------------------------------------


STUDY_CASES = [
    ([], "abc"),
    ([("PatientID", "P_1")], "a"),  # single value
    ([("PatientID", "P_*")], "a"),  # '_' is literal, not LIKE's any-character
    ([("PatientID", "P?1")], "ab"),  # '?' is one character
    ([("AccessionNumber", "A%*")], "a"),  # '%' is literal
    ([("AccessionNumber", "A*")], "ab"),
    ([("PatientName", "DOE*")], "ab"),
    ([("PatientName", "doe*")], ""),  # case-sensitive unless fuzzy
    ([("PatientName", "doe*"), ("fuzzymatching", "true")], "ab"),
    ([("PatientName", "smith^ann"), ("fuzzymatching", "true")], "c"),  # accents folded
    ([("PatientName", "Smïth^Ann")], "c"),
    ([("StudyDate", "20200101-20200229")], "ab"),  # closed range
    ([("StudyDate", "-20200131")], "a"),
    ([("StudyDate", "20200201-")], "bc"),
    ([("StudyDate", "20210301")], "c"),
    ([("ModalitiesInStudy", "MR")], "b"),
    ([("ModalitiesInStudy", "NM,MR")], "bc"),  # list
    ([("ModalitiesInStudy", "N*")], "c"),
]


async def test_search_studies(
    index: InstanceIndex, catalogue: Catalogue, subtests: pytest.Subtests
) -> None:
    by_letter = {"a": catalogue.study_a, "b": catalogue.study_b, "c": catalogue.study_c}
    for params, expected in STUDY_CASES:
        with subtests.test(params=params):
            page = await search(index, Level.STUDY, params)
            assert uids(page, "0020000D") == [by_letter[x] for x in expected]
            assert page.more is False


async def test_search_studies_by_uid_list(index: InstanceIndex, catalogue: Catalogue) -> None:
    c = catalogue
    params = [("StudyInstanceUID", f"{c.study_c},{c.study_a}")]
    assert uids(await search(index, Level.STUDY, params), "0020000D") == [c.study_a, c.study_c]


SERIES_CASES = [
    ([], None, ["a1", "a2", "b1", "c1", "c2"]),
    ([("Modality", "CT")], None, ["a1", "a2", "c1"]),
    ([("Modality", "C?")], None, ["a1", "a2", "c1"]),
    ([("Modality", "CT")], "c", ["c1"]),  # scoped by study
    ([("SeriesNumber", "2")], None, ["a2", "c2"]),
    ([("PatientID", "Q9")], None, ["c1", "c2"]),  # a study key at series level
    ([], "b", ["b1"]),
]


async def test_search_series(
    index: InstanceIndex, catalogue: Catalogue, subtests: pytest.Subtests
) -> None:
    c = catalogue
    studies = {"a": c.study_a, "b": c.study_b, "c": c.study_c}
    series = {"a1": c.series_a1, "a2": c.series_a2, "b1": c.series_b1}
    series |= {"c1": c.series_c1, "c2": c.series_c2}
    for params, study, expected in SERIES_CASES:
        with subtests.test(params=params, study=study):
            page = await search(index, Level.SERIES, params, studies[study] if study else None)
            assert uids(page, "0020000E") == [series[x] for x in expected]


async def test_search_instances(index: InstanceIndex, catalogue: Catalogue) -> None:
    c = catalogue
    everything = await search(index, Level.INSTANCE)
    assert uids(everything, "00080018") == [b.sop for b in c.all]
    scoped = await search(index, Level.INSTANCE, [], c.study_a, c.series_a1)
    assert uids(scoped, "00080018") == [b.sop for b in c.a1]
    numbered = await search(index, Level.INSTANCE, [("InstanceNumber", "2")], c.study_a)
    assert uids(numbered, "00080018") == [c.a1[2].sop, c.a2[1].sop]
    mr = await search(index, Level.INSTANCE, [("SOPClassUID", MR_CLASS)])
    assert uids(mr, "00080018") == [b.sop for b in c.b1]
    listed = [("SOPInstanceUID", f"{c.c2[0].sop},{c.a1[0].sop}")]
    assert uids(await search(index, Level.INSTANCE, listed), "00080018") == [
        c.a1[0].sop,
        c.c2[0].sop,
    ]
    # IS allows 12 digits; beyond 32 bits nothing can match (and nothing may fail).
    huge = [("InstanceNumber", "999999999999")]
    assert (await search(index, Level.INSTANCE, huge)).rows == []
    # The series under the wrong study: nothing, whichever way round.
    assert (await search(index, Level.INSTANCE, [], c.study_b, c.series_a1)).rows == []
    assert (await search(index, Level.SERIES, [], generate_uid())).rows == []
    row = scoped.rows[0]
    assert value(row, "00201209") == [4]  # series and study aggregates ride along
    assert value(row, "00080016") == [CT_CLASS]


async def test_search_pages_deterministically(index: InstanceIndex, catalogue: Catalogue) -> None:
    c = catalogue
    first = await search(index, Level.STUDY, [("limit", "2")])
    assert uids(first, "0020000D") == [c.study_a, c.study_b] and first.more
    second = await search(index, Level.STUDY, [("limit", "2"), ("offset", "2")])
    assert uids(second, "0020000D") == [c.study_c] and not second.more
    exact = await search(index, Level.STUDY, [("limit", "3")])
    assert len(exact.rows) == 3 and not exact.more
    past = await search(index, Level.STUDY, [("offset", "3")])
    assert past.rows == [] and not past.more

    seen: list[str] = []
    offset = 0
    while True:
        page = await search(index, Level.INSTANCE, [("limit", "4"), ("offset", str(offset))])
        seen += uids(page, "00080018")
        offset += 4
        if not page.more:
            break
    assert seen == [b.sop for b in c.all]
    assert offset == 12


# --- lookups -------------------------------------------------------------------------------------


async def test_get_instance_metadata_and_bulk(index: InstanceIndex, catalogue: Catalogue) -> None:
    built = catalogue.a1[0]
    r = built.record
    stored = await index.get_instance(key_of(built))
    assert stored is not None
    assert stored.key == key_of(built)
    assert (stored.sop_class_uid, stored.transfer_syntax_uid) == (CT_CLASS, r.transfer_syntax_uid)
    assert (stored.blob_key, stored.size, stored.digest) == (
        built.blob_key,
        built.size,
        built.digest,
    )
    assert stored.number_of_frames == r.number_of_frames == 1
    assert stored.pixel == r.pixel and stored.pixel is not None

    assert await index.get_metadata(key_of(built)) == r.metadata
    (span,) = r.bulk
    assert await index.get_bulk_span(key_of(built), span.path) == (span.offset, span.length)
    assert await index.get_bulk_span(key_of(built), "00091001") is None

    elsewhere = InstanceKey(SITE, catalogue.study_b, r.series_instance_uid, r.sop_instance_uid)
    missing = InstanceKey(SITE, r.study_instance_uid, r.series_instance_uid, generate_uid())
    for key in (elsewhere, missing):
        assert await index.get_instance(key) is None
        assert await index.get_metadata(key) is None
        assert await index.get_bulk_span(key, span.path) is None


async def test_issue22_instances_asked_for_at_once(
    index: InstanceIndex, catalogue: Catalogue, factory: InstanceFactory
) -> None:
    """Many get_instance calls in one turn of the loop (a viewer's frames on several
    connections) answer exactly what each would alone; PostgreSQL asks once for them all."""
    other = factory.make(generate_uid(), generate_uid())
    assert await add(index, other, site="other") is AddOutcome.CREATED
    present = [key_of(built) for built in catalogue.all] + [key_of(other, "other")]
    r = catalogue.a1[0].record
    absent = [
        key_of(other),  # stored, but in the other site
        InstanceKey(SITE, catalogue.study_b, r.series_instance_uid, r.sop_instance_uid),
        InstanceKey(SITE, r.study_instance_uid, r.series_instance_uid, generate_uid()),
    ]
    asked = present + absent + present[:3]  # some twice
    batch = getattr(index, "_instance_rows", None)
    queries = 0 if batch is None else batch.queries
    found = await asyncio.gather(*(index.get_instance(key) for key in asked))
    alone = [await index.get_instance(key) for key in asked]
    assert found == alone
    assert [None if f is None else f.key for f in found] == [
        key if key in present else None for key in asked
    ]
    if batch is not None:  # PostgreSQL: one query for the gathered calls, one for each alone
        assert batch.queries - queries == 1 + len(asked)


async def test_iter_instances_and_metadata_order(
    index: InstanceIndex, catalogue: Catalogue
) -> None:
    c = catalogue
    study = StudyKey(SITE, c.study_a)
    # Series in storage order; within one, InstanceNumber ascending (none first).
    a1_order = [c.a1[3], c.a1[1], c.a1[2], c.a1[0]]
    expected = a1_order + c.a2
    assert [s.key async for s in index.iter_instances(study)] == [key_of(b) for b in expected]
    assert [m async for m in index.iter_metadata(study)] == [b.record.metadata for b in expected]
    in_series = [s.key.sop_instance_uid async for s in index.iter_instances(study, c.series_a2)]
    assert in_series == [b.sop for b in c.a2]
    assert [s async for s in index.iter_instances(StudyKey(SITE, generate_uid()))] == []
    assert [m async for m in index.iter_metadata(study, generate_uid())] == []


async def test_iter_instances_pages_through_a_long_series(
    index: InstanceIndex, factory: InstanceFactory
) -> None:
    """More instances than one keyset batch, stored out of order, come back in number order."""
    study, series = generate_uid(), generate_uid()
    numbers = list(range(70))  # more than one keyset batch (64)
    random.Random(7).shuffle(numbers)
    built = {n: factory.make(study, series, modality="CT-lean", instance_number=n) for n in numbers}
    for n in numbers:
        assert await add(index, built[n]) is AddOutcome.CREATED
    expected = [built[n] for n in range(70)]
    key = StudyKey(SITE, study)
    assert [s.key async for s in index.iter_instances(key)] == [key_of(b) for b in expected]
    metadata = [m async for m in index.iter_metadata(key, series)]
    assert metadata == [b.record.metadata for b in expected]


async def test_iter_pages_the_order_and_the_rows(
    index: InstanceIndex, factory: InstanceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order is found a page at a time and the rows fetched a batch at a time: with both
    smaller than a series, two series with unnumbered instances still come back in order."""
    monkeypatch.setattr(ordered, "_ORDER_PAGE", 7)
    monkeypatch.setattr(ordered, "_ITER_BATCH", 3)
    study, first, second = generate_uid(), generate_uid(), generate_uid()
    numbers: list[int | None] = [None, None, *range(10)]
    built: list[tuple[int, int | None, Built]] = []
    for place, series in enumerate((first, second)):
        shuffled = numbers[:]
        random.Random(place).shuffle(shuffled)
        for n in shuffled:
            made = factory.make(study, series, modality="CT-lean", instance_number=n)
            assert await add(index, made) is AddOutcome.CREATED
            built.append((place, n, made))
    # Unnumbered first (in storage order), then by number; the first-stored series first.
    expected = [b for _, _, b in sorted(built, key=lambda t: (t[0], -1 if t[1] is None else t[1]))]
    key = StudyKey(SITE, study)
    assert [s.key async for s in index.iter_instances(key)] == [key_of(b) for b in expected]
    in_second = [m async for m in index.iter_metadata(key, second)]
    assert in_second == [b.record.metadata for b in expected[len(numbers) :]]


async def test_list_instances_names_the_rows_a_document_holds(
    index: InstanceIndex, catalogue: Catalogue
) -> None:
    """list_instances: (row, digest) in iter order, None above `most`; metadata_by_row reads
    those rows, and a row deleted since is absent."""
    c = catalogue
    study = StudyKey(SITE, c.study_a)
    expected = [c.a1[3], c.a1[1], c.a1[2], c.a1[0], *c.a2]
    listed = await index.list_instances(study, None, 6)
    assert listed is not None
    assert [digest for _, digest in listed] == [b.digest for b in expected]
    assert await index.list_instances(study, None, 5) is None
    in_series = await index.list_instances(study, c.series_a2, 2)
    assert in_series == listed[4:]
    assert await index.list_instances(StudyKey(SITE, generate_uid()), None, 10) == []
    assert await index.list_instances(StudyKey("elsewhere", c.study_a), None, 10) == []
    rows = [row for row, _ in listed]
    found = await index.metadata_by_row(rows)
    assert [found[row] for row in rows] == [b.record.metadata for b in expected]
    assert isinstance(index, Lifecycle)
    gone = c.a2[0].record
    target = DeleteTarget(SITE, c.study_a, gone.series_instance_uid, (gone.sop_instance_uid,))
    await index.delete_instances(target, who="test", reason="test", now=time.time(), judge=_allow)
    after = await index.metadata_by_row(rows)
    assert rows[4] not in after and set(after) == set(rows) - {rows[4]}
    again = await index.list_instances(study, None, 6)
    assert again == listed[:4] + listed[5:]


def _allow(facts: StudyFacts, holds: list[Hold]) -> None:
    """A Judge that lets every delete through."""


async def test_issue22_study_version_changes_with_every_change_of_the_study(
    index: InstanceIndex, catalogue: Catalogue, factory: InstanceFactory
) -> None:
    """study_versions: a new number for every store, delete, rejection and restore in the
    study, none for a repeat store or another study's changes, never one used before."""
    c = catalogue
    assert isinstance(index, Lifecycle)
    study = StudyKey(SITE, c.study_a)
    other = StudyKey(SITE, c.study_b)

    async def version(key: StudyKey) -> int | None:
        return (await index.study_versions((key.site,), key.study_instance_uid)).get(key.site)

    assert await index.study_versions((SITE,), generate_uid()) == {}
    assert await index.study_versions(("elsewhere",), c.study_a) == {}
    assert await index.study_versions((), c.study_a) == {}
    assert list(await index.study_versions(("elsewhere", SITE), c.study_a)) == [SITE]
    seen: list[int] = []

    async def changed() -> None:
        now = await version(study)
        assert now is not None and now not in seen, (now, seen)
        seen.append(now)

    await changed()
    other_version = await version(other)
    assert other_version is not None and other_version not in seen
    assert await add(index, c.a1[0]) is AddOutcome.IDENTICAL
    assert await version(study) == seen[-1]
    added = factory.make(c.study_a, c.series_a2, instance_number=9, series_number=2)
    assert await add(index, added) is AddOutcome.CREATED
    await changed()
    batch = [factory.make(c.study_a, generate_uid(), series_number=7) for _ in range(2)]
    outcomes = await index.add_instances(
        SITE, [NewInstance(b.record, b.blob_key, b.size, b.digest) for b in batch]
    )
    assert outcomes == [AddOutcome.CREATED, AddOutcome.CREATED]
    await changed()
    assert await version(other) == other_version
    gone = added.record
    target = DeleteTarget(SITE, c.study_a, gone.series_instance_uid, (gone.sop_instance_uid,))
    await index.delete_instances(target, who="test", reason="test", now=time.time(), judge=_allow)
    await changed()
    rejected = c.a1[1].record
    references = ((rejected.series_instance_uid, rejected.sop_instance_uid),)
    await index.delete_instances(
        DeleteTarget(SITE, c.study_a, rejected.series_instance_uid, (rejected.sop_instance_uid,)),
        who="test",
        reason="rejected",
        now=time.time(),
        judge=_allow,
        rejection=Rejection("113001^DCM", None, references),
    )
    await changed()
    assert await index.restore_instances(SITE, c.study_a, gone.series_instance_uid) == 1
    await changed()
    await index.delete_instances(
        DeleteTarget(SITE, c.study_a), who="test", reason="test", now=time.time(), judge=_allow
    )
    assert await version(study) is None
    assert await index.restore_instances(SITE, c.study_a, None) >= 1
    await changed()
    assert await version(other) == other_version


async def test_issue22_change_count_moves_with_every_change_of_any_study(
    backend: Backend, index: InstanceIndex, catalogue: Catalogue, factory: InstanceFactory
) -> None:
    """change_count (SQLite): a new, higher number after every store, delete, rejection and
    restore, a whole study deleted included, as read by another index object (another
    process); the same number after a repeat store. PostgreSQL has none."""
    c = catalogue
    assert isinstance(index, Lifecycle)
    if backend.name == "postgres":
        assert await index.change_count() is None
        return
    other = await backend.open()
    try:
        seen = [await other.change_count()]

        async def moved() -> None:
            now = await other.change_count()
            assert now is not None and now > max(n for n in seen if n is not None), (now, seen)
            assert await index.change_count() == now
            seen.append(now)

        assert await add(index, c.a1[0]) is AddOutcome.IDENTICAL
        assert await other.change_count() == seen[-1]
        added = factory.make(c.study_a, c.series_a2, instance_number=9, series_number=2)
        assert await add(index, added) is AddOutcome.CREATED
        await moved()
        gone = added.record
        target = DeleteTarget(SITE, c.study_a, gone.series_instance_uid, (gone.sop_instance_uid,))
        await index.delete_instances(
            target, who="test", reason="test", now=time.time(), judge=_allow
        )
        await moved()
        rejected = c.a1[1].record
        await index.delete_instances(
            DeleteTarget(
                SITE, c.study_a, rejected.series_instance_uid, (rejected.sop_instance_uid,)
            ),
            who="test",
            reason="rejected",
            now=time.time(),
            judge=_allow,
            rejection=Rejection(
                "113001^DCM", None, ((rejected.series_instance_uid, rejected.sop_instance_uid),)
            ),
        )
        await moved()
        assert await index.restore_instances(SITE, c.study_a, gone.series_instance_uid) == 1
        await moved()
        await index.delete_instances(
            DeleteTarget(SITE, c.study_b), who="test", reason="test", now=time.time(), judge=_allow
        )
        await moved()  # the study row deleted: no study row left to rewrite
    finally:
        await other.close()


async def test_series_exists_and_blob_keys(index: InstanceIndex, catalogue: Catalogue) -> None:
    c = catalogue
    assert await index.series_exists(SeriesKey(SITE, c.study_a, c.series_a1))
    assert not await index.series_exists(SeriesKey(SITE, c.study_b, c.series_a1))
    assert not await index.series_exists(SeriesKey(SITE, c.study_a, generate_uid()))
    assert not await index.series_exists(SeriesKey("other", c.study_a, c.series_a1))
    assert [k async for k in index.iter_blob_keys()] == [b.blob_key for b in c.all]
    assert [k async for k in index.iter_blob_keys(SITE)] == [b.blob_key for b in c.all]
    assert [k async for k in index.iter_blob_keys("other")] == []


# --- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_adds_keep_one_row_and_exact_counts(
    backend: Backend, index: InstanceIndex, factory: InstanceFactory
) -> None:
    """8 tasks over two index objects (as two server processes) store overlapping sets at once.

    Some tasks carry a rival version (different digest) of a few instances: whichever commits
    first wins, and every other attempt is IDENTICAL or CONFLICT against the winner.
    """
    second = await backend.open()
    try:
        studies = [generate_uid() for _ in range(2)]
        plan = {study: [generate_uid() for _ in range(3)] for study in studies}
        layout = [
            (study, series, ("CT-lean", "MR")[i % 2], n)
            for study in studies
            for i, series in enumerate(plan[study])
            for n in range(5)
        ]
        canonical = [factory.make(st, se, modality=m, instance_number=n) for st, se, m, n in layout]
        rivals = {  # same UIDs and template, different content
            b.sop: factory.make(st, se, b.sop, modality=m, instance_number=n, series_number=99)
            for b, (st, se, m, n) in list(zip(canonical, layout, strict=True))[::4]
        }
        rng = random.Random(1234)
        workloads: list[list[Built]] = []
        for task in range(8):
            items = [rivals.get(b.sop, b) if task % 3 == 1 else b for b in canonical]
            items = [b for i, b in enumerate(items) if (i + task) % 4 != 0]  # overlapping subsets
            rng.shuffle(items)
            workloads.append(items)
        indexes = [index, second]
        start = asyncio.Event()

        async def worker(task: int) -> list[tuple[Built, AddOutcome]]:
            await start.wait()
            target = indexes[task % 2]
            return [(b, await add(target, b)) for b in workloads[task]]

        tasks = [asyncio.create_task(worker(t)) for t in range(8)]
        start.set()
        results = [pair for outcomes in await asyncio.gather(*tasks) for pair in outcomes]

        created: dict[str, Built] = {}
        for built, outcome in results:
            if outcome is AddOutcome.CREATED:
                assert built.sop not in created, "two CREATED for one SOP Instance UID"
                created[built.sop] = built
        attempted = {b.sop for b, _ in results}
        assert set(created) == attempted
        for built, outcome in results:
            winner = created[built.sop]
            if built is not winner:
                same = built.digest == winner.digest
                assert outcome is (AddOutcome.IDENTICAL if same else AddOutcome.CONFLICT)
        for sop, winner in created.items():
            stored = await second.get_instance(key_of(winner))
            assert stored is not None and stored.digest == winner.digest, sop

        everything = await search(index, Level.INSTANCE, [("limit", "1000")])
        assert sorted(uids(everything, "00080018")) == sorted(attempted)
        per_series: dict[str, int] = {}
        for sop in attempted:
            series = created[sop].record.series_instance_uid
            per_series[series] = per_series.get(series, 0) + 1
        series_rows = (await search(index, Level.SERIES)).rows
        assert {r["0020000E"]["Value"][0]: value(r, "00201209")[0] for r in series_rows} == (
            per_series
        )
        for row in (await search(index, Level.STUDY)).rows:
            study = row["0020000D"]["Value"][0]
            assert value(row, "00201206") == [3]
            in_study = [s for s in attempted if created[s].record.study_instance_uid == study]
            assert value(row, "00201208") == [len(in_study)]
            assert value(row, "00080061") == ["CT", "MR"]
        assert sorted([k async for k in index.iter_blob_keys()]) == sorted(
            w.blob_key for w in created.values()
        )
    finally:
        await second.close()


# --- PostgreSQL: migrations and outages ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_migrate_is_versioned_and_safe_to_race(pg_database_url: str) -> None:
    versions = sorted(int(p.name[:3]) for p in _PG_MIGRATIONS.glob("*.sql"))
    assert versions[:3] == [1, 2, 3]
    results = await asyncio.gather(*(migrate(pg_database_url) for _ in range(4)))
    assert sorted(results) == [[], [], [], versions]
    assert await migrate(pg_database_url) == []
    conn = await asyncpg.connect(pg_database_url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == versions
    finally:
        await conn.close()


async def test_closed_port_is_unavailable_quickly() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="cannot reach PostgreSQL") as caught:
        await PostgresInstanceIndex.open(url)
    assert caught.value.status == 503
    with pytest.raises(BackendUnavailableError, match="cannot reach PostgreSQL"):
        await migrate(url)
    assert time.monotonic() - started < 5


@pytest.fixture
def table_lock(pg_database_url: str) -> Iterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    """Opens a connection that holds an exclusive lock on `studies` until closed."""
    held: list[asyncpg.Connection] = []

    async def lock() -> asyncpg.Connection:
        conn = await asyncpg.connect(pg_database_url)
        held.append(conn)
        await conn.execute("BEGIN; LOCK TABLE studies IN ACCESS EXCLUSIVE MODE")
        return conn

    yield lock
    assert all(conn.is_closed() for conn in held), "a test left a table lock open"


async def test_command_timeout_is_unavailable_then_recovers(
    pg_database_url: str, table_lock: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    index = await PostgresInstanceIndex.open(pg_database_url, command_timeout=0.5)
    try:
        holder = await table_lock()
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"did not answer within 0.5s"):
            await search(index, Level.STUDY)
        assert time.monotonic() - started < 3
        await holder.close()
        assert (await search(index, Level.STUDY)).rows == []
    finally:
        await index.close()


async def test_pool_acquire_timeout_is_unavailable(
    pg_database_url: str, table_lock: Callable[[], Awaitable[asyncpg.Connection]]
) -> None:
    index = await PostgresInstanceIndex.open(
        pg_database_url, max_size=1, command_timeout=10, acquire_timeout=0.3
    )
    try:
        holder = await table_lock()
        blocked = asyncio.create_task(search(index, Level.STUDY))  # takes the one connection
        await asyncio.sleep(0.1)
        with pytest.raises(BackendUnavailableError, match="no PostgreSQL connection became free"):
            await index.series_exists(SeriesKey(SITE, generate_uid(), generate_uid()))
        await holder.close()
        assert (await blocked).rows == []
    finally:
        await index.close()


async def test_pool_recovers_when_postgres_comes_back(
    pg_database_url: str, factory: InstanceFactory
) -> None:
    parts = urllib.parse.urlsplit(pg_database_url)
    assert parts.hostname is not None and parts.port is not None
    proxy = TcpProxy(parts.hostname, parts.port)
    port = await proxy.start()
    proxied = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
    index = await PostgresInstanceIndex.open(proxied, min_size=2, max_size=2, command_timeout=5)
    try:
        first = factory.make(generate_uid(), generate_uid())
        assert await add(index, first) is AddOutcome.CREATED

        await proxy.stop()  # every connection reset, new ones refused
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await search(index, Level.STUDY)
        with pytest.raises(BackendUnavailableError, match="cannot reach PostgreSQL"):
            await add(index, factory.make(generate_uid(), generate_uid()))
        assert time.monotonic() - started < 5
        # Rows asked for together (one query) fail together, each with the backend's error
        keys = [key_of(first), InstanceKey(SITE, generate_uid(), generate_uid(), generate_uid())]
        failed = await asyncio.gather(*map(index.get_instance, keys), return_exceptions=True)
        assert all(isinstance(result, BackendUnavailableError) for result in failed), failed
        assert "cannot reach PostgreSQL" in str(failed[0])

        await proxy.start()  # same port: the pool reconnects on its own
        assert uids(await search(index, Level.STUDY), "0020000D") == [
            first.record.study_instance_uid
        ]
        found = await asyncio.gather(*map(index.get_instance, keys))
        assert found[0] is not None and found[0].key == keys[0] and found[1] is None
        assert await add(index, factory.make(generate_uid(), generate_uid())) is (
            AddOutcome.CREATED
        )
    finally:
        await index.close()
        await proxy.stop()


async def test_killed_connections_are_replaced(
    pg_database_url: str, factory: InstanceFactory
) -> None:
    index = await PostgresInstanceIndex.open(pg_database_url, min_size=3, max_size=3)
    try:
        await asyncio.gather(*(search(index, Level.STUDY) for _ in range(3)))
        admin = await asyncpg.connect(pg_database_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed == 3
        built = factory.make(generate_uid(), generate_uid())
        assert await add(index, built) is AddOutcome.CREATED
        assert await index.get_instance(key_of(built)) is not None
    finally:
        await index.close()


# --- issue 15: migrations fill the new columns of rows stored before them -------------------

_NEW_SERIES_COLUMNS = (
    "body_part_examined",
    "protocol_name",
    "manufacturer",
    "manufacturer_model_name",
    "station_name",
    "institution_name",
)


def _rows_as_stored_before(built: Built) -> list[tuple[str, dict[str, Any]]]:
    """The study, series and instance rows of an instance as the previous schema held them."""
    record = built.record
    series = new_series_row(SITE, [record])
    for column in _NEW_SERIES_COLUMNS:
        del series[column]
    attributes = orjson.loads(series["attributes"])
    del attributes["00081090"]  # ManufacturerModelName: not a series attribute before
    series["attributes"] = orjson.dumps(attributes)
    new = NewInstance(record, built.blob_key, built.size, built.digest)
    return [
        ("studies", new_study_row(SITE, [record], 1)),
        ("series", series),
        ("instances", instance_row(SITE, new)),
    ]


async def _store_before_migration(
    backend: Backend, tmp_path: Path, request: Any, rows: Any
) -> None:
    """Create the schema without this change's migration and write `rows` into it."""
    if backend.name == "sqlite":
        scripts = sorted(
            (Path(dicomweb_server.__file__).parent / "index/migrations/sqlite").glob("*.sql")
        )
        conn = sqlite3.connect(tmp_path / "index.sqlite")
        for script in scripts[:5]:
            conn.executescript(script.read_text())
        conn.execute("PRAGMA user_version = 5")
        for table, row in rows:
            marks = ", ".join("?" * len(row))
            conn.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", list(row.values())
            )
        conn.commit()
        conn.close()
        return
    pg = await asyncpg.connect(request.getfixturevalue("pg_database_url"))
    try:
        await pg.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for script in sorted(_PG_MIGRATIONS.glob("*.sql"))[:4]:
            await pg.execute(script.read_text())
            await pg.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                int(script.name[:3]),
                script.stem[4:],
            )
        for table, row in rows:
            marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
            await pg.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", *row.values()
            )
    finally:
        await pg.close()


async def test_issue15_migration_fills_new_columns_of_existing_rows(
    backend: Backend, factory: InstanceFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ct = factory.make(generate_uid(), generate_uid(), modality="CT")
    mr = factory.make(generate_uid(), generate_uid(), modality="MR")
    rows = _rows_as_stored_before(ct) + _rows_as_stored_before(mr)
    await _store_before_migration(backend, tmp_path, request, rows)
    index = await backend.open()  # applies this change's migration
    try:
        # Issue 22: the studies that existed were each given a version of their own.
        versions = [
            (await index.study_versions((SITE,), b.record.study_instance_uid))[SITE]
            for b in (ct, mr)
        ]
        assert 0 not in versions and len(set(versions)) == 2
        for key, wanted, expected in (
            ("Manufacturer", "GE MEDICAL SYSTEMS", ct),
            ("ManufacturerModelName", "MRT50H1", mr),
            ("StationName", "CT01_OC0", ct),
            ("InstitutionName", "TOSHIBA", mr),
        ):
            page = await search(index, Level.SERIES, [(key, wanted)])
            assert uids(page, "0020000E") == [expected.record.series_instance_uid], key
        (row,) = (await search(index, Level.SERIES, [("ManufacturerModelName", "RHAPSODE")])).rows
        assert value(row, "00081090") == ["RHAPSODE"]  # back among the returned attributes
        assert value(row, "00080070") == ["GE MEDICAL SYSTEMS"]
        page = await search(index, Level.SERIES, [("BodyPartExamined", "*")])  # universal
        assert len(page.rows) == 2
        # New instances of the old series keep working with the migrated rows.
        later = factory.make(ct.record.study_instance_uid, ct.record.series_instance_uid)
        assert await add(index, later) is AddOutcome.CREATED
        (row,) = (await search(index, Level.SERIES, [("StationName", "CT01_OC0")])).rows
        assert value(row, "00201209") == [2]
    finally:
        await index.close()


async def test_issue20_sqlite_instance_ids_continue_past_every_id_handed_out(
    factory: InstanceFactory, tmp_path: Path
) -> None:
    """Migration 016: an index made before it keeps its rows' ids, and the next id is past
    the highest any event names (an instance since deleted), never a reused one."""
    scripts = sorted(
        (Path(dicomweb_server.__file__).parent / "index/migrations/sqlite").glob("*.sql")
    )
    before = [s for s in scripts if int(s.name[:3]) < 16]
    kept = factory.make(generate_uid(), generate_uid())
    conn = sqlite3.connect(tmp_path / "index.sqlite")
    for script in before:
        conn.executescript(script.read_text())
    conn.execute(f"PRAGMA user_version = {len(before)}")
    for table, row in (
        ("studies", new_study_row(SITE, [kept.record], 1)),
        ("series", new_series_row(SITE, [kept.record])),
        (
            "instances",
            {
                "id": 3,
                **instance_row(
                    SITE, NewInstance(kept.record, kept.blob_key, kept.size, kept.digest)
                ),
            },
        ),
    ):
        conn.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    conn.execute(  # an instance stored as id 9 and deleted since: only its event is left
        "INSERT INTO events (type, site, study_instance_uid, instance_id, time)"
        " VALUES ('instance.created', ?, '1.2', 9, 0)",
        (SITE,),
    )
    conn.commit()
    conn.close()
    index = await SqliteInstanceIndex.open(tmp_path / "index.sqlite")
    try:
        added = factory.make(generate_uid(), generate_uid())
        await index.add_instance(SITE, added.record, added.blob_key, added.size, added.digest)
    finally:
        await index.close()
    conn = sqlite3.connect(tmp_path / "index.sqlite")
    ids = conn.execute("SELECT id, sop_instance_uid FROM instances ORDER BY id").fetchall()
    conn.close()
    assert ids == [(3, kept.record.sop_instance_uid), (10, added.record.sop_instance_uid)]


async def test_sqlite_connection_gauge_never_passes_its_limit(
    factory: InstanceFactory, tmp_path: Path
) -> None:
    """/metrics showed 6 open connections against a limit of 5: the event loop's own
    connection (point reads that never wait) was not counted in the limit. Every kind of
    connection is opened here: the writer's, each reader thread's, the loop's."""
    index = await SqliteInstanceIndex.open(tmp_path / "index.sqlite", loop_read_max_seconds=1)
    try:
        built = factory.make(generate_uid(), generate_uid())
        await index.add_instance(SITE, built.record, built.blob_key, built.size, built.digest)
        await index._point_read(lambda conn: conn.execute("SELECT 1").fetchone())  # the loop's
        readers = threading.Barrier(4)  # four reads at once: each on a thread of its own

        def wait(conn: sqlite3.Connection) -> None:
            readers.wait(timeout=10)

        await asyncio.gather(*(index._read(wait) for _ in range(4)))
        connections = index.connections()
        assert connections.open == 6, connections
        assert connections.open <= connections.limit, connections
    finally:
        await index.close()
