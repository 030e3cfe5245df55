"""Production backends under stress: several processes, concurrent stores, crashes and outages.

Each test runs real `python -m dicomweb_server serve` processes on 127.0.0.1 over the session's
PostgreSQL and S3 (or over a private PostgreSQL it stops and starts), bounds every wait, and
kills every process it started, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import services
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from index_cases import TcpProxy

# Servers behind one public name share their DICOMWEB_BASE_URL, so their answers are comparable.
ROOT = "http://dicomweb.test/dicomweb"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PREAMBLE = 128
START_TIMEOUT = 45.0  # seconds for a server (all its workers) to answer
REQUEST_TIMEOUT = 30.0  # seconds for any single request
FAULT_ANSWER_SECONDS = 5.0  # a backend outage must be reported at least this fast
RECOVERY_TIMEOUT = 20.0  # seconds for a server to heal once its backend is back
NO_KEEPALIVE = {"Connection": "close"}  # a fresh connection per request: any worker may answer

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_INSTANCES, STUDY_SERIES, SERIES_INSTANCES = "00201208", "00201206", "00201209"


# --- instances -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One instance a test sends, as Part 10 bytes with its UIDs."""

    study: str
    series: str
    sop: str
    data: bytes

    @property
    def stored(self) -> bytes:
        """What the server keeps: the same bytes with the preamble zeroed."""
        return b"\0" * PREAMBLE + self.data[PREAMBLE:]

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def make_instances(
    count: int,
    studies: int = 1,
    series_per_study: int = 1,
    *,
    rows: int = 8,
    columns: int = 8,
    frames: int = 1,
) -> list[Sent]:
    """`count` instances dealt round-robin over studies and their series; distinct pixels."""
    study_uids = [uid() for _ in range(studies)]
    series_uids = [[uid() for _ in range(series_per_study)] for _ in study_uids]
    sent = []
    for n in range(count):
        study = n % studies
        series = series_uids[study][(n // studies) % series_per_study]
        ds = ct_dataset(
            study_uids[study],
            series,
            rows=rows,
            columns=columns,
            frames=frames,
            instance_number=n + 1,
            seed=n,
            patient_id=f"PAT-{study}",
        )
        # A non-zero preamble shows the server zeroes it and keeps everything after it intact.
        data = bytearray(to_part10(ds))
        data[:PREAMBLE] = bytes(range(PREAMBLE))
        sent.append(Sent(ds.StudyInstanceUID, series, ds.SOPInstanceUID, bytes(data)))
    return sent


def blob_key(instance: Sent) -> str:
    """Where the server keeps an instance: site/study/series/instance/<sha256 of content>."""
    digest = hashlib.sha256(instance.stored).hexdigest()[:32]
    return f"objects/default/{instance.study}/{instance.series}/{instance.sop}/{digest}.dcm"


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


# --- server processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(
    data_dir: Path,
    *,
    database_url: str | None = None,
    bucket: str | None = None,
    endpoint: services.S3Endpoint | None = None,
    s3_endpoint_url: str | None = None,
    **settings: str,
) -> dict[str, str]:
    """The environment of a server process: embedded pair, or PostgreSQL and/or S3 if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update(
        DICOMWEB_DATA_DIR=str(data_dir),
        DICOMWEB_BASE_URL=ROOT,
        DICOMWEB_BACKEND_TIMEOUT="10",
        PYTHONUNBUFFERED="1",
    )
    if database_url is not None:
        env["DICOMWEB_DATABASE_URL"] = database_url
    if endpoint is not None:
        assert bucket is not None
        for name, setting in services.aws_environment(endpoint).items():
            if setting is None:
                env.pop(name, None)
            else:
                env[name] = setting
        env["DICOMWEB_STORAGE_URL"] = f"s3://{bucket}/objects"
        env["DICOMWEB_S3_ENDPOINT_URL"] = s3_endpoint_url or endpoint.endpoint_url
    env.update({f"DICOMWEB_{name.upper()}": text for name, text in settings.items()})
    return env


@dataclass
class Server:
    """A running `dicomweb_server serve` process (and its workers)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_unhandled_errors(self) -> None:
        """No request ended in an unexpected exception (a 500, or a stream uvicorn cut off)."""
        log = self.log()
        for sign in ("Exception in ASGI application", "failed unexpectedly", "response stream"):
            assert sign not in log, log[-4000:]
        assert re.search(r" (GET|POST) \S+ 5(?!03)\d\d ", log) is None, log[-4000:]

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", self.log())]

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and any workers) and reap it."""
        with suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_server(env: dict[str, str], log_path: Path, *, workers: int = 1) -> Server:
    """Start a server without waiting for it; pair with `wait_ready` and `Server.kill`."""
    port = free_port()
    argv = [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(port)]
    argv += ["--workers", str(workers)]  # explicit: the default is one per core
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: workers die with it in kill()
        )
    return Server(f"http://127.0.0.1:{port}/dicomweb", process, log_path)


def wait_ready(server: Server, *, workers: int = 1) -> None:
    """Until QIDO answers 200 and every worker reports its application started."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            answered = httpx.get(f"{server.url}/studies?limit=1", timeout=2).status_code == 200
        except httpx.TransportError:
            answered = False
        if answered and server.log().count("Application startup complete.") >= workers:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready in {START_TIMEOUT}s:\n{server.log()[-4000:]}")
        time.sleep(0.1)


@contextmanager
def serving(*envs: dict[str, str], log_dir: Path, workers: int = 1) -> Iterator[list[Server]]:
    """Servers started together, one per environment, all killed on the way out."""
    with ExitStack() as stack:
        servers = []
        for n, env in enumerate(envs):
            server = start_server(
                env, log_dir / f"server-{n}-{time.monotonic_ns()}.log", workers=workers
            )
            stack.callback(server.kill)
            servers.append(server)
        for server in servers:
            wait_ready(server, workers=workers)
        yield servers


def client(*, keepalive: bool = True) -> httpx.Client:
    return httpx.Client(timeout=REQUEST_TIMEOUT, headers=None if keepalive else NO_KEEPALIVE)


# --- DICOMweb calls ----------------------------------------------------------------------------


def stow(http: httpx.Client, url: str, instances: list[Sent]) -> httpx.Response:
    body, content_type = multipart_body([i.data for i in instances])
    return http.post(f"{url}/studies", content=body, headers={"Content-Type": content_type})


def assert_stored(response: httpx.Response, instances: list[Sent]) -> None:
    """A 200 whose ReferencedSOPSequence names exactly these instances and nothing failed."""
    assert response.status_code == 200, (response.status_code, response.text)
    result = response.json()
    referenced = [value(item, "00081155") for item in result["00081199"]["Value"]]
    assert sorted(referenced) == sorted(i.sop for i in instances)
    assert "00081198" not in result  # FailedSOPSequence


def qido(http: httpx.Client, url: str, resource: str, **params: str) -> list[dict[str, Any]]:
    response = http.get(f"{url}{resource}", params={"limit": "10000", **params})
    assert response.status_code == 200, (response.status_code, response.text)
    rows: list[dict[str, Any]] = response.json() if response.content else []
    return rows


def retrieve(http: httpx.Client, url: str, path: str) -> dict[str, bytes]:
    """WADO-RS of a study, series or instance: SOP Instance UID → returned bytes."""
    response = http.get(f"{url}{path}", headers={"Accept": ACCEPT_DICOM})
    assert response.status_code == 200, (response.status_code, response.text)
    parts = parse_multipart(response.content, response.headers["content-type"])
    found = {headers["content-location"].rsplit("/", 1)[1]: data for headers, data in parts}
    assert len(found) == len(parts)
    return found


def assert_index_consistent(http: httpx.Client, url: str, expected: list[Sent]) -> None:
    """QIDO shows each expected instance once, and every study and series count is exact."""
    instances = qido(http, url, "/instances")
    sops = [value(row, SOP_UID) for row in instances]
    assert len(sops) == len(set(sops)), "an instance is listed twice"
    assert sorted(sops) == sorted(i.sop for i in expected)
    per_study = Counter(i.study for i in expected)
    per_series = Counter(i.series for i in expected)
    series_of_study = Counter(study for study, _ in {(i.study, i.series) for i in expected})
    studies = qido(http, url, "/studies")
    assert {value(s, STUDY_UID): value(s, STUDY_INSTANCES) for s in studies} == per_study
    assert {value(s, STUDY_UID): value(s, STUDY_SERIES) for s in studies} == series_of_study
    series = qido(http, url, "/series")
    assert {value(s, SERIES_UID): value(s, SERIES_INSTANCES) for s in series} == per_series


def assert_retrievable(http: httpx.Client, url: str, expected: list[Sent]) -> None:
    """Every instance comes back whole: zeroed preamble, then exactly the bytes sent."""
    by_sop = {i.sop: i for i in expected}
    returned: dict[str, bytes] = {}
    for study in sorted({i.study for i in expected}):
        returned.update(retrieve(http, url, f"/studies/{study}"))
    assert returned.keys() == by_sop.keys()
    for sop, data in returned.items():
        assert data == by_sop[sop].stored, f"instance {sop} differs from what was sent"


# --- 1. two servers, one store -----------------------------------------------------------------


def test_two_servers_share_one_store(
    tmp_path: Path, pg_database_url: str, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """What one process stores, another over the same PostgreSQL and S3 serves identically."""
    env = server_env(
        tmp_path / "data", database_url=pg_database_url, bucket=s3_bucket, endpoint=s3_endpoint
    )
    sent = make_instances(6, studies=2, series_per_study=2, frames=3)
    with serving(env, env, log_dir=tmp_path) as (one, other), client() as http:
        assert_stored(stow(http, one.url, sent), sent)

        assert_index_consistent(http, other.url, sent)
        assert_retrievable(http, other.url, sent)
        for resource in ("/studies", "/series", "/instances"):
            params = {"includefield": "all"}
            assert qido(http, other.url, resource, **params) == qido(
                http, one.url, resource, **params
            )
        frame_bytes = 8 * 8 * 2  # rows x columns x 16 bits
        for instance in sent:
            metadata = [http.get(f"{s.url}{instance.path}/metadata") for s in (one, other)]
            assert [m.status_code for m in metadata] == [200, 200]
            assert metadata[0].json() == metadata[1].json()
            assert value(metadata[1].json()[0], SOP_UID) == instance.sop
            frames = []
            for s in (one, other):
                answer = http.get(
                    f"{s.url}{instance.path}/frames/1,3", headers={"Accept": ACCEPT_FRAMES}
                )
                assert answer.status_code == 200, answer.text
                parts = parse_multipart(answer.content, answer.headers["content-type"])
                frames.append([data for _, data in parts])
            # Pixel Data closes the file: its 3 frames are the last bytes sent.
            pixels = instance.data[-3 * frame_bytes :]
            assert frames[0] == frames[1] == [pixels[:frame_bytes], pixels[2 * frame_bytes :]]
        study = sent[0].study
        whole = [http.get(f"{s.url}/studies/{study}/metadata").json() for s in (one, other)]
        assert whole[0] == whole[1]
        assert len(whole[1]) == sum(1 for i in sent if i.study == study)


# --- 2. several workers ------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_every_worker_sees_a_store_as_soon_as_it_returns(
    tmp_path: Path, pg_database_url: str, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """With 4 uvicorn workers, a STOW that returned is visible to whichever worker answers next."""
    env = server_env(
        tmp_path / "data", database_url=pg_database_url, bucket=s3_bucket, endpoint=s3_endpoint
    )
    batches = [make_instances(2) for _ in range(3)]
    with serving(env, log_dir=tmp_path, workers=4) as (server,):
        workers = server.worker_pids()
        assert len(workers) == 4, server.log()
        before = {pid: _cpu_ticks(pid) for pid in workers}
        stored: list[Sent] = []

        def check(instance: Sent) -> None:
            with client(keepalive=False) as http:
                everything = [value(r, SOP_UID) for r in qido(http, server.url, "/instances")]
                assert sorted(everything) == sorted(i.sop for i in stored)
                assert retrieve(http, server.url, instance.path) == {instance.sop: instance.stored}

        with ThreadPoolExecutor(max_workers=6) as pool:
            for batch in batches:
                with client(keepalive=False) as http:
                    assert_stored(stow(http, server.url, batch), batch)
                stored.extend(batch)
                # Right after the STOW returned: 24 fresh connections, any worker may take each.
                list(pool.map(check, batch * 6))
        with client() as http:
            assert_index_consistent(http, server.url, stored)
        busy = [pid for pid in workers if _cpu_ticks(pid) - before[pid] >= 5]
        assert len(busy) >= 2, "requests were not spread over workers"


# --- 3. concurrent overlapping stores ----------------------------------------------------------


@pytest.mark.parametrize("pair", ["production", "embedded"])
def test_concurrent_overlapping_stores_keep_one_copy_and_exact_counts(
    pair: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """8 clients store overlapping subsets at once: no 5xx, each instance once, counts exact."""
    if pair == "production":
        endpoint: services.S3Endpoint = request.getfixturevalue("s3_endpoint")
        bucket: str = request.getfixturevalue("s3_bucket")
        env = server_env(
            tmp_path / "data",
            database_url=request.getfixturevalue("pg_database_url"),
            bucket=bucket,
            endpoint=endpoint,
        )
    else:
        env = server_env(tmp_path / "data")
    sent = make_instances(40, studies=3, series_per_study=2)
    rng = random.Random(1234)
    subsets = []
    for n in range(8):
        own = sent[n * 5 : n * 5 + 5]  # every instance is someone's, the rest overlaps at random
        others = rng.sample([i for i in sent if i not in own], 20)
        subset = own + others
        rng.shuffle(subset)
        subsets.append([subset[k : k + 5] for k in range(0, len(subset), 5)])
    barrier = threading.Barrier(len(subsets), timeout=REQUEST_TIMEOUT)

    def store_all(batches: list[list[Sent]]) -> list[tuple[httpx.Response, list[Sent]]]:
        with client() as http:
            barrier.wait()
            return [(stow(http, server.url, batch), batch) for batch in batches]

    with serving(env, log_dir=tmp_path) as (server,):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(subsets)) as pool:
            futures = [pool.submit(store_all, batches) for batches in subsets]
            outcomes = [o for f in futures for o in f.result(timeout=90)]
        elapsed = time.monotonic() - started
        assert [r.text for r, _ in outcomes if r.status_code >= 500] == []
        for response, batch in outcomes:
            assert_stored(response, batch)
        assert elapsed < 60, f"200 stores took {elapsed:.1f}s: contention or a deadlock"
        with client() as http:
            assert_index_consistent(http, server.url, sent)
            assert_retrievable(http, server.url, sent)
        if pair == "production":
            assert sorted(services.list_objects(endpoint, bucket)) == sorted(map(blob_key, sent))
        server.assert_no_unhandled_errors()


# --- 4. a crash in the middle of a STOW --------------------------------------------------------


def _referenced_keys(database_url: str) -> set[str]:
    """Object keys the index references, read straight from PostgreSQL."""
    import asyncpg

    async def fetch() -> set[str]:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            rows = await conn.fetch("SELECT blob_key FROM instances")
            return {f"objects/{row[0]}" for row in rows}  # the index keys are under the prefix
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:  # keep asyncio.run off pytest's loop
        return pool.submit(lambda: asyncio.run(fetch())).result(timeout=30)


def test_kill_9_during_stow_leaves_only_whole_instances(
    tmp_path: Path, pg_database_url: str, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """SIGKILL mid-STOW: what shows is whole, the sweep removes the rest, a re-STOW completes."""
    env = server_env(
        tmp_path / "data", database_url=pg_database_url, bucket=s3_bucket, endpoint=s3_endpoint
    )
    sent = make_instances(120, series_per_study=2, rows=128, columns=256)  # 64 KiB of pixels each
    by_sop = {i.sop: i for i in sent}
    body, content_type = multipart_body([i.data for i in sent])
    piece = len(body) // len(sent)
    outcome: list[object] = []

    def slow_body() -> Iterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]
            time.sleep(0.01)

    def send(url: str) -> None:
        try:
            with client() as http:
                response = http.post(
                    f"{url}/studies", content=slow_body(), headers={"Content-Type": content_type}
                )
            outcome.append(response.status_code)
        except httpx.TransportError as exc:
            outcome.append(exc)

    with serving(env, log_dir=tmp_path) as (server,), client() as http:
        sender = threading.Thread(target=send, args=(server.url,), daemon=True)
        sender.start()
        deadline = time.monotonic() + 30
        while len(qido(http, server.url, "/instances")) < 20:
            assert time.monotonic() < deadline, "the STOW made no progress"
            assert sender.is_alive(), outcome
            time.sleep(0.02)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        sender.join(30)
        assert not sender.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError), outcome

    with serving(env, log_dir=tmp_path) as (server,), client() as http:
        visible = [by_sop[value(row, SOP_UID)] for row in qido(http, server.url, "/instances")]
        assert 20 <= len(visible) < len(sent), "the kill did not land mid-way"
        assert_index_consistent(http, server.url, visible)
        assert_retrievable(http, server.url, visible)
        metadata = http.get(f"{server.url}/studies/{sent[0].study}/metadata").json()
        assert sorted(value(m, SOP_UID) for m in metadata) == sorted(i.sop for i in visible)
        # The first unlisted ones in sending order (the one in flight among them) are not there.
        hidden = [i for i in sent if i not in visible][:5]
        for instance in hidden:
            for suffix, accept in (("", ACCEPT_DICOM), ("/metadata", "application/dicom+json")):
                answer = http.get(
                    f"{server.url}{instance.path}{suffix}", headers={"Accept": accept}
                )
                assert answer.status_code == 404, (suffix, answer.status_code)

        # Every object is either referenced or left by the instance the kill interrupted.
        objects = services.list_objects(s3_endpoint, s3_bucket)
        referenced = _referenced_keys(pg_database_url)
        assert referenced == {blob_key(i) for i in visible}
        assert referenced <= objects.keys()
        assert objects.keys() <= {blob_key(i) for i in sent}
        sweep = subprocess.run(
            [sys.executable, "-m", "dicomweb_server", "sweep-orphans", "--min-age", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sweep.returncode == 0, sweep.stdout + sweep.stderr
        assert f"{len(objects) - len(referenced)} orphaned" in sweep.stdout, sweep.stdout
        assert services.list_objects(s3_endpoint, s3_bucket).keys() == referenced
        assert services.pending_uploads(s3_endpoint, s3_bucket) == []

        # The client retries the whole request: everything is stored, nothing twice.
        assert_stored(stow(http, server.url, sent), sent)
        assert_index_consistent(http, server.url, sent)
        objects = services.list_objects(s3_endpoint, s3_bucket)
        assert objects.keys() == {blob_key(i) for i in sent}
        assert _referenced_keys(pg_database_url) == objects.keys()


# --- 5. backend outages -------------------------------------------------------------------------


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(what: str, response: httpx.Response, seconds: float, backend: str) -> None:
    """A quick 503 whose JSON reason names the backend at fault, and nothing of its internals
    (issue 23: no endpoint, bucket, prefix, key or SQL detail reaches the client)."""
    assert response.status_code == 503, (what, response.status_code, response.text)
    assert seconds < FAULT_ANSWER_SECONDS, f"{what} took {seconds:.1f}s to report the outage"
    reason = response.json()["reason"]
    assert backend in reason, (what, reason)
    assert "request id" in reason
    for internal in ("127.0.0.1", "http://", "test-", "objects/", "SQLSTATE", "PostgreSQL", "S3 "):
        assert internal not in reason, (what, reason)


def test_postgres_outage_is_a_quick_503_and_heals_by_itself(
    tmp_path: Path, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """PostgreSQL stopped: 503s with a reason, at once; started again: served, nothing lost."""
    sent = make_instances(4, frames=2)
    before, after = sent[:3], sent[3:]
    with services.restartable_postgres() as postgres:
        env = server_env(
            tmp_path / "data",
            database_url=services.create_database(postgres.url),
            bucket=s3_bucket,
            endpoint=s3_endpoint,
        )
        with serving(env, log_dir=tmp_path) as (server,), client() as http:
            assert_stored(stow(http, server.url, before), before)

            postgres.stop()
            instance = before[0]
            calls = {
                "QIDO": lambda: http.get(f"{server.url}/studies"),
                "STOW": lambda: stow(http, server.url, after),
                "WADO": lambda: http.get(
                    f"{server.url}{instance.path}", headers={"Accept": ACCEPT_DICOM}
                ),
                "metadata": lambda: http.get(f"{server.url}{instance.path}/metadata"),
                "frames": lambda: http.get(f"{server.url}{instance.path}/frames/1"),
            }
            for _ in range(2):  # while the pool still tries to reconnect, and after
                for what, call in calls.items():
                    assert_unavailable(what, *_timed(call), "the index")

            postgres.start()
            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while http.get(f"{server.url}/studies").status_code != 200:
                assert time.monotonic() < deadline, "the server did not recover"
                time.sleep(0.1)
            assert_index_consistent(http, server.url, before)
            assert_retrievable(http, server.url, before)
            assert_stored(stow(http, server.url, after), after)
            assert_index_consistent(http, server.url, sent)
            assert_retrievable(http, server.url, sent)
            server.assert_no_unhandled_errors()


@contextmanager
def s3_up_and_down(
    tmp_path: Path, database_url: str, endpoint: services.S3Endpoint, bucket: str
) -> Iterator[tuple[Server, Server]]:
    """Two servers on one index: one reaches S3; the other reached it through a relay that is
    cut once it has started (a server refuses to start while its S3 is unreachable)."""
    host_port = endpoint.endpoint_url.rsplit("/", 1)[-1]
    host, port = host_port.rsplit(":", 1)
    relay = TcpProxy(host, int(port))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        relayed = asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        up = server_env(
            tmp_path / "up", database_url=database_url, bucket=bucket, endpoint=endpoint
        )
        down = server_env(
            tmp_path / "down",
            database_url=database_url,
            bucket=bucket,
            endpoint=endpoint,
            s3_endpoint_url=f"http://127.0.0.1:{relayed}",
        )
        with serving(up, down, log_dir=tmp_path) as (good, bad):
            asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(10)
            yield good, bad
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_s3_outage_fails_stow_and_frames_with_503_while_qido_answers(
    tmp_path: Path, pg_database_url: str, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """S3 unreachable: STOW and frames are quick 503s naming S3; the index still answers."""
    sent = make_instances(3, frames=2)
    extra = make_instances(1)
    with (
        s3_up_and_down(tmp_path, pg_database_url, s3_endpoint, s3_bucket) as (good, bad),
        client() as http,
    ):
        assert_stored(stow(http, good.url, sent), sent)
        instance = sent[0]

        assert_unavailable("STOW", *_timed(lambda: stow(http, bad.url, extra)), "the object store")
        frames = http.get(f"{bad.url}{instance.path}/frames/1", headers={"Accept": ACCEPT_FRAMES})
        assert_unavailable("frames", frames, frames.elapsed.total_seconds(), "the object store")
        assert_index_consistent(http, bad.url, sent)  # QIDO: index only
        metadata = http.get(f"{bad.url}{instance.path}/metadata")
        assert metadata.status_code == 200
        assert value(metadata.json()[0], SOP_UID) == instance.sop
        # Nothing of the refused STOW became visible anywhere.
        assert_index_consistent(http, good.url, sent)
        assert_retrievable(http, good.url, sent)


def test_issue23_s3_outage_fails_wado_with_503_naming_no_internals(
    tmp_path: Path, pg_database_url: str, s3_endpoint: services.S3Endpoint, s3_bucket: str
) -> None:
    """S3 unreachable: WADO of an indexed instance is a 503 with a reason, not a cut-off 200."""
    sent = make_instances(2)
    with (
        s3_up_and_down(tmp_path, pg_database_url, s3_endpoint, s3_bucket) as (good, bad),
        client() as http,
    ):
        assert_stored(stow(http, good.url, sent), sent)
        for path in (sent[0].path, f"/studies/{sent[0].study}"):
            started = time.monotonic()
            url = f"{bad.url}{path}"
            with http.stream("GET", url, headers={"Accept": ACCEPT_DICOM}) as response:
                try:
                    response.read()
                    complete = True
                except httpx.TransportError:
                    complete = False  # the status was sent, then the stream broke
            assert (response.status_code, complete) == (503, True), path
            assert time.monotonic() - started < FAULT_ANSWER_SECONDS
            assert "the object store" in response.json()["reason"]
