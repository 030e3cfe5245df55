"""Start and stop what the bench measures: our server (two backend pairs), Orthanc, the ceiling.

Everything listens on 127.0.0.1 only. Orthanc 1.10 cannot bind one address, so the bench runs
inside a private network namespace (`unshare -n`, loopback only) whenever Orthanc is installed;
`reexec_in_private_network` does that before anything starts.
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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ORTHANC_BINARY",
    "Server",
    "ceiling_server",
    "free_port",
    "in_private_network",
    "orthanc_available",
    "orthanc_server",
    "our_server",
    "postgres_and_s3",
    "reexec_in_private_network",
]

REPO = Path(__file__).resolve().parents[1]
ORTHANC_BINARY = "Orthanc"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_NETNS_ENV = "DICOMWEB_BENCH_NETNS"
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class Server:
    """A started server process (its own session, so its workers stop with it)."""

    name: str
    root: str  # the DICOMweb root URL
    process: subprocess.Popen[bytes]
    log_path: Path
    description: str = ""

    @property
    def pids(self) -> list[int]:
        """The process and its direct children (uvicorn workers), for profilers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *map(int, children.read_text().split())]
        except OSError:
            return [self.process.pid]

    def cpu_seconds(self) -> float:
        """User + system CPU used so far by the process and its direct children (workers, and
        their threads); a robust cost figure when wall-clock rates swing with machine load."""
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _spawn(
    name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def _wait_http(server: Server, url: str, timeout: float = START_TIMEOUT) -> None:
    started = time.monotonic()
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            server.stop()
            raise RuntimeError(
                f"{server.name} did not answer in {timeout:.0f}s:\n{server.log_tail()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def our_server(
    name: str,
    workdir: Path,
    *,
    workers: int,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> Iterator[Server]:
    """`dicomweb-server serve` on a free port with its data under `workdir` (or `data_dir`,
    another server's, to serve the same store)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    data = data_dir or workdir / "data"
    argv = [
        sys.executable, "-m", "dicomweb_server", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--data-dir", str(data), "--workers", str(workers),
    ]  # fmt: skip
    process = _spawn(name, argv, workdir / f"{name}.log", full_env, REPO)
    server = Server(name, f"http://127.0.0.1:{port}/dicomweb", process, workdir / f"{name}.log")
    try:
        _wait_http(server, f"{server.root}/studies?limit=1")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_and_s3() -> Iterator[dict[str, str]]:
    """Embedded PostgreSQL and a SeaweedFS S3 gateway (tests/services.py); yields server env."""
    sys.path.insert(0, str(REPO / "tests"))
    import services  # the same starters the tests and `make run-prod` use

    with services.embedded_postgres() as server_url, services.seaweedfs_s3() as endpoint:
        database_url = services.create_database(server_url)
        bucket = services.create_bucket(endpoint)
        env: dict[str, str] = {}
        unset = []
        for key, value in services.aws_environment(endpoint).items():
            if value is None:
                unset.append(key)
            else:
                env[key] = value
        for key in unset:
            os.environ.pop(key, None)
        env.update(
            DICOMWEB_DATABASE_URL=database_url,
            DICOMWEB_STORAGE_URL=f"s3://{bucket}/objects",
            DICOMWEB_S3_ENDPOINT_URL=endpoint.endpoint_url,
        )
        yield env


def orthanc_available() -> str | None:
    """Orthanc's version if it and its DICOMweb plugin are installed, else None."""
    binary = shutil.which(ORTHANC_BINARY)
    if binary is None or not ORTHANC_PLUGIN.is_file():
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "Orthanc"


def in_private_network() -> bool:
    return os.environ.get(_NETNS_ENV) == "1"


def reexec_in_private_network(argv: list[str]) -> None:
    """Replace this process by itself inside `unshare -n` (loopback only); root only."""
    if in_private_network() or os.geteuid() != 0 or shutil.which("unshare") is None:
        return
    env = {**os.environ, _NETNS_ENV: "1"}
    script = 'ip link set lo up 2>/dev/null || true; exec "$@"'
    os.execvpe(
        "unshare",
        ["unshare", "-n", "--", "sh", "-c", script, "sh", sys.executable, "-m", "bench", *argv],
        env,
    )


def orthanc_config(storage: Path, port: int, threads: int) -> dict[str, object]:
    """A throw-away Orthanc: no DIMSE, no auth, DICOMweb on, metadata as the plugin defaults."""
    return {
        "Name": "bench",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpThreadsCount": threads,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "Plugins": [str(ORTHANC_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


@contextlib.contextmanager
def orthanc_server(workdir: Path, storage: Path, *, threads: int = 50) -> Iterator[Server]:
    """Orthanc with its DICOMweb plugin on a free port; only call in a private network."""
    if not in_private_network():
        raise RuntimeError("Orthanc listens on every interface: run it inside `unshare -n`")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(storage, port, threads), indent=2))
    log = workdir / "orthanc.log"
    process = _spawn("orthanc", [ORTHANC_BINARY, str(config)], log, dict(os.environ), workdir)
    server = Server("orthanc", f"http://127.0.0.1:{port}/dicom-web", process, log)
    try:
        _wait_http(server, f"http://127.0.0.1:{port}/system")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def ceiling_server(folder: Path, *, workers: int) -> Iterator[Server]:
    """The replay server (bench/ceiling.py) over a recorded folder."""
    port = free_port()
    argv = [sys.executable, "-m", "bench", "ceiling", str(folder), str(port), str(workers)]
    log = folder / "ceiling.log"
    process = _spawn("ceiling", argv, log, dict(os.environ), REPO)
    server = Server("ceiling", f"http://127.0.0.1:{port}/dicomweb", process, log)
    try:
        _wait_http(server, f"http://127.0.0.1:{port}/ping")
        yield server
    finally:
        server.stop()


def create_api_key(data_dir: Path, name: str, *grants: str) -> str:
    """A new API key in the embedded store at `data_dir` (`dicomweb-server apikey create`)."""
    argv = [sys.executable, "-m", "dicomweb_server", "apikey", "create", "--name", name]
    for grant in grants:
        argv += ["--grant", grant]
    argv += ["--data-dir", str(data_dir)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True, cwd=REPO)
    return out.stdout.strip().splitlines()[-1]
