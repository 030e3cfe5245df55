"""The `dicomweb-server` command: one module per command group, each a thin shell over a
service. Every command reads the same settings as `serve` (DICOMWEB_* variables, then flags).
"""

from __future__ import annotations

import argparse
import os
import sys

from dicomweb_server.cli import (
    apikey,
    audit,
    config,
    export,
    import_,
    integrity,
    lifecycle,
    maintenance,
    serve,
    sites,
    viewer,
    webhook,
)
from dicomweb_server.config import Settings, SettingsError, unknown_variables
from dicomweb_server.serve.logs import configure_logging

__all__ = ["main"]

_COMMANDS = (
    serve,
    maintenance,
    sites,
    apikey,
    lifecycle,
    audit,
    webhook,
    import_,
    export,
    integrity,
    viewer,
    config,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomweb-server", description="A DICOMweb server.")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    overrides = {name: getattr(args, name, None) for name in serve.OVERRIDES}
    # Worker processes read their settings from the environment: flags go there too.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"DICOMWEB_{name.upper()}"] = str(value)
    for warning in unknown_variables():
        print(f"dicomweb-server: warning: {warning}", file=sys.stderr)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"dicomweb-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.run(settings, args)
    except KeyboardInterrupt:
        print("dicomweb-server: interrupted", file=sys.stderr)
        return 130
    return code
