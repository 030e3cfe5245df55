"""App-level fixtures: the real app over the embedded backends, in-process and over TCP."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from live import serving
from services import S3Endpoint, aws_environment
from starlette.applications import Starlette

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

BASE = "http://testserver/dicomweb"


@pytest.fixture(params=["embedded", "production"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend pair the HTTP suite runs over: SQLite + files, or PostgreSQL + S3."""
    return str(request.param)


@pytest.fixture
def settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    if backend == "embedded":
        return Settings(data_dir=tmp_path / "data", base_url=BASE)
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    for name, value in aws_environment(endpoint).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return Settings(
        data_dir=tmp_path / "data",
        base_url=BASE,
        database_url=request.getfixturevalue("pg_database_url"),
        storage_url=f"s3://{bucket}/objects",
        s3_endpoint_url=endpoint.endpoint_url,
    )


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    """The real app with its lifespan entered (backends open)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client driving the real app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server on a loopback port; yields the DICOMweb root URL."""
    settings = Settings(data_dir=tmp_path / "live", port=_free_port())
    with serving(settings):
        yield settings.root_url
