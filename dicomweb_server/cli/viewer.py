"""`dicomweb-server viewer install`: put the OHIF Viewer where the server serves it (/viewer/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicomweb_server.config import Settings
from dicomweb_server.services.viewer import (
    DEFAULT_VERSION,
    PACKAGE,
    ViewerInstallError,
    install_viewer,
)

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    viewer = commands.add_parser("viewer", help="the OHIF Viewer served at /viewer/")
    actions = viewer.add_subparsers(dest="viewer_command", required=True)
    install = actions.add_parser(
        "install",
        help=f"download npm's {PACKAGE} (its prebuilt dist/), check it and install it",
        description=(
            f"Download {PACKAGE} from the npm registry, check its SHA-512 integrity, and install"
            " its dist/ into DICOMWEB_VIEWER_DIR (default: DATA_DIR/viewer); the server then"
            " serves it at /viewer/ (no restart needed). Replaces an installed viewer."
        ),
    )
    install.add_argument(
        "--version", default=DEFAULT_VERSION, help=f"{PACKAGE} version (default {DEFAULT_VERSION})"
    )
    install.add_argument(
        "--from",
        dest="source",
        type=Path,
        help=f"install from this {PACKAGE} tarball (.tgz) or unpacked package (or dist/) folder",
    )
    install.add_argument("--integrity", help="sha512-... the --from tarball must match")
    install.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    install.set_defaults(run=_install)


def _install(settings: Settings, args: argparse.Namespace) -> int:
    folder = settings.viewer_path
    where = args.source or f"{PACKAGE}@{args.version} from the npm registry"
    print(f"dicomweb-server: installing the viewer from {where} into {folder}", flush=True)
    shown = [0, 0]

    def progress(received: int) -> None:
        if received - shown[0] >= 8 << 20:
            shown[0] = received
            print(f"  {received >> 20} MiB", flush=True)

    def compressing(done: int) -> None:
        if done - shown[1] >= 32 << 20:
            shown[1] = done
            print(f"  gzip twins: {done >> 20} MiB compressed", flush=True)

    try:
        viewer = install_viewer(
            folder,
            version=args.version,
            source=args.source,
            integrity=args.integrity,
            progress=progress,
            compressing=compressing,
        )
    except ViewerInstallError as exc:
        print(f"dicomweb-server: viewer install failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"dicomweb-server: {PACKAGE} {viewer.version or '(version unknown)'} installed;"
        " the server serves it at /viewer/",
        flush=True,
    )
    return 0
