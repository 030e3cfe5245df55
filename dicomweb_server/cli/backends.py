"""What the data commands share: the backends and parse limits of `serve`, site names, jobs,
and Ctrl-C handling (a first one stops cleanly, a second one abandons what is in flight)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from dicomweb_server.app import Backends, open_backends
from dicomweb_server.config import Settings
from dicomweb_server.domain.part10 import ParseLimits
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import PlannerStatistics, SiteCatalog
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.delete import DeleteService

__all__ = [
    "SITE_PATTERN",
    "add_common",
    "check_site",
    "check_site_exists",
    "default_jobs",
    "delete_service",
    "interruptible",
    "jobs_of",
    "opened_backends",
    "parse_limits",
    "refresh_statistics",
    "say",
]

SITE_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed like every message of the tool."""
    print(f"dicomweb-server {command}: {message}", file=sys.stderr, flush=True)


async def refresh_statistics(command: str, index: object, added: int) -> None:
    """After `added` instances were loaded in bulk, have the index's planner sample the
    tables again where it plans by statistics (PostgreSQL) and that many can have moved them:
    searches right after would otherwise plan on stale ones until the database's own
    maintenance catches up (BENCHMARKS.md). A failure is only reported."""
    if not added or not isinstance(index, PlannerStatistics):
        return
    try:
        await index.refresh_statistics(added)
    except DicomwebError as exc:
        say(command, f"could not refresh the index's statistics: {exc.reason}")


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_common(parser: Any, *, site_help: str, jobs: bool = True) -> None:
    """--data-dir, --site, --jobs and --progress-every, alike on every data command."""
    parser.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    parser.add_argument("--site", default=None, help=site_help)
    if jobs:
        parser.add_argument(
            "--jobs",
            type=int,
            default=None,
            help=f"parallel jobs (default: the CPU count, here {default_jobs()})",
        )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 10; 0: none)",
    )


def check_site(command: str, site: str) -> bool:
    """True for a valid site name; else say why."""
    if SITE_PATTERN.fullmatch(site):
        return True
    say(command, f"invalid site name {site[:80]!r}: use a-z, 0-9 and '-', at most 63 characters")
    return False


async def check_site_exists(command: str, catalog: SiteCatalog, site: str) -> bool:
    """True when the site was added (`sites add`); else say so. Objects stored under a site
    nobody added are out of every request's reach: a 404 at its root, absent from the
    enterprise root's searches, until someone adds a site of that name."""
    if await catalog.get_site(site) is not None:
        return True
    say(command, f"unknown site {site!r}: add it first (dicomweb-server sites add {site})")
    return False


def delete_service(
    backends: Backends, settings: Settings, audit: AuditService | None = None
) -> DeleteService:
    """Deletion, rejection and the trash over the command's backends, as `serve` has them;
    with `audit`, the rejections a stored note applies are recorded."""
    index = backends.index
    return DeleteService(
        index, index, index, backends.blobs, grace_days=settings.delete_grace_days, audit=audit
    )


def jobs_of(args: argparse.Namespace) -> int:
    jobs: int | None = getattr(args, "jobs", None)
    return default_jobs() if jobs is None else jobs


def parse_limits(settings: Settings) -> ParseLimits:
    """The Part 10 parsing limits `serve` applies to STOW."""
    return ParseLimits(
        bulk_data_threshold=settings.bulk_data_threshold,
        max_sequence_depth=settings.max_sequence_depth,
        max_frames=settings.max_frames,
        max_pixel_bytes=settings.max_pixel_bytes,
        max_header_bytes=settings.max_header_bytes,
    )


@asynccontextmanager
async def opened_backends(settings: Settings) -> AsyncIterator[Backends]:
    backends = await open_backends(settings)
    try:
        yield backends
    finally:
        await backends.close()


@asynccontextmanager
async def interruptible(command: str, stop: Callable[[], None]) -> AsyncIterator[None]:
    """A first Ctrl-C (or SIGTERM) calls `stop`; a second one cancels the current task."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def interrupted() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            say(command, "stopping after the work in flight (Ctrl-C again to abandon it)")
            stop()
        elif task is not None:
            task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM)
    installed = []
    for number in signals:
        try:
            loop.add_signal_handler(number, interrupted)
            installed.append(number)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, not Unix
            pass
    try:
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)
