"""The `dicomweb-server` command: `serve` runs uvicorn with settings from flags and environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
    serve.add_argument("--workers", type=int, help="worker processes (DICOMWEB_WORKERS, default 1)")
    serve.add_argument("--base-url", help="public DICOMweb root URL (DICOMWEB_BASE_URL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "workers": args.workers,
        "base_url": args.base_url,
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
    print(f"dicomweb-server: serving {settings.root_url} (data in {settings.data_dir})", flush=True)
    uvicorn.run(
        "dicomweb_server.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,  # our middleware logs paths without query strings (no PHI)
        log_level=settings.log_level,
    )
    return 0
