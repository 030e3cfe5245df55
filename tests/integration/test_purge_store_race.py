"""An instance stored again while a purge (or the orphan sweep) deletes its old object.

Object keys are content digests, so the same bytes stored again after a delete write the key
of the trashed copy. A deleter that looked for rows before the store committed them, and
deleted after the store wrote its object, lost the instance: still listed, its object gone.
Each race is reproduced deterministically by pausing the deleter (or the store) inside the
real blob store, on both backend pairs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from starlette.applications import Starlette

from dicomweb_server.domain.identifiers import InstanceKey
from dicomweb_server.services.maintenance import sweep_orphans
from dicomweb_server.storage.base import BlobStore

ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_WAIT = 20.0  # seconds any step may take, at most


class _PausedDeletes:
    """The real blob store; a delete waits at `gate` (after setting `reached`)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)

    async def delete(self, key: str) -> None:
        self.reached.set()
        await self.gate.wait()
        await self._blobs.delete(key)


class _PausedPuts:
    """The real blob store; a put, once written, waits at `gate` (counting in `written`)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self.written = 0
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)

    async def put(self, key: str, chunks: AsyncIterator[bytes | memoryview]) -> int:
        size = await self._blobs.put(key, chunks)
        self.written += 1
        await self.gate.wait()
        return size


def _study(count: int) -> tuple[str, str, list[str], list[bytes]]:
    study, series = uid(), uid()
    sops = [uid() for _ in range(count)]
    files = [
        to_part10(ct_dataset(study, series, sop, instance_number=n + 1, seed=n))
        for n, sop in enumerate(sops)
    ]
    return study, series, sops, files


async def _stow(client: httpx.AsyncClient, files: list[bytes]) -> None:
    body, content_type = multipart_body(files)
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + _WAIT
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _indexed(app: Starlette, study: str, series: str, sops: list[str]) -> bool:
    index = app.state.backends.index
    for sop in sops:
        if await index.get_instance(InstanceKey("default", study, series, sop)) is None:
            return False
    return True


async def _assert_whole(
    client: httpx.AsyncClient, study: str, series: str, sops: list[str], files: list[bytes]
) -> None:
    """Every instance retrievable (WADO reads the object), as many as were sent."""
    for sop in sops:
        path = f"/studies/{study}/series/{series}/instances/{sop}"
        response = await client.get(path, headers={"Accept": ALL})
        assert response.status_code == 200, f"{sop}: {response.status_code} {response.text}"
        parts = parse_multipart(response.content, response.headers["content-type"])
        assert len(parts) == 1
    assert len(files) == len(sops)


async def test_purge_that_looked_before_a_store_committed_leaves_the_instance_whole(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The purge finds no row, a STOW of the same bytes writes and indexes them, then the
    purge deletes: the STOW waits for the purge and writes its objects again."""
    study, series, sops, files = _study(3)
    await _stow(client, files)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    paused = _PausedDeletes(app.state.backends.blobs)
    deleter = dataclasses.replace(app.state.dicomweb.delete, blobs=paused)
    purge = asyncio.create_task(deleter.purge(older_than_days=0))
    await asyncio.wait_for(paused.reached.wait(), _WAIT)  # looked; about to delete
    stow = asyncio.create_task(_stow(client, files))
    await _until(lambda: _indexed(app, study, series, sops))
    paused.gate.set()
    report = await asyncio.wait_for(purge, _WAIT)
    assert (report.instances, report.objects) == (3, 3)
    await asyncio.wait_for(stow, _WAIT)
    await _assert_whole(client, study, series, sops, files)


async def test_purge_between_a_stores_write_and_its_commit_leaves_the_instance_whole(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A whole purge runs after a STOW wrote its objects and before it indexed them: the
    STOW sees the deletion epoch moved and writes the missing objects again."""
    study, series, sops, files = _study(3)
    await _stow(client, files)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    store = app.state.dicomweb.store
    real = store.blobs
    paused = _PausedPuts(real)
    store.blobs = paused
    try:
        stow = asyncio.create_task(_stow(client, files))

        async def all_written() -> bool:
            return paused.written == len(files)

        await _until(all_written)
        report = await app.state.dicomweb.delete.purge(older_than_days=0)
        assert (report.instances, report.objects) == (3, 3)
        paused.gate.set()
        await asyncio.wait_for(stow, _WAIT)
    finally:
        store.blobs = real
    await _assert_whole(client, study, series, sops, files)


async def test_sweep_that_looked_before_a_store_committed_leaves_the_instance_whole(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """An orphaned object (its rows gone) is being swept as the same bytes are stored again:
    the sweep looked before the STOW committed, and deletes after it wrote."""
    study, series, sops, files = _study(2)
    await _stow(client, files)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    index = app.state.backends.index
    trashed = await index.trashed_before(time.time() + 60, None, 100)
    await index.forget_trashed([t.id for t in trashed if t.key.study_instance_uid == study])
    blobs = app.state.backends.blobs
    paused = _PausedDeletes(blobs)
    sweep = asyncio.create_task(sweep_orphans(index, paused, min_age_seconds=0))  # type: ignore[arg-type]
    await asyncio.wait_for(paused.reached.wait(), _WAIT)
    stow = asyncio.create_task(_stow(client, files))
    await _until(lambda: _indexed(app, study, series, sops))
    paused.gate.set()
    await asyncio.wait_for(sweep, _WAIT)
    await asyncio.wait_for(stow, _WAIT)
    await _assert_whole(client, study, series, sops, files)
