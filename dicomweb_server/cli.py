"""The `dicomweb-server` command: `serve` runs uvicorn with settings from flags and environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from urllib.parse import urlparse

import uvicorn

from dicomweb_server.config import Settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomweb-server", description="A DICOMweb server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the DICOMweb API over HTTP")
    serve.add_argument("--host", help="address to bind (DICOMWEB_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (DICOMWEB_PORT, default 8080)")
    serve.add_argument(
        "--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR, default ./data)"
    )
    serve.add_argument(
        "--workers", type=int, help="worker processes (DICOMWEB_WORKERS; default 0: one per core)"
    )
    serve.add_argument("--base-url", help="public DICOMweb root URL (DICOMWEB_BASE_URL)")
    commands.add_parser(
        "migrate", help="create or upgrade the index schema named by DICOMWEB_DATABASE_URL"
    )
    sweep = commands.add_parser(
        "sweep-orphans", help="delete stored objects no index row references (crash leftovers)"
    )
    sweep.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    sweep.add_argument(
        "--min-age", type=float, default=3600, help="only objects older than this many seconds"
    )
    sweep.add_argument("--dry-run", action="store_true", help="list orphans, delete nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    overrides = {
        name: getattr(args, name, None)
        for name in ("host", "port", "data_dir", "workers", "base_url")
    }
    # Workers are separate processes that read their settings from the environment.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"DICOMWEB_{name.upper()}"] = str(value)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"dicomweb-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "sweep-orphans":
        return asyncio.run(_sweep(settings, args.min_age, args.dry_run))
    workers = settings.workers if settings.workers > 0 else os.cpu_count() or 1
    print(
        f"dicomweb-server: serving {settings.root_url} with {workers} worker"
        f"{'s' if workers > 1 else ''} (data in {settings.data_dir})",
        flush=True,
    )
    uvicorn.run(
        "dicomweb_server.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        access_log=False,  # our middleware logs paths without query strings (no PHI)
        log_level=settings.log_level,
    )
    return 0


async def _migrate(settings: Settings) -> int:
    if urlparse(settings.database_url).scheme in ("postgresql", "postgres"):
        from dicomweb_server.index.postgres import migrate

        applied = await migrate(settings.database_url, command_timeout=settings.backend_timeout)
        print(f"dicomweb-server: applied migrations {applied or 'none'}", flush=True)
        return 0
    from dicomweb_server.app import open_index

    index = await open_index(settings)  # opening the SQLite index applies pending migrations
    await index.close()
    print("dicomweb-server: index schema is up to date", flush=True)
    return 0


async def _sweep(settings: Settings, min_age: float, dry_run: bool) -> int:
    from dicomweb_server.app import open_blob_store, open_index
    from dicomweb_server.services.maintenance import sweep_orphans

    index = await open_index(settings)
    try:
        blobs = await open_blob_store(settings)
        try:
            report = await sweep_orphans(index, blobs, min_age_seconds=min_age, dry_run=dry_run)
        finally:
            await blobs.close()
    finally:
        await index.close()
    for key in report.orphans:
        print(("would delete " if dry_run else "deleted ") + key)
    print(
        f"examined {report.examined} objects: {report.referenced} referenced,"
        f" {len(report.orphans)} orphaned, {report.too_recent} too recent to judge;"
        f" freed {report.freed_bytes} bytes",
        flush=True,
    )
    return 0
