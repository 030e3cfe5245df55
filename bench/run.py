"""`make bench`: start every server, load the corpora, then measure plan by plan, interleaved.

Order of a run: wait for a quiet machine (optional); generate or read the corpus; preload the
QIDO corpus into our SQLite and PostgreSQL indexes directly (and into Orthanc over STOW-RS);
start our server on both backend pairs, Orthanc and, after recording our responses, the
ceiling; store the imaging corpus into each over STOW-RS; then, for each plan, run round 1 on
every server, round 2 on every server in the reverse order, and so on, so that noise hits
all servers alike. Results go to bench/results/latest.{json,md}.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import client
from bench.ceiling import Recorded, request_key, save_manifest
from bench.client import Req, Result
from bench.corpus import Corpus, CorpusSizes, load_corpus, with_round
from bench.plans import Plan, ViewerMix, build_plans
from bench.qido_corpus import QidoSizes, QidoTemplate, iter_instances, load_index
from bench.report import SERVERS, metric_results, render_markdown, results_document
from bench.s3_replay import S3Replay, s3_replay
from bench.servers import (
    REPO,
    Server,
    ceiling_server,
    create_api_key,
    in_private_network,
    orthanc_available,
    orthanc_server,
    our_server,
    postgres_and_s3,
)
from bench.stats import Summary, percentile, summarize
from dicomweb_server.config import Settings
from dicomweb_server.domain.identifiers import DEFAULT_SITE

__all__ = ["Options", "log", "run", "wait_for_quiet"]

CACHE = REPO / ".bench" / "cache"
RESULTS = REPO / "bench" / "results"
_T0 = time.monotonic()
_MIN_SAMPLES = 3


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    """Everything a run can vary; the defaults are `make bench`."""

    corpus: CorpusSizes = field(default_factory=CorpusSizes)
    qido: QidoSizes = field(default_factory=QidoSizes)
    rounds: int = 3
    stow_rounds: int = 2
    workers: int = 0  # 0: one per core
    with_pg: bool = True
    with_orthanc: bool = True
    with_ceiling: bool = True
    with_auth: bool = False  # also ours with DICOMWEB_AUTH=apikey over the same store
    only: tuple[str, ...] = ()  # metric id prefixes; empty: all
    qido_repeat: int = 20
    wado_repeat: int = 16
    mix_seconds: float = 6.0
    round_budget: float = 5.0  # seconds of requests per server per round, at least 3 requests
    mix_clients: int = 16
    wait_load: float = 1.0
    wait_max: float = 0.0
    profile: tuple[str, ...] = ()  # metric ids to run under py-spy (ours, both pairs)
    save: bool = True
    keep: bool = False
    mode: str = "default"


# --- machine --------------------------------------------------------------------------------


_SETTLE_BUSY = 0.15  # a plan starts once the machine was at most this busy for half a second
_SETTLE_MAX = 15.0  # ...or after this many seconds
_SETTLE_EACH = ("transfer", "stow")  # plans whose every server round waits for quiet too
_SETTLE_EACH_MAX = 5.0


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Poll the 1-minute load average until below `threshold` or `max_wait` seconds pass."""
    started = time.monotonic()
    load = load_average()
    announced = False
    while load >= threshold and time.monotonic() - started < max_wait:
        if not announced:
            log(f"load average {load:.2f} ≥ {threshold}: waiting up to {max_wait:.0f}s")
            announced = True
        time.sleep(5)
        load = load_average()
    return time.monotonic() - started, load


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


async def settle(max_busy: float = _SETTLE_BUSY, max_wait: float = _SETTLE_MAX) -> float:
    """Wait (up to `max_wait` s) for a half second in which the machine is at most `max_busy`
    busy, so the previous plan's leftovers (a checkpoint, autovacuum, a server's housekeeping)
    do not land in the next plan's first rounds; returns the seconds waited."""
    started = time.monotonic()
    while True:
        busy0, total0 = _cpu_busy()
        await asyncio.sleep(0.5)
        busy1, total1 = _cpu_busy()
        if total1 == total0 or (busy1 - busy0) / (total1 - total0) <= max_busy:
            return time.monotonic() - started
        if time.monotonic() - started >= max_wait:
            return time.monotonic() - started


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("starlette", "uvicorn", "uvloop", "httptools", "orjson", "pydicom", "asyncpg",
                 "aiobotocore", "aiohttp", "dicomweb-server"):  # fmt: skip
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


# --- preloading the QIDO corpus -------------------------------------------------------------


def _schema_hash() -> str:
    folder = REPO / "dicomweb_server" / "index" / "migrations"
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.sql")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


async def preload_sqlite(path: Path, sizes: QidoSizes) -> float:
    """The QIDO corpus in a fresh index.sqlite (copied from the cache when present)."""
    from dicomweb_server.index.sqlite import SqliteInstanceIndex

    path.parent.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"qido-sqlite-{sizes.key()}-{_schema_hash()}.sqlite"
    started = time.monotonic()
    if not cached.is_file():
        # Unique per process: two runs at once must not build into (or publish) one file.
        fresh = cached.with_suffix(f".{os.getpid()}.partial")
        fresh.unlink(missing_ok=True)
        fresh.parent.mkdir(parents=True, exist_ok=True)
        index = await SqliteInstanceIndex.open(fresh)
        try:
            await load_index(index, sizes, concurrency=16)
        finally:
            await index.close()
        fresh.rename(cached)
    shutil.copyfile(cached, path)
    return time.monotonic() - started


async def preload_postgres(url: str, sizes: QidoSizes, concurrency: int = 16) -> float:
    from dicomweb_server.index.postgres import PostgresInstanceIndex

    started = time.monotonic()
    index = await PostgresInstanceIndex.open(url, max_size=concurrency)
    try:
        created = await load_index(index, sizes, concurrency=concurrency)
        # As `dicomweb-server import` does after a bulk load: the corpus stands for a store,
        # whose statistics autovacuum would have kept; a run starts seconds after the load.
        await index.refresh_statistics(created)
    finally:
        await index.close()
    return time.monotonic() - started


def small_instances(first_study: int, studies: int) -> list[bytes]:
    """Part 10 files of the QIDO template for studies [first_study, first_study + studies)."""
    template = QidoTemplate()
    sizes = QidoSizes(studies=first_study + studies)
    return [template.part10_for(item) for item in iter_instances(sizes, first_study)]


async def stow_files(
    session: aiohttp.ClientSession,
    server: Server,
    files: list[bytes],
    *,
    per_request: int,
    concurrency: int,
    max_body: int = 64 << 20,
) -> float:
    """Store files over STOW-RS (bodies up to `max_body`); raise if any request fails."""
    started = time.monotonic()
    batch: list[bytes] = []
    reqs: list[Req] = []
    for data in files:
        if batch and (len(batch) >= per_request or sum(map(len, batch)) + len(data) > max_body):
            reqs += client.stow_requests(batch, len(batch))
            batch = []
        batch.append(data)
    if batch:
        reqs += client.stow_requests(batch, len(batch))
    _, results = await client.stow(session, server.root, reqs, concurrency)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(
            f"storing the corpus into {server.name} failed: {bad[0].status} {bad[0].error}\n"
            f"{server.log_tail()}"
        )
    return time.monotonic() - started


# --- probing and recording ------------------------------------------------------------------


def _count(result: Result) -> int | None:
    if result.status == 204:
        return 0
    try:
        body = orjson.loads(result.body or b"")
    except orjson.JSONDecodeError:
        return None
    return len(body) if isinstance(body, list) else None


async def record_ceiling(
    session: aiohttp.ClientSession,
    ours: Server,
    folder: Path,
    reqs: list[Req],
    stow_probe: Req,
) -> int:
    """Save our answer to each request (and to one STOW) for the replay server."""
    os.makedirs(folder, exist_ok=True)
    entries: dict[str, Recorded] = {}
    root_path = "/" + ours.root.split("/", 3)[3]
    seen: set[str] = set()
    for req in [*reqs, stow_probe]:
        key = request_key(req.method, root_path + req.path, req.accept)
        if key in seen:
            continue
        seen.add(key)
        result = await client.fetch(session, ours.root, req, keep=True)
        if not result.ok:
            continue
        name = f"r{len(entries):06d}.bin"
        (folder / name).write_bytes(result.body or b"")
        entries[key] = Recorded(result.status, result.content_type, name, result.size)
    save_manifest(folder, entries)
    return len(entries)


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Collected:
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    extra_samples: dict[str, list[float]] = field(default_factory=dict)

    def fail(self, result: Result) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = result.error or f"HTTP {result.status}"

    def add_extra(self, name: str, value: float) -> None:
        self.extra_samples.setdefault(name, []).append(value)


async def _latency_round(
    session: aiohttp.ClientSession,
    root: str,
    plan: Plan,
    reqs: list[Req],
    into: Collected,
    *,
    as_rate: bool,
    budget: float,
) -> None:
    if plan.probe is not None:  # untimed warm-up on an already answered request
        await client.fetch(session, root, reqs[0] if as_rate else plan.probe)
    # A slow server gets fewer requests rather than a longer run: stop after `budget` seconds
    # once a few samples are in (the count is in the JSON as n).
    started = time.perf_counter()
    results = []
    for req in reqs:
        if len(results) >= _MIN_SAMPLES and time.perf_counter() - started > budget:
            break
        results.append(await client.fetch(session, root, req))
    for result in results:
        if not result.ok:
            into.fail(result)
        elif as_rate:
            into.samples.append(result.size / result.seconds / 1e6)
        else:
            into.samples.append(result.seconds * 1000)


async def _replay_round(replay: S3Replay, plan: Plan, r: int, into: Collected) -> None:
    """As many whole fetches of the study's objects as the plan has study retrieves."""
    for _ in plan.requests(r):
        size, seconds = await replay.fetch_all()
        into.samples.append(size / seconds / 1e6)


async def _stow_round(
    server: Server,
    plan: Plan,
    files: list[bytes],
    into: Collected,
) -> None:
    reqs = client.stow_requests(files, plan.per_request)
    cpu_before = server.cpu_seconds()
    # Each round is new uploaders on new connections. Reusing the run's pooled connections
    # made the outcome depend on earlier plans: which of them the pool hands out decides how
    # the requests fall on a multi-process server's workers (6 requests of 50 on 4 + 2).
    async with client.new_session() as uploaders:
        wall, results = await client.stow(uploaders, server.root, reqs, plan.concurrency)
    cpu = server.cpu_seconds() - cpu_before
    bad = [r for r in results if not r.ok]
    for result in bad:
        into.fail(result)
    if bad:
        return
    volume = sum(map(len, files))
    rate = len(files) / wall
    into.samples.append(rate if plan.metric.unit == "inst/s" else volume / wall / 1e6)
    into.add_extra("inst_per_s", rate)
    into.add_extra("mb_per_s", volume / wall / 1e6)
    # The server's own processes only: PostgreSQL and the S3 gateway are not counted.
    into.add_extra("server_cpu_ms_per_instance", cpu / len(files) * 1000)
    for result in results:
        into.add_extra("request_ms", result.seconds * 1000)


async def _mix_round(root: str, mix: ViewerMix, seed: int, into: Collected) -> None:
    """`mix.clients` viewers, each running sessions back to back until the time is up."""
    deadline = time.perf_counter() + mix.seconds
    latencies: list[float] = []
    sessions: list[float] = []
    done = 0
    async with client.new_session(mix.clients) as session:

        async def viewer(number: int) -> None:
            nonlocal done
            rng = random.Random(seed * 1000 + number)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                for req in mix.session(rng):
                    if time.perf_counter() >= deadline:
                        return
                    result = await client.fetch(session, root, req)
                    done += 1
                    if result.ok:
                        latencies.append(result.seconds * 1000)
                    else:
                        into.fail(result)
                sessions.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(viewer(n) for n in range(mix.clients)))
        wall = time.perf_counter() - started
    into.samples.append(done / wall)
    if latencies:
        into.add_extra("request_p50_ms", percentile(latencies, 50))
        into.add_extra("request_p95_ms", percentile(latencies, 95))
    if sessions:
        into.add_extra("session_p50_ms", percentile(sessions, 50))
        into.add_extra("session_p95_ms", percentile(sessions, 95))


@contextlib.contextmanager
def _profiled(server: Server, output: Path) -> Iterator[None]:
    """py-spy record on the server and its workers for the duration of the block."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy is not installed (pip install py-spy): profiling skipped")
        yield
        return
    argv = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses",
            "--rate", "200", "--format", "raw", "--output", str(output)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let py-spy attach
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


# Leaf frames of threads that wait (py-spy cannot always tell a thread blocked in C is idle).
# `Workers._work` is the SQLite index's threads waiting for a call (index/threads.py): a call
# they run is a Python frame below it.
_IDLE_LEAVES = frozenset(
    {"_worker", "Runner.run", "Connection._recv", "main", "Condition.wait", "Semaphore.acquire",
     "select", "_poll", "poll", "Event.wait", "Thread._wait_for_tstate_lock", "Workers._work"}
)  # fmt: skip


_OUR_MODULES = (
    "dicomweb_server", "starlette", "uvicorn", "sqlite", "asyncpg", "pydicom", "aiobotocore",
)  # fmt: skip


def profile_summary(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process"):
            frames = frames[1:]
        if frames and frames[0].startswith("thread"):
            frames = frames[1:]
        if not frames or frames[-1].split(" (")[0] in _IDLE_LEAVES:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "no busy samples"
    lines = [f"{total} busy samples (waiting threads left out)", "", "self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {count / total:6.1%}  {frame}")
    lines += ["", "inclusive (dicomweb_server, starlette, uvicorn, sqlite, asyncpg):"]
    ours = [kv for kv in inclusive.items() if any(k in kv[0] for k in _OUR_MODULES)]
    for frame, count in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {count / total:6.1%}  {frame}")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------


async def _measure(
    plans: list[Plan],
    mix: ViewerMix,
    servers: dict[str, Server],
    available: dict[str, dict[str, str]],
    corpus: Corpus,
    opts: Options,
    workdir: Path,
    replay: S3Replay | None = None,
) -> list[dict[str, Any]]:
    metrics = []
    names = [n for n in SERVERS if n in servers or (n == "s3_replay" and replay is not None)]
    async with client.new_session() as session:
        for plan_number, plan in enumerate(plans):
            metric = plan.metric
            unavailable = available.get(metric.id, {})
            active = [n for n in names if n not in unavailable]
            collected = {n: Collected() for n in names}
            for name, why in unavailable.items():
                collected[name].note = why
            rounds = opts.stow_rounds if plan.kind == "stow" else opts.rounds
            settled = await settle()
            started = time.monotonic()
            for r in range(rounds):
                order = active if r % 2 == 0 else list(reversed(active))
                for name in order:
                    if plan.kind in _SETTLE_EACH:
                        # A heavy plan leaves work behind (SeaweedFS after a study retrieve,
                        # writeback after a STOW) that would land on whoever runs next.
                        await settle(max_wait=_SETTLE_EACH_MAX)
                    if name == "s3_replay":
                        assert replay is not None
                        await _replay_round(replay, plan, r, collected[name])
                        continue
                    server = servers[name]
                    profiling = name in ("ours", "ours_pg") and metric.id in opts.profile
                    output = workdir / f"profile-{name}-{metric.id}-r{r}.txt"
                    summary_file = output.with_suffix(".summary.txt")
                    guard = _profiled(server, output) if profiling else contextlib.nullcontext()
                    with guard:
                        await _run_round(
                            session, server, name, plan, plan_number, r, mix, corpus, opts,
                            collected[name],
                        )  # fmt: skip
                    if profiling and output.exists():
                        summary = profile_summary(output)
                        summary_file.write_text(summary)
                        log(f"profile of {metric.id} on {name}, round {r}: {output}")
            summaries = {}
            for name in names:
                c = collected[name]
                if name in unavailable:
                    summaries[name] = Summary(note=c.note)
                    continue
                s = summarize(c.samples, metric.higher_is_better, errors=c.errors)
                if c.first_error:
                    s.note = c.first_error[:200]
                for key, values in c.extra_samples.items():
                    s.extra[key] = float(f"{statistics.median(values):.4g}")
                s.extra.update(c.extra)
                summaries[name] = s
            for name, values in available.get(f"{metric.id}#extra", {}).items():
                if name in summaries:
                    summaries[name].extra.update(json.loads(values))
            entry = metric_results(metric, summaries)
            entry["settled_s"] = round(settled, 1)
            metrics.append(entry)
            shown = {n: entry["results"][n]["median"] for n in entry["results"]}
            log(
                f"{metric.id}: {shown} ({time.monotonic() - started:.1f}s,"
                f" after {settled:.1f}s settling)"
            )
    return metrics


async def _run_round(
    session: aiohttp.ClientSession,
    server: Server,
    name: str,
    plan: Plan,
    plan_number: int,
    r: int,
    mix: ViewerMix,
    corpus: Corpus,
    opts: Options,
    into: Collected,
) -> None:
    if plan.kind in ("latency", "transfer"):
        reqs = plan.requests(r)
        if name == "ceiling" and plan.ceiling_alias is not None:
            reqs = [plan.ceiling_alias(q) for q in reqs]
        await _latency_round(
            session, server.root, plan, reqs, into, as_rate=plan.kind == "transfer",
            budget=opts.round_budget,
        )  # fmt: skip
    elif plan.kind == "stow":
        stow_round = 1 + plan_number * 10 + r
        if plan.stow_files == "ct":
            files = [with_round(data, stow_round) for data in corpus.series["ct"].files]
        else:
            files = small_instances(2_000_000 + stow_round * 1000, 200)
        await _stow_round(server, plan, files, into)
    elif plan.kind == "mix":
        await _mix_round(server.root, mix, r, into)
    else:
        raise ValueError(f"unknown plan kind {plan.kind!r}")


async def _probe(
    session: aiohttp.ClientSession, plans: list[Plan], servers: dict[str, Server]
) -> dict[str, dict[str, str]]:
    """Which server cannot answer which plan (n/a with the reason), and QIDO result counts."""
    unavailable: dict[str, dict[str, str]] = {}
    for plan in plans:
        if plan.probe is None:
            continue
        counts = {}
        for name, server in servers.items():
            if name == "ceiling":
                continue
            result = await client.fetch(session, server.root, plan.probe, keep=True)
            if not result.ok:
                why = result.error or f"HTTP {result.status}"
                unavailable.setdefault(plan.metric.id, {})[name] = f"not supported: {why}"
                continue
            if plan.count_results:
                counts[name] = json.dumps({"results": _count(result)})
        if counts:
            unavailable[f"{plan.metric.id}#extra"] = counts
    return unavailable


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "dicomweb_server"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except OSError:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


async def run(opts: Options) -> dict[str, Any]:
    """One whole run; returns the results document (and saves it unless told not to)."""
    began = time.time()
    waited, load_before = wait_for_quiet(opts.wait_load, opts.wait_max)
    workers = opts.workers or os.cpu_count() or 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = REPO / ".bench" / f"run-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    log(f"workdir {workdir}; load average {load_before:.2f}")
    corpus = load_corpus(opts.corpus, CACHE)
    log(f"corpus ready: {corpus.size / 1e6:.0f} MB")
    plans, mix = build_plans(
        corpus, opts.qido, qido_repeat=opts.qido_repeat, wado_repeat=opts.wado_repeat,
        mix_seconds=opts.mix_seconds, mix_clients=opts.mix_clients,
    )  # fmt: skip
    if opts.only:
        plans = [p for p in plans if any(p.metric.id.startswith(o) for o in opts.only)]
    orthanc_version = orthanc_available() if opts.with_orthanc else None
    descriptions: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        seconds = await preload_sqlite(workdir / "ours" / "data" / "index.sqlite", opts.qido)
        log(f"QIDO corpus in SQLite ({seconds:.1f}s)")
        servers["ours"] = stack.enter_context(our_server("ours", workdir / "ours", workers=workers))
        descriptions["ours"] = {
            "description": f"dicomweb-server, SQLite + files, {workers} uvicorn workers"
            " (uvloop, httptools)",
            "qido_preload_s": round(seconds, 1),
        }
        if opts.with_auth:  # the same store, every request with an API key and audited
            key = create_api_key(workdir / "ours" / "data", "bench", "*:read", "*:write")
            servers["ours_auth"] = stack.enter_context(
                our_server(
                    "ours_auth",
                    workdir / "ours_auth",
                    workers=workers,
                    env={"DICOMWEB_AUTH": "apikey"},
                    data_dir=workdir / "ours" / "data",
                )
            )
            client.ROOT_HEADERS[servers["ours_auth"].root] = {"Authorization": f"Bearer {key}"}
            descriptions["ours_auth"] = {
                "description": "the same server and store with DICOMWEB_AUTH=apikey: every"
                " request carries an API key (checked, then audited)",
            }
        pg_env: dict[str, str] | None = None
        if opts.with_pg:
            env = pg_env = stack.enter_context(postgres_and_s3())
            seconds = await preload_postgres(env["DICOMWEB_DATABASE_URL"], opts.qido)
            log(f"QIDO corpus in PostgreSQL ({seconds:.1f}s)")
            servers["ours_pg"] = stack.enter_context(
                our_server("ours_pg", workdir / "ours_pg", workers=workers, env=env)
            )
            descriptions["ours_pg"] = {
                "description": f"dicomweb-server, embedded PostgreSQL 16 + SeaweedFS S3,"
                f" {workers} uvicorn workers",
                "qido_preload_s": round(seconds, 1),
            }
        async with client.new_session() as session:
            if orthanc_version and not in_private_network():
                notes.append("Orthanc is installed but was not run: it listens on every"
                             " interface and this run is not in a private network namespace"
                             " (run as root so the bench can use `unshare -n`).")  # fmt: skip
            elif orthanc_version:
                servers["orthanc"] = await _start_orthanc(stack, session, workdir, opts.qido)
                descriptions["orthanc"] = {
                    "description": f"{orthanc_version} + DICOMweb plugin (Debian packages),"
                    " SQLite index, default 50 HTTP threads",
                }
            else:
                notes.append("Orthanc is not installed (apt-get install orthanc"
                             " orthanc-dicomweb): its column is n/a.")  # fmt: skip
            for name in ("ours", "ours_pg", "orthanc"):
                if name in servers:
                    seconds = await stow_files(
                        session, servers[name], list(corpus.all_files()), per_request=25,
                        concurrency=4,
                    )  # fmt: skip
                    descriptions[name]["corpus_stow_s"] = round(seconds, 1)
                    log(f"corpus stored into {name} ({seconds:.1f}s)")
            available = await _probe(session, plans, servers)
            if opts.with_ceiling:
                folder = workdir / "ceiling"
                reqs: list[Req] = []
                for plan in plans:
                    if plan.kind not in ("latency", "transfer"):
                        continue
                    if plan.metric.id in available and "ours" in available[plan.metric.id]:
                        available[plan.metric.id]["ceiling"] = "n/a: ours n/a"
                        continue
                    for r in range(opts.rounds):
                        for req in plan.requests(r):
                            reqs.append(plan.ceiling_alias(req) if plan.ceiling_alias else req)
                    if plan.probe is not None:
                        reqs.append(plan.probe)
                reqs += mix.all_requests()
                stow_probe_body, stow_type = client.multipart_body(
                    small_instances(3_000_000, 1)[:1]
                )
                stow_probe = Req("/studies", "application/dicom+json", stow_probe_body, stow_type)
                count = await record_ceiling(session, servers["ours"], folder, reqs, stow_probe)
                log(f"ceiling: recorded {count} responses")
                servers["ceiling"] = stack.enter_context(ceiling_server(folder, workers=workers))
                descriptions["ceiling"] = {
                    "description": "replay of our recorded responses by a sendfile server"
                    f" (bench/ceiling.py, asyncio, {workers} processes): no DICOM work at all",
                }
        if opts.wait_max:
            waited2, _ = wait_for_quiet(opts.wait_load, min(opts.wait_max, 300))
            waited += waited2
        load_start = load_average()
        log(f"measuring {len(plans)} plans on {', '.join(servers)} (load {load_start:.2f})")
        measured_at = time.time()
        async with contextlib.AsyncExitStack() as replays:
            replay = None
            if pg_env is not None and any(p.metric.id == "wado.study" for p in plans):
                concurrency = int(Settings.model_fields["wado_read_ahead_objects"].default)
                replay = await replays.enter_async_context(
                    s3_replay(pg_env, DEFAULT_SITE, corpus.series["ct"].study, concurrency)
                )
                descriptions["s3_replay"] = {
                    "description": "the CT study's objects fetched straight from the SeaweedFS"
                    f" gateway of ours (PostgreSQL+S3), {concurrency} at a time as our server"
                    " reads ahead, by GETs presigned once and sent with aiohttp: no DICOM work"
                    " (issue 22)",
                }
                for plan in plans:
                    if plan.metric.id != "wado.study":
                        available.setdefault(plan.metric.id, {})["s3_replay"] = "n/a"
            metrics = await _measure(plans, mix, servers, available, corpus, opts, workdir, replay)
        load_after = load_average()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(began)),
        "duration_s": round(time.time() - began),
        "measure_s": round(time.time() - measured_at),
        "mode": opts.mode,
        "rounds": opts.rounds,
        "stow_rounds": opts.stow_rounds,
        "cpus": os.cpu_count(),
        "machine": f"{_cpu_model()}, {platform.system()} {platform.release()}",
        "load_before": round(load_before, 2),
        "load_at_measure_start": round(load_start, 2),
        "load_after": round(load_after, 2),
        "waited_for_quiet_s": round(waited),
        "workers": workers,
        "git": _git_revision(),
        "versions": _versions(),
        "corpus": {
            "sizes": dataclasses.asdict(opts.corpus),
            "bytes": corpus.size,
            "qido": dataclasses.asdict(opts.qido),
        },
        "corpus_text": f"{opts.corpus.describe()}; QIDO: {opts.qido.describe()}, loaded"
        " into our indexes by calling add_instance directly, into Orthanc over STOW-RS",
        "notes": notes,
    }
    document = results_document(meta, descriptions, metrics)
    (workdir / "results.json").write_text(json.dumps(document, indent=1))
    (workdir / "results.md").write_text(render_markdown(document))
    if opts.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
        (RESULTS / "latest.md").write_text(render_markdown(document))
        log(f"results in {RESULTS / 'latest.md'}")
    if not opts.keep:
        for child in workdir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
    return document


async def _start_orthanc(
    stack: contextlib.ExitStack, session: aiohttp.ClientSession, workdir: Path, sizes: QidoSizes
) -> Server:
    """Orthanc with the QIDO corpus: a copy of the cached storage, or loaded now and cached."""
    version = (orthanc_available() or "orthanc").replace(" ", "_")
    cached = CACHE / f"orthanc-qido-{sizes.key()}-{version}"
    storage = workdir / "orthanc" / "storage"
    if not cached.is_dir():
        fresh = cached.with_name(cached.name + ".partial")
        shutil.rmtree(fresh, ignore_errors=True)
        with orthanc_server(workdir / "orthanc-load", fresh) as loader:
            log(f"loading the QIDO corpus into Orthanc over STOW-RS ({sizes.instances} instances)")
            files = small_instances(0, sizes.studies)
            seconds = await stow_files(session, loader, files, per_request=100, concurrency=4)
            log(f"QIDO corpus in Orthanc ({seconds:.1f}s); cached for later runs")
        fresh.rename(cached)
    shutil.copytree(cached, storage)
    return stack.enter_context(orthanc_server(workdir / "orthanc", storage))


def main_run(opts: Options, argv: list[str]) -> int:
    """Entry for `python -m bench run`."""
    del argv
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        document = runner.run(run(opts))
    print(render_markdown(document))
    return 0
