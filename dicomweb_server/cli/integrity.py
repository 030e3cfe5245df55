"""`dicomweb-server verify` and `reindex`: check the stored objects against the index, and
rebuild the index from the objects alone."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

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
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.reindex import ReindexOutcome, ReindexService
from dicomweb_server.services.verify import Finding, VerifyService

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="re-read every indexed object and compare its SHA-256 with the index",
        description="Re-read every object the index references and compare its size and"
        " SHA-256 with what was recorded at ingest. Lists missing and corrupt objects;"
        " exits 1 when it finds any.",
    )
    add_common(verify, site_help="only this site (default: every site)")
    verify.set_defaults(run=_verify)
    reindex = commands.add_parser(
        "reindex",
        help="rebuild the index from the stored objects (disaster recovery)",
        description="Parse every instance object in the blob store and add it to the index"
        " under its existing key (derived data under {site}/cache/ is skipped). Instances"
        " already indexed stay as they are; nothing in the blob store is changed. Rejection"
        " notes found are applied again. Deletes not made by a rejection note, legal holds,"
        " sites, API keys, webhooks and the audit trail are not in the objects: after losing"
        " the index, add the sites again first, and redo the rest.",
    )
    add_common(reindex, site_help="only this site (default: every site)")
    reindex.set_defaults(run=_reindex)


def _site(command: str, args: argparse.Namespace) -> tuple[bool, str | None]:
    site: str | None = args.site
    if site is not None and not check_site(command, site):
        return False, None
    if jobs_of(args) < 1:
        say(command, "--jobs must be at least 1")
        return False, None
    return True, site


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    ok, site = _site("verify", args)
    return asyncio.run(_verify_async(settings, args, site)) if ok else 2


async def _verify_async(settings: Settings, args: argparse.Namespace, site: str | None) -> int:
    def found(blob_key: str, finding: Finding, detail: str) -> None:
        progress.clear()
        print(f"{finding.value} {blob_key}: {detail}", flush=True)

    error = ""
    try:
        async with opened_backends(settings) as backends:
            if site is not None and not await check_site_exists("verify", backends.index, site):
                return 2  # "checked 0 objects" would read as a clean bill of health
            service = VerifyService(backends.index, backends.blobs, found)
            stats = service.stats
            progress = Progress(
                "verify",
                lambda: Snapshot(stats.checked, stats.total, stats.bytes_read, None, "objects"),
                every=args.progress_every,
            )
            async with progress.shown(), interruptible("verify", service.stop):
                await service.run(site, jobs=jobs_of(args))
    except DicomwebError as exc:
        error = exc.reason
    except asyncio.CancelledError:
        error = "abandoned"
    if error:
        say("verify", f"stopped: {error}")
        return 1
    head = "interrupted after checking" if stats.stopped_early else "checked"
    print(
        f"{head} {stats.checked:,} objects, {format_bytes(stats.bytes_read)} in"
        f" {format_duration(stats.elapsed)}: {stats.missing:,} missing, {stats.corrupt:,} corrupt",
        flush=True,
    )
    if stats.problems:
        return 1
    return 130 if stats.stopped_early else 0


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    ok, site = _site("reindex", args)
    return asyncio.run(_reindex_async(settings, args, site)) if ok else 2


# What a lost index held that no object records: the operator has to do these again.
_NOT_REBUILT = (
    "deletes not made by a rejection note, legal holds, sites, API keys, webhooks and the"
    " audit trail"
)


async def _reindex_async(settings: Settings, args: argparse.Namespace, site: str | None) -> int:
    def noted(blob_key: str, outcome: ReindexOutcome, detail: str) -> None:
        if outcome in (ReindexOutcome.CONFLICT, ReindexOutcome.UNREADABLE):
            progress.clear()
            print(f"{outcome.value} {blob_key}: {detail}", flush=True)

    error = ""
    try:
        async with opened_backends(settings) as backends:
            index = backends.index
            registered = {known.name for known in await index.list_sites()}
            if site is not None and site not in registered:
                say(
                    "reindex",
                    f"unknown site {site!r}: the index has no such site. After losing the"
                    " index, add its sites again first (dicomweb-server sites add NAME),"
                    " then reindex",
                )
                return 2
            audit = AuditService(index)  # the rejections of the notes applied, written below
            deleter = delete_service(backends, settings, audit)
            service = ReindexService(
                index,
                backends.blobs,
                parse_limits(settings),
                spool_memory=settings.import_spool_memory_bytes,
                listener=noted,
                in_trash=index.trash_references,
                sites=registered,
                lifecycle=deleter,
                who="cli:reindex",
            )
            stats = service.stats
            progress = Progress(
                "reindex",
                lambda: Snapshot(stats.done, None, stats.bytes_read, None, "objects"),
                every=args.progress_every,
            )
            try:
                async with progress.shown(), interruptible("reindex", service.stop):
                    await service.run(site, jobs=jobs_of(args), batch=settings.store_index_batch)
            finally:
                await audit.flush(close_rollups=True)
            indexed = service.stats.counts[ReindexOutcome.INDEXED]
            await refresh_statistics("reindex", index, indexed)
    except DicomwebError as exc:
        error = exc.reason
    except asyncio.CancelledError:
        error = "abandoned"
    if error:
        say("reindex", f"stopped: {error}")
        return 1
    counts = stats.counts
    head = "interrupted after reading" if stats.stopped_early else "read"
    print(
        f"{head} {stats.done:,} instance objects, {format_bytes(stats.bytes_read)} in"
        f" {format_duration(stats.elapsed)}: {counts[ReindexOutcome.INDEXED]:,} indexed,"
        f" {counts[ReindexOutcome.ALREADY]:,} already indexed,"
        f" {counts[ReindexOutcome.CONFLICT]:,} conflicts,"
        f" {counts[ReindexOutcome.UNREADABLE]:,} unreadable,"
        f" {counts[ReindexOutcome.TRASHED]:,} in the trash left out;"
        f" {stats.skipped:,} other objects (derived data) skipped;"
        f" {stats.notes_applied:,} rejection notes applied",
        flush=True,
    )
    if stats.notes_held:
        print(
            f"  {stats.notes_held:,} rejection notes not applied (interrupted): what they"
            " reject stays visible until reindex runs again",
            flush=True,
        )
    for name, left_out in sorted(stats.unregistered.items()):
        print(
            f"  {left_out:,} objects of site {name!r} left out: the site is not registered;"
            f" add it (dicomweb-server sites add {name}) and run reindex again",
            flush=True,
        )
    if counts[ReindexOutcome.INDEXED]:
        print(
            f"  not in the objects, so not rebuilt if the index was lost: {_NOT_REBUILT};"
            " redo them",
            flush=True,
        )
    if counts[ReindexOutcome.CONFLICT] or counts[ReindexOutcome.UNREADABLE] or stats.unregistered:
        return 1
    return 130 if stats.stopped_early else 0
