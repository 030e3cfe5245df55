"""`dicomweb-server serve`: run the server (serve/), with flags that override settings."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dicomweb_server.config import Settings, SettingsError
from dicomweb_server.serve import StartupError, run, worker_count
from dicomweb_server.serve.logs import JsonFormatter

__all__ = ["OVERRIDES", "add_commands"]

# Flags that override settings of the same name, for this command and the others.
OVERRIDES = (
    "host",
    "port",
    "data_dir",
    "workers",
    "base_url",
    "ssl_certfile",
    "ssl_keyfile",
    "insecure_no_auth",
)


def add_commands(commands: Any) -> None:
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
    serve.add_argument(
        "--ssl-certfile", help="serve HTTPS with this PEM certificate chain (DICOMWEB_SSL_CERTFILE)"
    )
    serve.add_argument("--ssl-keyfile", help="its PEM private key (DICOMWEB_SSL_KEYFILE)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_const",
        const="true",
        help="serve without access control on a non-loopback address (DICOMWEB_AUTH=none)",
    )
    serve.set_defaults(run=_serve)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    workers = worker_count(settings)
    try:
        banner = (
            f"dicomweb-server: serving {settings.root_url} with {workers} worker"
            f"{'s' if workers > 1 else ''} (data in {settings.data_dir})"
        )
        if settings.log_format == "json":  # a log collector reads every line as JSON
            record = logging.LogRecord(
                "dicomweb_server.serve", logging.INFO, __file__, 0, banner, None, None
            )
            banner = JsonFormatter().format(record)
        print(banner, flush=True)
        return run(settings)
    except (StartupError, SettingsError) as exc:
        print(f"dicomweb-server: cannot start: {exc}", file=sys.stderr)
        return 1
