"""The console command as a user runs it: a real process, settings from flags and environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10

import dicomweb_server

_MIGRATIONS = Path(dicomweb_server.__file__).parent / "index" / "migrations" / "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    data = tmp_path / "store"
    env = {**os.environ, "DICOMWEB_BASE_URL": "https://pacs.example.org/dicomweb"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomweb_server",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/dicomweb"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/studies", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    process.stdout.read().decode() if process.stdout else "server died"
                ) from None
            time.sleep(0.1)
    try:
        yield url, data
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
        assert b"Traceback" not in output, output.decode()


def test_serve_stores_and_reads_back_a_study(server: tuple[str, Path]) -> None:
    url, data = server
    study = ct_dataset()
    files = [to_part10(study)]
    body, content_type = multipart_body(files)
    stored = httpx.post(url + "/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200
    # RetrieveURLs use DICOMWEB_BASE_URL, never the request's Host header.
    assert stored.json()["00081190"]["Value"][0].startswith(
        "https://pacs.example.org/dicomweb/studies/"
    )
    assert (data / "index.sqlite").exists()
    found = httpx.get(url + "/studies", params={"PatientID": study.PatientID}).json()
    assert found[0]["0020000D"]["Value"] == [study.StudyInstanceUID]
    response = httpx.get(
        f"{url}/studies/{study.StudyInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    ((_, returned),) = parse_multipart(response.content, response.headers["content-type"])
    assert returned[128:] == files[0][128:]


def test_bad_environment_value_is_reported(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "serve", "--data-dir", str(tmp_path)],
        env={**os.environ, "DICOMWEB_PORT": "eighty"},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"DICOMWEB_PORT must be an integer" in result.stderr


def test_migrate_command_on_postgresql(pg_database_url: str) -> None:
    command = [sys.executable, "-m", "dicomweb_server", "migrate"]
    env = {**os.environ, "DICOMWEB_DATABASE_URL": pg_database_url}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    versions = sorted(int(p.name[:3]) for p in _MIGRATIONS.glob("*.sql"))
    assert f"applied migrations {versions}" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert "applied migrations none" in again.stdout


def test_migrate_command_on_sqlite(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dicomweb_server", "migrate"]
    env = {**os.environ, "DICOMWEB_DATABASE_URL": f"sqlite://{tmp_path}/index.sqlite"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.sqlite").exists()
