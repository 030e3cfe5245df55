"""Our server and a real Orthanc with its DICOMweb plugin, started side by side on loopback.

`make interop` runs this folder inside a private network namespace (`unshare -n`, loopback
only): Orthanc 1.10 cannot bind one address and would otherwise listen on every interface.
Each process gets a free port and a temporary data folder, runs in its own session (killed with
its whole group afterwards, and by the kernel if pytest dies first), and logs to
interop/results/ (server.log, orthanc.log). Nothing here imports the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SERVER_NAME = "ours"  # our server's name in Orthanc's DicomWeb.Servers
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A child hook asking the kernel to kill the child when pytest exits, however it exits."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


@contextlib.contextmanager
def _process(
    argv: list[str], log: Path, env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` with its output in `log`; stop it and its children when the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `url` until it answers below 500; fail with the log if the process exits or hangs."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {START_TIMEOUT:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:]


def _dicomweb_plugin() -> str:
    """The DICOMweb plugin's path: $ORTHANC_DICOMWEB_PLUGIN, else from the Debian package."""
    path = os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "").strip()
    if path:
        return path
    try:
        files = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError("orthanc-dicomweb is not installed: `make interop` installs it") from exc
    # The package ships the library under /usr/lib/orthanc and links it from plugins/.
    plugins = [
        f for f in files if "/plugins/" in f and Path(f).name.startswith("libOrthancDicomWeb")
    ]
    if not plugins:
        raise RuntimeError(f"no DICOMweb plugin among the files of orthanc-dicomweb: {files}")
    return plugins[0]


@pytest.fixture(scope="session")
def results() -> Path:
    """interop/results/, emptied of the previous run's logs."""
    RESULTS.mkdir(exist_ok=True)
    for old in RESULTS.glob("*.log"):
        old.unlink()
    return RESULTS


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A temporary folder for both servers' data, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dicomweb-interop-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def ours(results: Path, scratch: Path) -> Iterator[str]:
    """`dicomweb-server serve` on a free loopback port; yields its DICOMweb root URL."""
    port = _free_port()
    argv = [sys.executable, "-m", "dicomweb_server", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--data-dir", str(scratch / "ours"), "--workers", "1"]
    env = {**os.environ, "DICOMWEB_LOG_LEVEL": "info"}
    log = results / "server.log"
    root = f"http://127.0.0.1:{port}/dicomweb"
    with _process(argv, log, env, REPO) as process:
        _wait_until_serving(f"{root}/studies?limit=1", process, log)
        yield root


@pytest.fixture(scope="session")
def orthanc(ours: str, results: Path, scratch: Path) -> Iterator[httpx.Client]:
    """Orthanc with its DICOMweb plugin, our server configured as its DICOMweb server `ours`;
    yields a client for Orthanc's REST API."""
    # $ORTHANC, else on the PATH, else where Debian puts it (/usr/sbin: not on a user's PATH).
    binary = os.environ.get("ORTHANC") or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"Orthanc is not installed at {binary}: `make interop` installs it")
    port = _free_port()
    storage = scratch / "orthanc"
    storage.mkdir()
    config = {
        "Name": "interop",
        "HttpPort": port,
        "DicomServerEnabled": False,  # no DIMSE port
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "SaveJobs": False,
        "Plugins": [_dicomweb_plugin()],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Servers": {SERVER_NAME: [f"{ours}/"]},
        },
    }
    config_path = storage / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = results / "orthanc.log"
    with _process(
        [binary, "--verbose", str(config_path)], log, dict(os.environ), storage
    ) as process:
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(f"{base}/system", process, log)
        with httpx.Client(base_url=base, timeout=60) as client:
            # Orthanc starts without a plugin it cannot load: say so here, not as a 404 later.
            if "dicom-web" not in client.get("/plugins").json():
                raise RuntimeError(f"Orthanc did not load its DICOMweb plugin:\n{_tail(log)}")
            yield client


@pytest.fixture(scope="session")
def plugin() -> str:
    """The path, on Orthanc, of its DICOMweb client for our server (`/stow`, `/qido`, ...)."""
    return f"/dicom-web/servers/{SERVER_NAME}"
