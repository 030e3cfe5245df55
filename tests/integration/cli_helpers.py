"""Running the data commands (import, export, verify, reindex) in-process, on a test's backends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import asyncpg
import httpx
import pytest
from dicomfiles import multipart_body

from dicomweb_server.app import create_app
from dicomweb_server.cli import main
from dicomweb_server.config import Settings

BASE = "http://testserver/dicomweb"
_BACKEND_SETTINGS = ("database_url", "storage_url", "s3_endpoint_url")


@dataclass
class Ran:
    """What a command did: its exit code and its output."""

    code: int
    out: str
    err: str


def use_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make commands read `settings`' backends from the environment, as `serve` would."""
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(settings.data_dir))
    for name in _BACKEND_SETTINGS:
        value = getattr(settings, name)
        variable = f"DICOMWEB_{name.upper()}"
        if value:
            monkeypatch.setenv(variable, value)
        else:
            monkeypatch.delenv(variable, raising=False)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Ran:
    """`dicomweb-server ARGV` in a worker thread (so an async test's app keeps running).

    Logging is left as pytest set it: `main` would bind its handlers to the captured stderr
    of this one test.
    """
    capsys.readouterr()
    with mock.patch("dicomweb_server.cli.configure_logging"):
        code = await asyncio.to_thread(main, [str(arg) for arg in argv])
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def count(summary: str, label: str) -> int:
    """A figure of a summary line such as `  stored      12`."""
    for line in summary.splitlines():
        if line.strip().startswith(label):
            found = re.search(r"\d[\d,]*", line.strip()[len(label) :])
            if found:
                return int(found[0].replace(",", ""))
    raise AssertionError(f"no {label!r} in:\n{summary}")


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `settings`, in-process."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


async def stow(client: httpx.AsyncClient, files: list[bytes]) -> None:
    body, content_type = multipart_body(files)
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


@contextlib.contextmanager
def tiny_disk(tmp_path: Path, size: str = "2m") -> Iterator[Path | None]:
    """A folder on a tmpfs of `size` (a full disk, for real), or None where we cannot mount."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def analyze_counts(database_url: str) -> dict[str, int]:
    """How many times ANALYZE ran by hand on each searched table of a PostgreSQL index."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT relname, analyze_count FROM pg_stat_user_tables"
            " WHERE relname IN ('studies', 'series', 'instances')"
        )
    finally:
        await conn.close()
    return {str(row[0]): int(row[1]) for row in rows}
