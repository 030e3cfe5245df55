"""`dicomweb-server export DEST`: selected studies as PS3.10 media (a folder or one .zip),
with a DICOMDIR and MANIFEST.csv, optionally de-identified."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import secrets
from pathlib import Path
from typing import Any

from dicomweb_server.cli.admin_record import operator_name
from dicomweb_server.cli.backends import (
    add_common,
    check_site,
    check_site_exists,
    interruptible,
    opened_backends,
    say,
)
from dicomweb_server.cli.progress import Progress, Snapshot, format_bytes, format_duration
from dicomweb_server.config import Settings
from dicomweb_server.domain.deidentify import PROFILE_NAMES, Deidentifier, parse_profile
from dicomweb_server.domain.identifiers import is_valid_uid
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.export import (
    ExportAudit,
    ExportSelection,
    ExportService,
    ExportStats,
)
from dicomweb_server.services.export_sinks import ExportSink, FolderSink, SinkWriteError, ZipSink

__all__ = ["add_commands"]

_COMMAND = "export"
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_KEY_BYTES = 32
_MEDIA_NAMES = ("DICOM", "DICOMDIR", "MANIFEST.csv")  # what an export writes in DEST


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="write studies as PS3.10 media: files, DICOMDIR and MANIFEST.csv (or one .zip)",
        description="Write the selected studies to DEST as PS3.10 media: files named"
        " DICOM/Pnnnnnnn/Snnnnnnn/Ennnnnnn/Innnnnnn, a DICOMDIR and MANIFEST.csv (path, SOP"
        " Instance UID, bytes, SHA-256). --deidentify applies the PS3.15 Basic Profile with"
        " a key of its own: a random one for each export unless --deid-key-env names an"
        " environment variable holding one (the same key maps the same patient, UIDs and"
        " dates the same way in every export).",
    )
    parser.add_argument("dest", type=Path, metavar="DEST", help="a folder, or with --zip a file")
    add_common(parser, site_help="site to export (default: default)", jobs=False)
    parser.add_argument(
        "--patient", metavar="ID", help="only this Patient ID (exactly: no wildcards)"
    )
    parser.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    parser.add_argument("--since", metavar="DATE", help="Study Date from (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--until", metavar="DATE", help="Study Date to, inclusive")
    parser.add_argument("--zip", action="store_true", help="write one .zip at DEST instead")
    parser.add_argument(
        "--deidentify",
        metavar="PROFILE",
        help=f"de-identify with a PS3.15 profile: {', '.join(PROFILE_NAMES)}",
    )
    parser.add_argument(
        "--deid-key-env",
        metavar="VAR",
        help="environment variable holding the de-identification key (at least 16 bytes)",
    )
    parser.add_argument(
        "--include-burned-in",
        action="store_true",
        help="with --deidentify, keep instances marked Burned In Annotation YES",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DEST (its files are left alone; one holding DICOM,"
        " DICOMDIR or MANIFEST.csv is still refused), or with --zip replace DEST",
    )
    parser.set_defaults(run=_run)


def _date(text: str | None, flag: str) -> str | None:
    if text is None:
        return None
    match = _DATE.match(text.strip())
    if match is None:
        raise ValueError(f"{flag} {text[:40]!r}: expected YYYYMMDD or YYYY-MM-DD")
    year, month, day = match.groups()
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:
        raise ValueError(f"{flag} {text[:40]!r} is not a date of the calendar") from None
    return year + month + day


def _check_dest(dest: Path, as_zip: bool, force: bool) -> str | None:
    """Why DEST cannot be written, or None."""
    if as_zip:
        if dest.is_dir():
            return f"{dest} is a folder; --zip writes a file"
        if dest.exists() and not force:
            return f"{dest} exists (use --force to replace it)"
        return None
    if dest.exists() and not dest.is_dir():
        return f"{dest} is not a folder"
    if not dest.is_dir():
        return None
    taken = [name for name in _MEDIA_NAMES if os.path.lexists(dest / name)]
    if taken:
        # Written beside, an earlier export's files would stay in the folder, outside the new
        # DICOMDIR and MANIFEST.csv: identified data in a de-identified export, say.
        return (
            f"{dest} already holds {', '.join(taken)}, an earlier export's names: export never"
            " writes over or beside one, even with --force; remove them or choose another folder"
        )
    if any(dest.iterdir()) and not force:
        return f"{dest} is not empty (use --force to write into it anyway)"
    return None


def _run(settings: Settings, args: argparse.Namespace) -> int:
    site = args.site or "default"
    if not check_site(_COMMAND, site):
        return 2
    try:
        since, until = _date(args.since, "--since"), _date(args.until, "--until")
    except ValueError as exc:
        say(_COMMAND, str(exc))
        return 2
    if since and until and since > until:
        say(_COMMAND, "--since is after --until")
        return 2
    if args.study is not None and not is_valid_uid(args.study):
        say(_COMMAND, f"--study {args.study[:80]!r} is not a valid UID")
        return 2
    if (args.deid_key_env or args.include_burned_in) and not args.deidentify:
        say(_COMMAND, "--deid-key-env and --include-burned-in go with --deidentify")
        return 2
    problem = _check_dest(args.dest, args.zip, args.force)
    if problem:
        say(_COMMAND, problem)
        return 2
    deidentifier = None
    key_origin = ""
    if args.deidentify:
        try:
            options = parse_profile(args.deidentify, keep_burned_in=args.include_burned_in)
            if args.deid_key_env:
                value = os.environ.get(args.deid_key_env)
                if not value:
                    say(_COMMAND, f"environment variable {args.deid_key_env} is not set")
                    return 2
                key = value.encode("utf-8")
                key_origin = f"the key in ${args.deid_key_env}"
            else:
                key = secrets.token_bytes(_KEY_BYTES)
                key_origin = "a random key of this export, not kept"
            deidentifier = Deidentifier(key, options)
        except DicomwebError as exc:
            say(_COMMAND, exc.reason)
            return 2
    selection = ExportSelection(site, args.patient, args.study, since, until)
    code = asyncio.run(_export(settings, args, selection, deidentifier))
    if deidentifier is not None and code in (0, 1, 130):
        print(f"  de-identified: profile {deidentifier.options.profile_name}, {key_origin}")
    return code


async def _export(
    settings: Settings,
    args: argparse.Namespace,
    selection: ExportSelection,
    deidentifier: Deidentifier | None,
) -> int:
    failures: list[tuple[str, str]] = []
    error = ""
    stats = ExportStats()
    try:
        async with opened_backends(settings) as backends:
            if not await check_site_exists(_COMMAND, backends.index, selection.site):
                return 2
            audit = ExportAudit(
                AuditService(backends.index),
                "cli:export",
                operator_name(),
                str(args.dest.absolute()),
            )
            service = ExportService(
                backends.index,
                backends.blobs,
                deidentifier=deidentifier,
                max_in_memory_bytes=settings.max_header_bytes,
                listener=lambda label, reason: failures.append((label, reason)),
                audit=audit,
            )
            stats = service.stats
            progress = Progress(
                "export",
                lambda: Snapshot(
                    stats.instances_done, stats.instances_total, stats.bytes_done, None, "instances"
                ),
                every=args.progress_every,
            )
            sink: ExportSink = ZipSink(args.dest) if args.zip else FolderSink(args.dest)
            async with progress.shown(), interruptible(_COMMAND, service.stop):
                await service.run(selection, sink)
    except asyncio.CancelledError:
        error = "abandoned"
    except (DicomwebError, SinkWriteError) as exc:
        error = exc.reason
    for label, reason in failures:
        print(f"failed {label}: {reason}")
    if stats.written or not error:
        _summary(args.dest, stats)
    if error:
        say(_COMMAND, f"stopped: {error}")
        return 1
    if stats.stopped_early:
        return 130
    return 1 if stats.failed else 0


def _summary(dest: Path, stats: ExportStats) -> None:
    elapsed = stats.elapsed
    rate = stats.bytes_done / elapsed / 1e6 if elapsed > 0 else 0.0
    head = "interrupted after exporting" if stats.stopped_early else "exported"
    lines = [
        f"{head} {stats.written:,} instances, {format_bytes(stats.bytes_done)} to {dest} in"
        f" {format_duration(elapsed)} ({rate:,.1f} MB/s)",
        f"  studies                {stats.studies:>8,}",
        f"  written                {stats.written:>8,}",
        f"  excluded (burned-in)   {stats.excluded:>8,}",
        f"  failed                 {stats.failed:>8,}",
    ]
    if stats.dicomdir_bytes:
        lines.append(f"  DICOMDIR               {stats.dicomdir_bytes:>8,} bytes, and MANIFEST.csv")
    print("\n".join(lines), flush=True)
