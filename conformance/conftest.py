"""Black-box DICOMweb conformance suite: HTTP only, against $DICOMWEB_CONFORMANCE_URL.

Without a URL, the session starts `python -m dicomweb_server serve` on a free loopback port
with an empty data folder, and stops it afterwards. Nothing here imports the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomdata import StoredStudy, store_study


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    """The DICOMweb root under test, without a trailing slash."""
    url = os.environ.get("DICOMWEB_CONFORMANCE_URL", "").strip()
    if url:
        yield url.rstrip("/")
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="dicomweb-conformance-") as data:
        log = Path(data) / "server.log"
        env = {**os.environ, "DICOMWEB_LOG_LEVEL": "warning"}
        command = [sys.executable, "-m", "dicomweb_server", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--data-dir", str(Path(data) / "store")]
        with log.open("wb") as output:
            server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
            root = f"http://127.0.0.1:{port}/dicomweb"
            try:
                _wait_until_serving(root, server, log)
                yield root
            finally:
                server.terminate()
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _wait_until_serving(root: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{root}/studies", params={"limit": "1"}, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    """A client whose relative URLs are resolved against the DICOMweb root."""
    with httpx.Client(base_url=base_url + "/", timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def study(http: httpx.Client) -> StoredStudy:
    """One study of two series (three native CT instances, one multi-frame), stored once."""
    return store_study(http)
