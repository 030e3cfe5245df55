"""`dicomweb-server import`: files, folders, archives, DICOMDIR sets, or another DICOMweb
server's studies, stored through the STOW pipeline with progress, a summary and a report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from dicomweb_server.app import Backends
from dicomweb_server.cli.admin_record import operator_name
from dicomweb_server.cli.backends import (
    add_common,
    check_site,
    check_site_exists,
    delete_service,
    interruptible,
    jobs_of,
    opened_backends,
    parse_limits,
    refresh_statistics,
    say,
)
from dicomweb_server.cli.progress import Progress, Snapshot, format_bytes, format_duration
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.domain.grants import EVERY_GRANT
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.audit import AuditService, system_event
from dicomweb_server.services.import_files import ReadLimits, iter_file_items, scan_totals
from dicomweb_server.services.import_journal import ImportJournal, journal_path
from dicomweb_server.services.importer import (
    ImportService,
    ImportStats,
    Outcome,
)
from dicomweb_server.services.principal import Principal
from dicomweb_server.services.pull import (
    DicomwebSource,
    ReceivedPart,
    check_query,
    check_root_url,
)
from dicomweb_server.services.store import StoreService

__all__ = ["add_commands"]

_COMMAND = "import"
# Who stores: the operator, with every grant (a rejection note is applied as over STOW).
_IMPORTER = Principal("cli:import", "anonymous", EVERY_GRANT)


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "import",
        help="store files, folders, archives or another server's studies (as STOW does)",
        description="Store DICOM files through the same pipeline as STOW-RS: folders are"
        " walked, .zip and .tar(.gz) archives read member by member, a DICOMDIR given as PATH"
        " imports the files it references. --from pulls studies from a DICOMweb server."
        " An import that was interrupted or killed resumes when the same command runs again"
        " (a journal in the data dir, deleted once a run completes).",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files, folders, archives")
    parser.add_argument("--from", dest="source", metavar="URL", help="a DICOMweb root to pull")
    parser.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="QIDO match key for --from (repeatable), e.g. PatientID=123 StudyDate=2024-",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="HTTP header for --from (repeatable), e.g. 'Authorization: Bearer ...'",
    )
    add_common(parser, site_help="site to store into (default: default)")
    parser.add_argument(
        "--report",
        type=Path,
        help="write every failure, non-DICOM and rejected file here (JSON lines)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore the journal of an interrupted run: process everything again",
    )
    parser.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    site = args.site or settings.default_site
    if not check_site(_COMMAND, site):
        return 2
    if bool(args.paths) == bool(args.source):
        say(_COMMAND, "give either PATHs or --from URL")
        return 2
    if args.query and not args.source:
        say(_COMMAND, "--query needs --from")
        return 2
    if jobs_of(args) < 1:
        say(_COMMAND, "--jobs must be at least 1")
        return 2
    paths = [Path(path).absolute() for path in args.paths]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        say(_COMMAND, f"no such file or folder: {', '.join(missing)}")
        return 2
    try:
        query = [_pair(text, "=", "--query") for text in args.query]
        headers = dict(_pair(text, ":", "--header") for text in args.header)
        if args.source:
            check_root_url(args.source)
        check_query(query)
    except ValueError as exc:
        say(_COMMAND, str(exc))
        return 2
    except DicomwebError as exc:
        say(_COMMAND, f"--query: {exc.reason}")
        return 2
    return asyncio.run(_import(settings, args, site, paths, query, headers))


def _pair(text: str, separator: str, flag: str) -> tuple[str, str]:
    name, found, value = text.partition(separator)
    if not found or not name.strip():
        raise ValueError(f"{flag} {text[:80]!r}: expected NAME{separator}VALUE")
    return name.strip(), value.strip()


class _Report:
    """The report file: one JSON line per failure or non-DICOM file, written as they come."""

    def __init__(self, path: Path | None, *, resuming: bool) -> None:
        self.path = path
        self.lines = 0
        self._file: IO[str] | None = None
        if path is not None:  # a resumed run adds to the report of the run it resumes
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "a" if resuming else "w"
            # A name that is not UTF-8 (surrogates from the OS) is written as a JSON \u escape
            self._file = open(  # noqa: SIM115
                path, mode, encoding="utf-8", errors="backslashreplace", buffering=1
            )

    def __call__(self, label: str, outcome: Outcome, reason: str) -> None:
        if self._file is None or not (
            outcome.is_failure or outcome in (Outcome.NOT_DICOM, Outcome.REJECTED)
        ):
            return
        entry = {"path": label, "outcome": outcome.value, "reason": reason}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def _import(
    settings: Settings,
    args: argparse.Namespace,
    site: str,
    paths: list[Path],
    query: list[tuple[str, str]],
    headers: dict[str, str],
) -> int:
    try:
        async with opened_backends(settings) as backends:
            # Before the journal, the report or any input is opened.
            if not await check_site_exists(_COMMAND, backends.index, site):
                return 2
            return await _import_into(backends, settings, args, site, paths, query, headers)
    except DicomwebError as exc:  # the backends did not open
        say(_COMMAND, f"stopped: {exc.reason}")
        return 1


async def _import_into(
    backends: Backends,
    settings: Settings,
    args: argparse.Namespace,
    site: str,
    paths: list[Path],
    query: list[tuple[str, str]],
    headers: dict[str, str],
) -> int:
    # Time counts from here, as a server's STOW rate does not count its start-up
    # (opening an S3 client loads botocore's models: a second of CPU).
    stats = ImportStats()
    jobs = jobs_of(args)
    if args.source:
        identity = ["pull", site, args.source.rstrip("/"), *sorted(f"{k}={v}" for k, v in query)]
    else:
        identity = ["files", site, *sorted(map(str, paths))]
    try:
        journal = ImportJournal(journal_path(settings.data_dir, *identity))
    except (OSError, sqlite3.Error) as exc:
        say(_COMMAND, f"cannot open the import journal in {settings.data_dir}: {exc}")
        return 1
    if args.restart:
        journal.reset()
    try:
        report = _Report(args.report, resuming=len(journal) > 0)
    except OSError as exc:
        journal.close()
        say(_COMMAND, f"cannot write the report {args.report}: {exc.strerror}")
        return 2
    progress = Progress(
        "import" if not args.source else "pull",
        lambda: _snapshot(stats),
        every=args.progress_every,
    )
    interrupted = False
    error = ""
    try:
        index = backends.index
        # The studies stored into, one record each by the operator's command, as STOW's
        # stores are recorded (PS3.15 "DICOM Instances Transferred"), and the rejections of
        # the notes imported: written as the import goes and at its end.
        audit = AuditService(index)
        operator = operator_name()

        def stored(study: str, instances: int) -> None:
            detail = f"import: {instances} instance(s) stored"
            event = system_event(
                AuditAction.STORE,
                _IMPORTER.subject,
                site,
                {study: None},
                operator=operator,
                detail=detail,
            )
            audit.record(event)

        deleter = delete_service(backends, settings, audit)
        store = StoreService(
            index,
            backends.blobs,
            parse_limits(settings),
            lifecycle=deleter,
            held_memory=settings.store_held_memory_bytes,
        )
        service = ImportService(
            store,
            site,
            journal=journal,
            listener=report,
            stats=stats,
            principal=_IMPORTER,
            on_study_stored=stored,
        )
        async with progress.shown(), _writing(audit, settings.audit_flush_seconds):
            try:
                async with interruptible(_COMMAND, service.stop):
                    if args.source:
                        await _pull(settings, args, service, stats, journal, query, headers, jobs)
                    else:
                        await _files(settings, service, stats, journal, paths, jobs)
            except asyncio.CancelledError:
                interrupted = True
            except DicomwebError as exc:  # a source that cannot be read, a store that fails
                error = exc.reason
        try:
            await audit.flush(close_rollups=True)
        except DicomwebError as exc:
            error = error or exc.reason
        await refresh_statistics(_COMMAND, index, stats.counts[Outcome.STORED])
    finally:
        report.close()
    interrupted = interrupted or stats.stopped_early
    if error or interrupted:
        journal.close()  # kept, so that running the same command again resumes
    else:
        journal.discard()
    _summary(stats, report, journal, args.source or "", interrupted)
    if error:
        say(_COMMAND, f"stopped: {error}")
        return 1
    if interrupted:
        return 130
    if stats.incomplete:
        say(_COMMAND, f"incomplete: {stats.incomplete}")
        return 1
    return 1 if stats.failures else 0


@contextlib.asynccontextmanager
async def _writing(audit: AuditService, every: float) -> AsyncIterator[None]:
    """Write the queued audit records every `every` seconds while the block runs: the queue
    is bounded, and an import can store more studies than it holds. Stopped between two
    writes, never in one (a write cut short could be written again)."""
    done = asyncio.Event()

    async def write() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
            with contextlib.suppress(DicomwebError):  # kept and retried, the last time after
                await audit.flush()

    writer = asyncio.create_task(write())
    try:
        yield
    finally:
        done.set()
        await asyncio.shield(writer)


async def _files(
    settings: Settings,
    service: ImportService,
    stats: ImportStats,
    journal: ImportJournal,
    paths: list[Path],
    jobs: int,
) -> None:
    limits = ReadLimits(
        max_member_bytes=settings.import_max_member_bytes,
        max_archive_bytes=settings.import_max_archive_bytes,
        spool_memory=settings.import_spool_memory_bytes,
        max_part_bytes=settings.max_part_bytes,
    )
    stop_scan = threading.Event()
    scan = threading.Thread(target=scan_totals, args=(paths, stats, stop_scan), daemon=True)
    scan.start()
    try:
        depth = settings.store_pipeline_depth
        items = iter_file_items(paths, limits, journal, queue_size=jobs * depth)
        await service.run(items, lanes=jobs, depth=depth, batch=settings.store_index_batch)
    finally:
        stop_scan.set()


async def _pull(
    settings: Settings,
    args: argparse.Namespace,
    service: ImportService,
    stats: ImportStats,
    journal: ImportJournal,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    jobs: int,
) -> None:
    from dicomweb_server.web.multipart import iter_parts

    def read_parts(chunks: AsyncIterator[bytes], content_type: str) -> AsyncIterator[ReceivedPart]:
        return _parts(chunks, content_type, settings, iter_parts)

    source = DicomwebSource(
        args.source,
        read_parts,
        headers=headers,
        journal=journal,
        stats=stats,
        timeout=settings.backend_timeout,
    )
    async with source:
        studies = await source.list_studies(query)
        stats.studies_total = len(studies)
        stats.incomplete = source.listing_incomplete
        await service.run(
            source.iter_items(studies),
            lanes=jobs,
            depth=settings.store_pipeline_depth,
            batch=settings.store_index_batch,
        )


async def _parts(
    chunks: AsyncIterator[bytes], content_type: str, settings: Settings, iter_parts: Any
) -> AsyncIterator[ReceivedPart]:
    """The parts of a WADO-RS answer, with STOW's limits on part size and count."""
    from dicomweb_server.errors import MalformedRequestError
    from dicomweb_server.web.multipart import parse_media_type

    media_type, params = parse_media_type(content_type or "application/octet-stream")
    if media_type != "multipart/related" or not params.get("boundary"):
        raise MalformedRequestError(f"expected multipart/related, got {content_type[:100]!r}")
    async for part in iter_parts(
        chunks,
        params["boundary"],
        max_part_size=settings.max_part_bytes,
        max_parts=settings.max_parts,
        spool_memory=settings.import_spool_memory_bytes,
        max_boundary_length=settings.max_boundary_length,
    ):
        yield part


def _snapshot(stats: ImportStats) -> Snapshot:
    if stats.studies_total is not None:
        return Snapshot(stats.studies_done, stats.studies_total, stats.bytes_done, None, "studies")
    return Snapshot(stats.files_done, stats.files_total, stats.bytes_done, stats.bytes_total)


def _summary(
    stats: ImportStats, report: _Report, journal: ImportJournal, source: str, interrupted: bool
) -> None:
    counts = stats.counts
    elapsed = stats.elapsed
    moved = stats.bytes_done - stats.skipped_bytes
    rate = moved / elapsed / 1e6 if elapsed > 0 else 0.0
    what = "parts" if source else "files"
    head = "interrupted after" if interrupted else "imported"
    lines = [
        f"{head} {stats.files_done:,} {what}, {format_bytes(moved)} in"
        f" {format_duration(elapsed)} ({rate:,.1f} MB/s)",
        f"  stored                 {counts[Outcome.STORED]:>8,}",
        f"  identical duplicates   {counts[Outcome.IDENTICAL]:>8,}",
        f"  conflicts              {counts[Outcome.CONFLICT]:>8,}",
        f"  rejected               {counts[Outcome.REJECTED]:>8,}",
        f"  not DICOM              {counts[Outcome.NOT_DICOM]:>8,}",
        f"  failed                 {counts[Outcome.FAILED]:>8,}",
        f"  skipped                {counts[Outcome.SKIPPED]:>8,}"
        + (" (finished by an earlier run)" if counts[Outcome.SKIPPED] else ""),
    ]
    if counts[Outcome.DIRECTORY]:
        lines.append(f"  DICOMDIRs read         {counts[Outcome.DIRECTORY]:>8,}")
    if stats.studies_total is not None:
        lines.insert(1, f"  studies                {stats.studies_total:>8,}")
    if report.path is not None:
        lines.append(f"  report: {report.path} ({report.lines} entries)")
    if interrupted:
        lines.append(f"  run the same command again to resume (journal {journal.path})")
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:
        # Read by a command that stopped reading (`| head`): end quietly, as other tools do,
        # with stdout on /dev/null so that the interpreter's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
