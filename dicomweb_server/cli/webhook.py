"""`dicomweb-server webhook add|list|remove|replay`: webhook subscriptions in the index.

The server processes deliver (services/webhook_delivery.py); these commands only change
what the index says. The signing secret stays in the environment variable named with
`--secret-env`, which the server processes must have too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dicomweb_server.cli.admin_record import record_change
from dicomweb_server.config import Settings
from dicomweb_server.domain.events import EVENT_TYPES, parse_since
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.webhooks import WebhookService

__all__ = ["add_commands"]

T = TypeVar("T")


def add_commands(commands: Any) -> None:
    webhook = commands.add_parser("webhook", help="webhook subscriptions (signed CloudEvents)")
    actions = webhook.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="deliver events to a URL from now on")
    add.add_argument("--url", required=True, help="where to POST each event (http or https)")
    add.add_argument(
        "--secret-env",
        required=True,
        metavar="VAR",
        help="environment variable holding the signing secret (never stored)",
    )
    add.add_argument("--site", help="only this site's events (default: every site)")
    add.add_argument(
        "--events",
        default=",".join(EVENT_TYPES),
        help=f"comma-separated event types (default: {','.join(EVENT_TYPES)})",
    )
    add.add_argument(
        "--modality",
        action="extend",
        nargs="+",
        default=[],
        metavar="CODE",
        help="only events of instances (or studies) of these modalities, e.g. CT MR",
    )
    add.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback, link-local and cloud metadata addresses (refused otherwise)",
    )
    add.set_defaults(run=_add)
    listing = actions.add_parser("list", help="subscriptions with pending, delivered, dead counts")
    listing.set_defaults(run=_list)
    remove = actions.add_parser("remove", help="remove a subscription and its queued deliveries")
    remove.add_argument("id", type=int)
    remove.set_defaults(run=_remove)
    replay = actions.add_parser("replay", help="queue past events to a subscription again")
    replay.add_argument("id", type=int)
    replay.add_argument(
        "--since",
        required=True,
        metavar="TIME",
        help="ISO 8601 date-time (2024-05-10T16:00:00Z) or a duration back (90m, 2h, 7d)",
    )
    replay.set_defaults(run=_replay)
    for parser in (add, listing, remove, replay):
        parser.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")


# What a change did, for its audit record: (the webhook's site or None, the change)
Change = Callable[[T], tuple[str | None, str] | None]


def _with_service(
    settings: Settings,
    use: Callable[[WebhookService], Awaitable[T]],
    change: Change[T] | None = None,
) -> T:
    """`use` the subscriptions; a `change` it made is recorded (services/audit, the log)."""

    async def run() -> T:
        from dicomweb_server.app import open_index
        from dicomweb_server.backends import ensure_site

        index = await open_index(settings)
        try:
            await ensure_site(index, settings.default_site, "the default site")
            service = WebhookService(
                index, allow_private=settings.webhook_allow_private, sites=index
            )
            result = await use(service)
            recorded = None if change is None else change(result)
            if recorded is not None:
                await record_change(index, "cli:webhook", *recorded)
            return result
        finally:
            await index.close()

    return asyncio.run(run())


def _fail(exc: DicomwebError) -> int:
    print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
    return 2


def _add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        webhook = _with_service(
            settings,
            lambda service: service.add(
                args.url,
                args.secret_env,
                events=args.events,
                site=args.site,
                modalities=args.modality,
                allow_private=args.allow_private,
            ),
            lambda added: (
                added.site,
                f"added webhook {added.id}: {added.url} receives {','.join(sorted(added.events))}",
            ),
        )
    except DicomwebError as exc:
        return _fail(exc)
    print(f"webhook {webhook.id}: {webhook.url} receives {', '.join(sorted(webhook.events))}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    try:
        statuses = _with_service(settings, lambda service: service.list())
    except DicomwebError as exc:
        return _fail(exc)
    if not statuses:
        print("no webhooks")
    for status in statuses:
        webhook = status.webhook
        print(
            f"{webhook.id}\t{webhook.url}\tsite={webhook.site or '*'}"
            f"\tevents={','.join(sorted(webhook.events))}"
            f"\tmodalities={','.join(sorted(webhook.modalities)) or '*'}"
            f"\tsecret=${webhook.secret_env}"
            f"{chr(9) + 'allow-private' if webhook.allow_private else ''}"
            f"\tpending={status.pending}\tdelivered={status.delivered}\tdead={status.dead}"
        )
        if status.last_error and (status.pending or status.dead):
            print(f"\tlast error: {status.last_error}")
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    try:
        removed = _with_service(
            settings,
            lambda service: service.remove(args.id),
            lambda done: (None, f"removed webhook {args.id}") if done else None,
        )
    except DicomwebError as exc:
        return _fail(exc)
    if not removed:
        print(f"dicomweb-server: no webhook {args.id}", file=sys.stderr)
        return 1
    print(f"webhook {args.id} removed")
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since, time.time())
        queued = _with_service(
            settings,
            lambda service: service.replay(args.id, since),
            lambda count: (
                None
                if count is None
                else (None, f"queued {count} past event(s) to webhook {args.id} again")
            ),
        )
    except DicomwebError as exc:
        return _fail(exc)
    if queued is None:
        print(f"dicomweb-server: no webhook {args.id}", file=sys.stderr)
        return 1
    print(f"webhook {args.id}: {queued} event(s) queued again")
    return 0
