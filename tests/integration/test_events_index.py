"""Issue 20 at the index: the outbox written in the add transaction, sequences in commit order,
study.stable once per quiet period, and webhook delivery claims, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from index_cases import Built, InstanceFactory
from pydicom.uid import generate_uid

from dicomweb_server.domain.events import (
    INSTANCE_CREATED,
    INSTANCE_DELETED,
    STUDY_STABLE,
    Event,
    Webhook,
)
from dicomweb_server.index import events_postgres, events_sqlite, postgres_add, postgres_write
from dicomweb_server.index import sqlite as sqlite_index
from dicomweb_server.index.base import (
    AddOutcome,
    DeliveryFailure,
    DeliveryRun,
    FeedPage,
    ServerIndex,
)
from dicomweb_server.index.batch import NewInstance, add_instances
from dicomweb_server.index.events import InstanceChange
from dicomweb_server.index.postgres import PostgresInstanceIndex
from dicomweb_server.index.postgres_write import add_batch
from dicomweb_server.index.sqlite import SqliteInstanceIndex

SITE = "default"
EVERY = frozenset({INSTANCE_CREATED, INSTANCE_DELETED, STUDY_STABLE})


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[], Awaitable[ServerIndex]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "index.sqlite"
        return Backend("sqlite", lambda: SqliteInstanceIndex.open(path))
    url = request.getfixturevalue("pg_database_url")
    return Backend("postgres", lambda: PostgresInstanceIndex.open(url, max_size=4))


@pytest_asyncio.fixture
async def index(backend: Backend) -> AsyncIterator[ServerIndex]:
    opened = await backend.open()
    yield opened
    await opened.close()


@pytest.fixture
def factory(tmp_path: Path) -> InstanceFactory:
    return InstanceFactory(tmp_path / "instances")


def new(built: Built) -> NewInstance:
    return NewInstance(built.record, built.blob_key, built.size, built.digest)


async def feed(index: ServerIndex, after: int = 0, **page: Any) -> list[Event]:
    entries = await index.read_feed(FeedPage(None, 1000, after, **page))
    return [entry.event for entry in entries]


async def rows_of(index: ServerIndex, query: str) -> list[tuple[Any, ...]]:
    """The rows of `query` (no parameters), read with the backend's own connection."""
    if isinstance(index, SqliteInstanceIndex):
        return await index._read(lambda conn: conn.execute(query).fetchall())
    assert isinstance(index, PostgresInstanceIndex)
    return [tuple(row) for row in await index._with_connection(lambda conn: conn.fetch(query))]


# --- the outbox in the add transaction ------------------------------------------------------------


async def test_issue20_every_add_path_writes_one_created_event_per_new_instance(
    index: ServerIndex, factory: InstanceFactory
) -> None:
    study, series = generate_uid(), generate_uid()
    one = factory.make(study, series, modality="CT-lean")
    batch = [factory.make(study, series, modality="CT-lean") for _ in range(3)]
    assert await index.add_instance(SITE, one.record, one.blob_key, one.size, one.digest) == (
        AddOutcome.CREATED
    )
    assert await add_instances(index, SITE, [new(b) for b in batch]) == [AddOutcome.CREATED] * 3
    # Repeats (identical) and conflicts write no event.
    assert await add_instances(index, SITE, [new(one)]) == [AddOutcome.IDENTICAL]
    clash = factory.make(generate_uid(), series, sop=one.sop, modality="CT-lean")
    assert await add_instances(index, SITE, [new(clash)]) == [AddOutcome.CONFLICT]

    events = await feed(index)
    assert [e.sop_instance_uid for e in events] == [one.sop] + [b.sop for b in batch]
    assert {e.type for e in events} == {INSTANCE_CREATED}
    assert all(e.modalities == {"CT"} and e.series_instance_uid == series for e in events)
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert [e.time for e in events] == sorted(e.time for e in events)
    latest = await index.latest_feed_entry(None, metadata=True)
    assert latest is not None and latest.event == events[-1]
    assert latest.state == "current" and latest.metadata is not None


async def test_issue20_a_failed_add_transaction_leaves_neither_instance_nor_event(
    index: ServerIndex, factory: InstanceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance rows and their events commit together or not at all (single and batch)."""

    class Crash(Exception):
        pass

    def crashing(real: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(real):

            async def after_async(*args: Any) -> None:
                await real(*args)
                raise Crash

            return after_async

        def after(*args: Any) -> None:
            real(*args)
            raise Crash

        return after

    for module in (sqlite_index, postgres_add, postgres_write):
        monkeypatch.setattr(module, "append_created", crashing(module.append_created))
    study, series = generate_uid(), generate_uid()
    built = [factory.make(study, series, modality="CT-lean") for _ in range(2)]
    with pytest.raises(Crash):
        await index.add_instance(SITE, built[0].record, built[0].blob_key, built[0].size, "d")
    with pytest.raises(Crash):
        await add_instances(index, SITE, [new(b) for b in built])
    monkeypatch.undo()
    assert await feed(index) == []
    assert await add_instances(index, SITE, [new(b) for b in built]) == [AddOutcome.CREATED] * 2
    assert len(await feed(index)) == 2


async def test_issue20_concurrent_writers_never_make_a_sequence_pager_miss_an_entry(
    backend: Backend, factory: InstanceFactory
) -> None:
    """Two index objects (two processes) add at once while a consumer pages by sequence."""
    first, second = await backend.open(), await backend.open()
    try:
        built = [
            factory.make(generate_uid(), generate_uid(), modality="CT-lean") for _ in range(40)
        ]
        seen: list[int] = []
        done = asyncio.Event()

        async def consume() -> None:
            after = 0
            while True:
                finished = done.is_set()
                for event in await feed(first, after):
                    seen.append(event.sequence)
                    after = event.sequence
                if finished:
                    return
                await asyncio.sleep(0.001)

        async def write(index: ServerIndex, items: list[Built]) -> None:
            for i in range(0, len(items), 3):
                await add_instances(index, SITE, [new(b) for b in items[i : i + 3]])

        consumer = asyncio.create_task(consume())
        await asyncio.gather(write(first, built[::2]), write(second, built[1::2]))
        done.set()
        await consumer
        assert seen == list(range(1, 41))  # each once, in order, none skipped
    finally:
        await first.close()
        await second.close()


async def test_issue20_postgres_sequences_follow_commit_order_not_start_order(
    request: pytest.FixtureRequest, factory: InstanceFactory
) -> None:
    """T1 starts first and commits last; T2 commits in between. A consumer that read T2's
    entry and moved its cursor past it still gets T1's: T1's number comes after T2's."""
    url = request.getfixturevalue("pg_database_url")
    index = await PostgresInstanceIndex.open(url, max_size=4)
    try:
        pool = index._pool
        study = generate_uid()
        a, b = (factory.make(study, generate_uid(), modality="CT-lean") for _ in range(2))
        c = factory.make(generate_uid(), generate_uid(), modality="CT-lean")  # no shared row
        async with pool.acquire() as t1, pool.acquire() as t2:
            tx1 = t1.transaction(isolation="read_committed")
            await tx1.start()
            await t1.execute("SELECT 1")  # T1 is open: it started before T2
            async with t2.transaction(isolation="read_committed"):
                assert await add_batch(t2, SITE, [new(b)]) == [AddOutcome.CREATED]
            cursor = (await feed(index))[-1].sequence  # the consumer has read T2's entry
            assert await add_batch(t1, SITE, [new(a)]) == [AddOutcome.CREATED]
            # T1 now holds the event counter until it commits: T3 waits behind it.
            t3 = asyncio.create_task(index.add_instance(SITE, c.record, c.blob_key, c.size, "d"))
            await asyncio.sleep(0.3)
            assert not t3.done()
            assert await feed(index, cursor) == []  # nothing of T1 (or T3) visible yet
            await tx1.commit()
            assert await t3 == AddOutcome.CREATED
        later = await feed(index, cursor)
        assert [e.sop_instance_uid for e in later] == [a.sop, c.sop]
        assert [e.sequence for e in later] == [cursor + 1, cursor + 2]
    finally:
        await index.close()


async def test_issue20_append_deleted_writes_in_the_delete_transaction(
    index: ServerIndex, factory: InstanceFactory
) -> None:
    """The function the delete issue will call: its entry commits (or not) with the delete,
    and the feed judges each entry's State: current, deleted, replaced."""
    study, series = generate_uid(), generate_uid()
    gone, kept = factory.make(study, series, modality="CT-lean"), factory.make(study, series)
    await add_instances(index, SITE, [new(gone), new(kept)])
    created = await feed(index)
    change = InstanceChange(study, series, gone.sop, None, "CT")

    if isinstance(index, SqliteInstanceIndex):

        def delete(conn: sqlite3.Connection, commit: bool) -> None:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id FROM instances WHERE sop_instance_uid = ?", (gone.sop,))
            events_sqlite.append_deleted(
                conn, SITE, [InstanceChange(study, series, gone.sop, row.fetchone()[0], "CT")]
            )
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (gone.sop,))
            conn.execute("COMMIT" if commit else "ROLLBACK")

        await index._write(lambda conn: delete(conn, False))
        assert await feed(index) == created
        await index._write(lambda conn: delete(conn, True))
    else:
        assert isinstance(index, PostgresInstanceIndex)

        async def delete_pg(conn: Any, commit: bool) -> None:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("DELETE FROM instances WHERE sop_instance_uid = $1", gone.sop)
            await events_postgres.append_deleted(conn, SITE, [change])
            await (tx.commit() if commit else tx.rollback())

        await index._with_connection(lambda conn: delete_pg(conn, False))
        assert await feed(index) == created
        await index._with_connection(lambda conn: delete_pg(conn, True))

    entries = await index.read_feed(FeedPage(None, 10, metadata=True))
    assert [(e.event.type, e.event.sop_instance_uid, e.state) for e in entries] == [
        (INSTANCE_CREATED, gone.sop, "deleted"),
        (INSTANCE_CREATED, kept.sop, "current"),
        (INSTANCE_DELETED, gone.sop, "deleted"),
    ]
    assert [e.metadata is None for e in entries] == [True, False, True]
    # Stored again: the old entries now point at a replaced version.
    await add_instances(index, SITE, [new(gone)])
    states = [(e.event.type, e.state) for e in await index.read_feed(FeedPage(None, 10))]
    assert states == [
        (INSTANCE_CREATED, "replaced"),
        (INSTANCE_CREATED, "current"),
        (INSTANCE_DELETED, "replaced"),
        (INSTANCE_CREATED, "current"),
    ]


async def test_issue20_feed_pages_by_site_and_time_window(
    index: ServerIndex, factory: InstanceFactory
) -> None:
    study = generate_uid()
    here = [factory.make(study, generate_uid(), modality="CT-lean") for _ in range(3)]
    there = factory.make(generate_uid(), generate_uid(), modality="CT-lean")
    await add_instances(index, SITE, [new(here[0])])
    await add_instances(index, "other", [new(there)])
    await add_instances(index, SITE, [new(b) for b in here[1:]])
    default_only = await index.read_feed(FeedPage(frozenset({SITE}), 10))
    assert [e.event.sop_instance_uid for e in default_only] == [b.sop for b in here]
    assert await index.read_feed(FeedPage(frozenset(), 10)) == []
    assert await index.latest_feed_entry(frozenset(), False) is None
    latest_other = await index.latest_feed_entry(frozenset({"other"}), False)
    assert latest_other is not None and latest_other.event.site == "other"
    everything = await feed(index)
    start = everything[1].time
    window = await feed(index, start=start, end=start + 3600, skip=1)
    assert window == [e for e in everything if e.time >= start][1:]
    assert await feed(index, start=start, end=start) == []


# --- study.stable -------------------------------------------------------------------------------


async def test_issue20_study_stable_once_per_quiet_period_whoever_announces(
    backend: Backend, factory: InstanceFactory
) -> None:
    first, second = await backend.open(), await backend.open()
    try:
        study = generate_uid()
        series = [generate_uid(), generate_uid()]
        built = [factory.make(study, series[i % 2], modality="CT-lean") for i in range(4)]
        await add_instances(first, SITE, [new(b) for b in built[:3]])
        assert await first.announce_quiet_studies(5.0, 100) == 0  # not quiet yet
        await asyncio.sleep(0.3)
        counts = await asyncio.gather(
            *(index.announce_quiet_studies(0.2, 100) for index in (first, second) for _ in range(5))
        )
        assert sum(counts) == 1
        assert await first.announce_quiet_studies(0.0, 100) == 0  # announced: nothing new
        await add_instances(second, SITE, [new(built[3])])
        await asyncio.sleep(0.3)
        counts = await asyncio.gather(
            first.announce_quiet_studies(0.2, 100), second.announce_quiet_studies(0.2, 100)
        )
        assert sorted(counts) == [0, 1]
        rows = await rows_of(
            first,
            "SELECT study_instance_uid, number_of_series, number_of_instances, modalities"
            " FROM events WHERE type = 'study.stable' ORDER BY sequence",
        )
        assert rows == [(study, 2, 3, "CT"), (study, 2, 4, "CT")]
    finally:
        await first.close()
        await second.close()


# --- webhook subscriptions and delivery claims -----------------------------------------------------


def hook(**fields: Any) -> Webhook:
    values: dict[str, Any] = {
        "id": 0,
        "url": "http://127.0.0.1:9/",
        "secret_env": "HOOK_SECRET",
        "events": EVERY,
    }
    return Webhook(**{**values, **fields})


async def test_issue20_webhooks_receive_only_later_events_that_match_their_filters(
    index: ServerIndex, factory: InstanceFactory
) -> None:
    before = factory.make(generate_uid(), generate_uid(), modality="CT-lean")
    await add_instances(index, SITE, [new(before)])
    every = await index.add_webhook(hook())
    mr_other = await index.add_webhook(hook(site="other", modalities=frozenset({"MR"})))
    stable_only = await index.add_webhook(hook(events=frozenset({STUDY_STABLE})))
    assert every.id != mr_other.id and every.created > 0
    ct = factory.make(generate_uid(), generate_uid(), modality="CT-lean")
    mr = factory.make(generate_uid(), generate_uid(), modality="MR")
    await add_instances(index, SITE, [new(ct)])
    await add_instances(index, "other", [new(mr)])
    assert await index.fan_out(1000) == 3
    assert await index.fan_out(1000) == 0
    counts = {s.webhook.id: s.pending for s in await index.list_webhooks()}
    assert counts == {every.id: 2, mr_other.id: 1, stable_only.id: 0}
    assert await index.replay_webhook(every.id, 0.0) == 3  # `before` too, and the two again
    assert await index.replay_webhook(999, 0.0) is None
    assert await index.remove_webhook(mr_other.id)
    assert not await index.remove_webhook(mr_other.id)
    assert [w.id for w in await index.get_webhooks()] == [every.id, stable_only.id]


async def test_issue20_claims_lease_one_run_per_study_in_order(
    backend: Backend, factory: InstanceFactory
) -> None:
    first, second = await backend.open(), await backend.open()
    try:
        webhook = await first.add_webhook(hook(events=frozenset({INSTANCE_CREATED})))
        studies = [generate_uid() for _ in range(3)]
        for _ in range(3):
            await add_instances(
                first,
                SITE,
                [new(factory.make(s, generate_uid(), modality="CT-lean")) for s in studies],
            )
        await first.fan_out(1000)
        runs = await asyncio.gather(
            first.claim_deliveries("a", 2, 2, 30.0), second.claim_deliveries("b", 2, 2, 30.0)
        )
        claimed = [run for batch in runs for run in batch]
        assert len(claimed) == 3  # one run per study, never two for one study
        for run in claimed:
            assert len({d.event.study_instance_uid for d in run.deliveries}) == 1
            assert len(run.deliveries) == 2  # `run` = 2 of its 3 deliveries, oldest first
            sequences = [d.event.sequence for d in run.deliveries]
            assert sequences == sorted(sequences)
            assert all(d.webhook_id == webhook.id and d.attempts == 0 for d in run.deliveries)
        assert await first.claim_deliveries("c", 10, 10, 30.0) == []  # all leased
        one, two, three = claimed
        # Delivered both: the study's third becomes due.
        assert await first.settle_deliveries(one.token, [d.id for d in one.deliveries], None, None)
        # The head failed: retried before the rest of its study; the rest is released.
        failure = DeliveryFailure(two.deliveries[0].id, 0.0, "HTTP 500")
        assert await first.settle_deliveries(two.token, [], failure, None)
        # Progress with the lease renewed, then dead-lettered.
        assert await first.settle_deliveries(three.token, [three.deliveries[0].id], None, 30.0)
        dead = DeliveryFailure(three.deliveries[1].id, 0.0, "gone", dead=True)
        assert await first.settle_deliveries(three.token, [], dead, None)
        assert not await first.settle_deliveries(three.token, [], None, 30.0)  # nothing left
        status = (await first.list_webhooks())[0]
        assert (status.pending, status.delivered, status.dead) == (5, 3, 1)
        assert status.last_error == "gone"
        # A webhook with a failed delivery waiting gets one run at a time (fair_heads), by
        # any process, until it is delivered: each claim takes one study's run.
        by_study: dict[str, DeliveryRun] = {}
        for claimer in (second, first, second):
            (run,) = await claimer.claim_deliveries("d", 10, 10, 30.0)
            assert await first.claim_deliveries("e", 10, 10, 30.0) == []  # one at a time
            by_study[run.deliveries[0].event.study_instance_uid] = run
            delivered = [d.id for d in run.deliveries]
            assert await claimer.settle_deliveries(run.token, delivered, None, None)
        first_study = one.deliveries[0].event.study_instance_uid
        second_study = two.deliveries[0].event.study_instance_uid
        assert len(by_study[first_study].deliveries) == 1
        retried = by_study[second_study].deliveries
        assert [d.id for d in retried][:2] == [d.id for d in two.deliveries]
        assert retried[0].attempts == 1 and len(retried) == 3
        assert len(by_study) == 3
        status = (await first.list_webhooks())[0]
        assert (status.pending, status.delivered, status.dead) == (0, 8, 1)
        assert await first.claim_deliveries("f", 10, 10, 30.0) == []  # nothing left
    finally:
        await first.close()
        await second.close()


async def test_issue20_an_expired_lease_is_claimed_again_and_the_old_holder_loses_it(
    index: ServerIndex, factory: InstanceFactory
) -> None:
    await index.add_webhook(hook())
    await add_instances(index, SITE, [new(factory.make(generate_uid(), generate_uid()))])
    await index.fan_out(1000)
    (held,) = await index.claim_deliveries("old", 5, 5, 0.2)
    await asyncio.sleep(0.4)
    (taken,) = await index.claim_deliveries("new", 5, 5, 30.0)
    assert [d.id for d in taken.deliveries] == [d.id for d in held.deliveries]
    assert not await index.settle_deliveries(held.token, [held.deliveries[0].id], None, None)
    assert await index.settle_deliveries(taken.token, [taken.deliveries[0].id], None, None)
    assert await index.prune_deliveries(3600) == 0
    assert await index.prune_deliveries(-1) == 1
    status = (await index.list_webhooks())[0]
    assert (status.pending, status.delivered, status.dead) == (0, 1, 0)
