"""Derived data has a budget (issue 14): transcoded frames and thumbnails past
DICOMWEB_CACHE_MAX_BYTES are evicted least recently used first, on both backend pairs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from starlette.applications import Starlette

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.domain.blob_keys import cache_prefix, frame_cache_key
from dicomweb_server.domain.identifiers import DEFAULT_SITE, InstanceKey

JLS = "1.2.840.10008.1.2.4.80"
BUDGET = 12_000


@pytest_asyncio.fixture
async def small_cache(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings.replace(cache_max_bytes=BUDGET))
    async with application.router.lifespan_context(application):
        yield application


async def _cached_bytes(app: Starlette) -> dict[str, int]:
    blobs = app.state.backends.blobs
    return {info.key: info.size async for info in blobs.iter_objects(cache_prefix(DEFAULT_SITE))}


async def test_issue14_cache_past_its_budget_keeps_the_most_recently_used(
    small_cache: Starlette,
) -> None:
    app = small_cache
    study, series = uid(), uid()
    datasets = [
        ct_dataset(study, series, rows=48, columns=48, instance_number=n, seed=n) for n in range(16)
    ]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    cache = app.state.dicomweb.retrieve.frame_cache
    # No ledger update before the test asks for one: on a loaded machine the 16 transcodes
    # below can outlast the 5 s interval, and an eviction then would trim the cache early.
    cache._interval = float("inf")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t/dicomweb") as client:
        stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert stored.status_code == 200
        accept = {"Accept": f'multipart/related; type="image/jls"; transfer-syntax={JLS}'}
        for ds in datasets:
            url = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
            assert (await client.get(url, headers=accept)).status_code == 200
            # Written in the background: one at a time, so the last asked is written last.
            await cache.wait_for_writes()
        before = await _cached_bytes(app)
        assert len(before) == len(datasets)
        assert sum(before.values()) > BUDGET  # the test must overfill it
        # Use the first instance's frame again: now it is the most recently used.
        first = datasets[0]
        url = f"/studies/{study}/series/{series}/instances/{first.SOPInstanceUID}/frames/1"
        assert (await client.get(url, headers=accept)).status_code == 200
        await cache.flush()
    after = await _cached_bytes(app)
    assert 0 < sum(after.values()) <= BUDGET
    keys = {
        ds.SOPInstanceUID: frame_cache_key(
            InstanceKey(DEFAULT_SITE, study, series, ds.SOPInstanceUID),
            (
                await app.state.dicomweb.retrieve.get_instance(
                    InstanceKey(DEFAULT_SITE, study, series, ds.SOPInstanceUID)
                )
            ).digest,
            1,
            JLS,
        )
        for ds in datasets
    }
    assert keys[first.SOPInstanceUID] in after  # used last: kept
    assert keys[datasets[-1].SOPInstanceUID] in after  # written last: kept
    assert keys[datasets[1].SOPInstanceUID] not in after  # least recently used: evicted


async def test_issue14_ledger_claims_each_entry_once(app: Starlette) -> None:
    ledger = app.state.backends.index
    total = await ledger.note_cache_use([("a", 100, 1.0), ("b", 200, 2.0), ("c", 300, 3.0)], [])
    assert total == 600
    assert await ledger.note_cache_use([], [("a", 5.0)]) == 600  # a is now the newest
    first = await ledger.claim_cache_victims(250)
    assert first == [("b", 200), ("c", 300)]
    assert await ledger.claim_cache_victims(1000) == [("a", 100)]
    assert await ledger.claim_cache_victims(1) == []
    assert await ledger.note_cache_use([("a", 50, 6.0)], []) == 50


async def test_issue14_flushes_that_overlap_evict_the_excess_once(small_cache: Starlette) -> None:
    """A flush started in the background and one asked for meanwhile (`close`, a test) both
    saw the whole excess: run together they evicted it twice, down to the entries used last.
    They now run one after the other."""
    cache = small_cache.state.dicomweb.retrieve.frame_cache
    sizes = [3_000 + n for n in range(16)]
    for n, size in enumerate(sizes):
        await cache.put(f"{cache_prefix(DEFAULT_SITE)}overlap/{n}", bytes(size))
    await asyncio.gather(cache.flush(), cache.flush())
    kept = await _cached_bytes(small_cache)
    assert sum(kept.values()) <= BUDGET
    assert sum(kept.values()) > BUDGET * 0.9 - max(sizes)  # evicted down to the low water once
