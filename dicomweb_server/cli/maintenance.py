"""`dicomweb-server migrate` and `sweep-orphans`: the index schema and crash leftovers."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import urlparse

from dicomweb_server.config import Settings

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    migrate = commands.add_parser(
        "migrate", help="create or upgrade the index schema named by DICOMWEB_DATABASE_URL"
    )
    migrate.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    migrate.set_defaults(run=lambda settings, args: asyncio.run(_migrate(settings)))
    sweep = commands.add_parser(
        "sweep-orphans", help="delete stored objects no index row references (crash leftovers)"
    )
    sweep.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    sweep.add_argument(
        "--min-age", type=float, default=3600, help="only objects older than this many seconds"
    )
    sweep.add_argument("--dry-run", action="store_true", help="list orphans, delete nothing")
    sweep.set_defaults(run=_sweep)


async def _migrate(settings: Settings) -> int:
    if urlparse(settings.database_url).scheme in ("postgresql", "postgres"):
        from dicomweb_server.index.postgres import migrate

        applied = await migrate(settings.database_url, command_timeout=settings.backend_timeout)
        print(f"dicomweb-server: applied migrations {applied or 'none'}", flush=True)
        return 0
    from dicomweb_server.backends import open_index

    index = await open_index(settings)  # opening the SQLite index applies pending migrations
    await index.close()
    print("dicomweb-server: index schema is up to date", flush=True)
    return 0


def _sweep(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_sweep_async(settings, args.min_age, args.dry_run))


async def _sweep_async(settings: Settings, min_age: float, dry_run: bool) -> int:
    from dicomweb_server.backends import open_backends
    from dicomweb_server.services.maintenance import sweep_orphans

    backends = await open_backends(settings)
    try:
        report = await sweep_orphans(
            backends.index, backends.blobs, min_age_seconds=min_age, dry_run=dry_run
        )
    finally:
        await backends.close()
    for key in report.orphans:
        print(("would delete " if dry_run else "deleted ") + key)
    print(
        f"examined {report.examined} objects: {report.referenced} referenced,"
        f" {len(report.orphans)} orphaned, {report.too_recent} too recent to judge;"
        f" freed {report.freed_bytes} bytes",
        flush=True,
    )
    return 0
