"""`dicomweb-server apikey create|list|revoke`: API keys for machines (issue 17).

A key is printed once, when it is created; only a hash of it is stored. It is sent as
`Authorization: Bearer <key>` by any client that can send a bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

from dicomweb_server.backends import open_backends
from dicomweb_server.cli.admin_record import record_change
from dicomweb_server.config import Settings
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.apikeys import ApiKeyService

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("apikey", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="unique name (how it is listed and revoked)")
    create.add_argument(
        "--grant",
        action="append",
        required=True,
        metavar="SITE:ROLE",
        help="a grant such as hospital-a:read or *:write (repeat for more)",
    )
    create.add_argument("--expires", type=int, metavar="DAYS", help="valid for this many days")
    actions.add_parser("list", help="every key: name, grants, created, expiry, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    for parser in actions.choices.values():
        parser.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")
    keys.set_defaults(run=lambda settings, args: asyncio.run(_run(settings, args)))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    backends = await open_backends(settings)
    try:
        service = ApiKeyService(backends.index, cache_seconds=0)
        try:
            if args.action == "create":
                issued = await service.create_api_key(args.name, args.grant, args.expires)
                record = issued.record
                grants = " ".join(sorted(str(grant) for grant in record.grants))
                print(f"created API key {record.name} ({grants})", file=sys.stderr)
                print(
                    "the key is shown once; send it as 'Authorization: Bearer <key>':",
                    file=sys.stderr,
                )
                print(issued.key)
                await record_change(
                    backends.index, "cli:apikey", None, f"created API key {record.name} ({grants})"
                )
            elif args.action == "list":
                _print_keys(await service.list_api_keys())
            else:
                revoked = await service.revoke_api_key(args.name)
                await record_change(
                    backends.index, "cli:apikey", None, f"revoked API key {revoked.name}"
                )
                print(f"revoked API key {revoked.name}")
        except DicomwebError as exc:
            print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
            return 1
        return 0
    finally:
        await backends.close()


def _print_keys(records: list[Any]) -> None:
    now = datetime.now(UTC)
    print(f"{'NAME':<24}  {'STATE':<8}  {'CREATED':<16}  {'EXPIRES':<16}  GRANTS")
    for record in records:
        state = "active"
        if record.revoked is not None:
            state = "revoked"
        elif record.expires is not None and record.expires <= now:
            state = "expired"
        expires = "-" if record.expires is None else f"{record.expires:%Y-%m-%d %H:%M}"
        grants = " ".join(sorted(str(grant) for grant in record.grants))
        print(
            f"{record.name:<24}  {state:<8}  {record.created:%Y-%m-%d %H:%M}  {expires:<16}"
            f"  {grants}"
        )
