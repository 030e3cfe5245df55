"""`dicomweb-server sites add|list|show|set|remove`: the sites of the store (issue 16)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from dicomweb_server.backends import open_backends, open_blob_store_at
from dicomweb_server.cli.admin_record import record_change
from dicomweb_server.config import Settings
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import AuditLog
from dicomweb_server.services.sites import SiteService

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    sites = commands.add_parser("sites", help="add, list, show, change or remove sites")
    actions = sites.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a site (its own DICOMweb root)")
    add.add_argument("name", help="[a-z0-9][a-z0-9-]{0,62}")
    add.add_argument("--description", default="", help="a line saying what the site is")
    add.add_argument(
        "--storage-url",
        default="",
        help="keep the site's objects here (s3://bucket/prefix or file:///path) instead of"
        " the server's store; checked to be reachable first",
    )
    actions.add_parser("list", help="every site and where it keeps its objects")
    show = actions.add_parser("show", help="one site in full")
    show.add_argument("name")
    change = actions.add_parser("set", help="change a site's description or retention")
    change.add_argument("name")
    change.add_argument("--description")
    change.add_argument("--retain-years", type=int, help="delete studies older than this")
    change.add_argument(
        "--min-retain-years", type=int, help="refuse to delete studies younger than this"
    )
    remove = actions.add_parser("remove", help="remove a site that holds no study")
    remove.add_argument("name")
    for parser in (add, show, change, remove, actions.choices["list"]):
        parser.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    sites.set_defaults(run=lambda settings, args: asyncio.run(_run(settings, args)))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    backends = await open_backends(settings)
    try:
        service = SiteService(backends.index, settings.default_site)
        try:
            return await _ACTIONS[args.action](service, settings, args, backends.index)
        except DicomwebError as exc:
            print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
            return 1
    finally:
        await backends.close()


async def _add(
    service: SiteService, settings: Settings, args: argparse.Namespace, audit: AuditLog
) -> int:
    if args.storage_url:
        reason = await _unreachable(args.storage_url, settings)
        if reason is not None:
            print(
                f"dicomweb-server: storage {args.storage_url} cannot be used: {reason}",
                file=sys.stderr,
            )
            return 1
    site = await service.add_site(args.name, args.description, args.storage_url)
    where = site.storage_url or "the server's store"
    await record_change(
        audit, "cli:sites", site.name, f"added site {site.name} (objects in {where})"
    )
    print(f"added site {site.name}: {settings.root_url}/sites/{site.name} (objects in {where})")
    return 0


async def _unreachable(url: str, settings: Settings) -> str | None:
    """Why the storage at `url` cannot be used, or None when it answers."""
    try:
        store = await open_blob_store_at(url, settings)
    except (DicomwebError, OSError, ValueError) as exc:
        return getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    try:
        await store.ping()
    except DicomwebError as exc:
        return exc.reason
    finally:
        await store.close()
    return None


async def _list(
    service: SiteService, settings: Settings, args: argparse.Namespace, audit: AuditLog
) -> int:
    sites = await service.list_sites()
    width = max([len(site.name) for site in sites] + [4])
    print(f"{'SITE':<{width}}  {'STORAGE':<40}  DESCRIPTION")
    for site in sites:
        default = " (default)" if site.name == settings.default_site else ""
        print(
            f"{site.name:<{width}}  {site.storage_url or '(server store)':<40}"
            f"  {site.description}{default}"
        )
    return 0


async def _show(
    service: SiteService, settings: Settings, args: argparse.Namespace, audit: AuditLog
) -> int:
    site = await service.get_site(args.name)
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(site.created))
    rows = [
        ("name", site.name),
        ("root", f"{settings.root_url}/sites/{site.name}"),
        ("description", site.description),
        ("storage", site.storage_url or "(server store)"),
        ("created", created),
        ("retain years", "-" if site.retain_years is None else str(site.retain_years)),
        (
            "min retain years",
            "-" if site.min_retain_years is None else str(site.min_retain_years),
        ),
        ("default site", "yes" if site.name == settings.default_site else "no"),
    ]
    for label, value in rows:
        print(f"{label + ':':<18}{value}")
    return 0


async def _set(
    service: SiteService, settings: Settings, args: argparse.Namespace, audit: AuditLog
) -> int:
    site = await service.get_site(args.name)
    changes: dict[str, object] = {}
    if args.description is not None:
        changes["description"] = args.description
    for name in ("retain_years", "min_retain_years"):
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                print(
                    f"dicomweb-server: --{name.replace('_', '-')} must be 0 or more",
                    file=sys.stderr,
                )
                return 2
            changes[name] = value or None  # 0 clears it
    await service.update_site(site, **changes)
    shown = ", ".join(f"{name}={value}" for name, value in changes.items())
    await record_change(audit, "cli:sites", site.name, f"changed site {site.name}: {shown}")
    print(f"updated site {site.name}")
    return 0


async def _remove(
    service: SiteService, settings: Settings, args: argparse.Namespace, audit: AuditLog
) -> int:
    await service.remove_site(args.name)
    await record_change(audit, "cli:sites", args.name, f"removed site {args.name}")
    print(f"removed site {args.name}")
    return 0


_ACTIONS = {"add": _add, "list": _list, "show": _show, "set": _set, "remove": _remove}
