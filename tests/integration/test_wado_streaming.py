"""WADO-RS instance streams: read-ahead, Content-Length, failures and disconnects mid-stream."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom import dcmread
from starlette.applications import Starlette

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

DICOM = 'multipart/related; type="application/dicom"'
IMPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'


async def _store_series(
    client: httpx.AsyncClient, count: int, *, size: int = 16
) -> tuple[str, str, list[bytes]]:
    study, series = uid(), uid()
    files = [
        to_part10(ct_dataset(study, series, instance_number=n, seed=n, rows=size, columns=size))
        for n in range(1, count + 1)
    ]
    body, content_type = multipart_body(files)
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    return study, series, files


def _stored(file: bytes) -> bytes:
    return b"\0" * 128 + file[128:]  # the preamble is not kept


async def test_as_stored_study_has_content_length_and_every_instance(
    client: httpx.AsyncClient,
) -> None:
    study, _, files = await _store_series(client, 5, size=256)  # 128 KB: the mapped path too
    response = await client.get(f"/studies/{study}", headers={"Accept": DICOM})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [p[1] for p in parts] == [_stored(f) for f in files]


async def test_transcoded_study_is_streamed_without_length(client: httpx.AsyncClient) -> None:
    study, _, files = await _store_series(client, 3)
    response = await client.get(f"/studies/{study}", headers={"Accept": IMPLICIT})
    assert response.status_code == 200
    assert "content-length" not in response.headers
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 3
    for (headers, data), file in zip(parts, files, strict=True):
        assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2")
        assert dcmread(io.BytesIO(data)).PixelData == dcmread(io.BytesIO(file)).PixelData


@pytest.mark.parametrize(
    ("objects", "held", "listed"),
    [(1, 0, 2000), (2, 10_000, 2), (3, 1 << 20, 0)],
    ids=["nothing-ahead-streamed", "small-byte-bound", "too-many-to-list"],
)
async def test_tight_bounds_serve_the_same_bytes(
    settings: Settings, objects: int, held: int, listed: int
) -> None:
    tight = settings.replace(
        wado_read_ahead_objects=objects,
        wado_read_ahead_bytes=held,
        wado_sized_max_instances=listed,
    )
    application = create_app(tight)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=settings.root_url) as client:
            study, series, files = await _store_series(client, 6, size=64)
            response = await client.get(
                f"/studies/{study}/series/{series}", headers={"Accept": DICOM}
            )
    assert response.status_code == 200
    assert ("content-length" in response.headers) == (listed >= 6)
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert [p[1] for p in parts] == [_stored(f) for f in files]


# -- over TCP, in this event loop: a failure or a disconnect after the status was sent -----


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, set[asyncio.Task[object]]]]:
    """The app under uvicorn in the test's own loop, so its tasks can be inspected."""
    port = _free_port()
    settings = Settings(data_dir=tmp_path / "served", port=port)
    application: Starlette = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            application, host="127.0.0.1", port=port, log_level="critical", access_log=False
        )
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    idle = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}  # server, lifespan
    yield settings.root_url, settings.data_dir / "objects", idle
    server.should_exit = True
    await task


async def _leftover_tasks(idle: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks beyond an idle server's and the test's, once the server had time to settle."""
    for _ in range(300):
        left = {
            task
            for task in asyncio.all_tasks()
            if not task.done() and task not in idle and task is not asyncio.current_task()
        }
        if not left:
            break
        await asyncio.sleep(0.01)
    return left


async def test_a_missing_object_mid_stream_aborts_the_response(
    served: tuple[str, Path, set[asyncio.Task[object]]],
) -> None:
    root, objects, idle = served
    async with httpx.AsyncClient(base_url=root, timeout=30) as client:
        study, _, files = await _store_series(client, 6, size=64)
        third = dcmread(io.BytesIO(files[2])).SOPInstanceUID
        (path,) = objects.glob(f"**/{third}/*")
        path.unlink()
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", f"/studies/{study}", headers={"Accept": DICOM}) as r:
                assert r.status_code == 200  # sent before the third object was reached
                async for _ in r.aiter_bytes():
                    pass
        assert await _leftover_tasks(idle) == set()
        # the server goes on serving
        response = await client.get(f"/studies/{study}/series/{uid()}", headers={"Accept": DICOM})
        assert response.status_code == 404


async def test_client_disconnect_mid_stream_cancels_read_ahead(
    served: tuple[str, Path, set[asyncio.Task[object]]],
) -> None:
    root, _, idle = served
    async with httpx.AsyncClient(base_url=root, timeout=30) as client:
        study, _, _ = await _store_series(client, 40, size=512)  # 40 × 512 KB
        async with client.stream("GET", f"/studies/{study}", headers={"Accept": DICOM}) as r:
            assert r.status_code == 200
            await anext(r.aiter_raw())
            # the response is under way (20 MB) while the client has read one chunk
            assert any(not t.done() for t in asyncio.all_tasks() if t not in idle)
        # closed after the first chunk: the server notices, cancels the fetches, closes files
    assert await _leftover_tasks(idle) == set()
