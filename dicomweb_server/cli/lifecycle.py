"""`dicomweb-server restore`, `purge` and `hold add|list|remove` (issue 18).

Deleted and rejected instances stay in the trash for DICOMWEB_DELETE_GRACE_DAYS: `restore`
brings a study or series back unchanged, `purge` empties the trash now. Legal holds keep
studies from being deleted, rejected or expired, and keep what of them is in the trash from
being purged. Each action is logged with the operator's user name (from the environment) for
the audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any, cast

from dicomweb_server.backends import open_backends
from dicomweb_server.cli.admin_record import operator_name, record_change
from dicomweb_server.cli.backends import delete_service
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import AuditLog
from dicomweb_server.services.audit import system_event, write_now
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.holds import HoldService

__all__ = ["add_commands"]

log = logging.getLogger("dicomweb_server.cli")


def add_commands(commands: Any) -> None:
    restore = commands.add_parser(
        "restore", help="bring deleted or rejected instances back from the trash"
    )
    restore.add_argument("--study", required=True, help="StudyInstanceUID")
    restore.add_argument("--series", help="SeriesInstanceUID (default: the whole study)")
    restore.add_argument("--site", help="the site (default: DICOMWEB_DEFAULT_SITE)")
    restore.set_defaults(run=_runner(_restore))
    purge = commands.add_parser("purge", help="delete trashed instances' objects now")
    purge.add_argument(
        "--older-than",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="only instances deleted more than DAYS ago (default 0: the whole trash)",
    )
    purge.add_argument("--site", help="only this site's trash")
    purge.set_defaults(run=_runner(_purge))
    hold = commands.add_parser("hold", help="add, list or remove legal holds")
    actions = hold.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="hold a study, or every study of a patient")
    subject = add.add_mutually_exclusive_group(required=True)
    subject.add_argument("--patient", help="PatientID")
    subject.add_argument("--study", help="StudyInstanceUID")
    add.add_argument("--issuer", help="IssuerOfPatientID (with --patient)")
    add.add_argument("--site", help="only in this site (default: every site)")
    add.add_argument("--reason", required=True, help="why (a case number, a request)")
    add.set_defaults(run=_runner(_hold_add))
    listing = actions.add_parser("list", help="every legal hold")
    listing.set_defaults(run=_runner(_hold_list))
    remove = actions.add_parser("remove", help="lift a legal hold")
    remove.add_argument("id", type=int)
    remove.set_defaults(run=_runner(_hold_remove))
    for parser in (restore, purge, add, listing, remove):
        parser.add_argument("--data-dir", help="embedded storage folder (DICOMWEB_DATA_DIR)")


def _audit_log(deleter: DeleteService) -> AuditLog:
    """The audit trail: the one index the CLI's services run over holds it too."""
    return cast(AuditLog, deleter.lifecycle)


def _runner(action: Any) -> Any:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        return asyncio.run(_run(action, settings, args))

    return run


async def _run(action: Any, settings: Settings, args: argparse.Namespace) -> int:
    backends = await open_backends(settings)
    try:
        deleter = delete_service(backends, settings)
        code: int = await action(deleter, HoldService(backends.index), settings, args)
        return code
    except DicomwebError as exc:
        print(f"dicomweb-server: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        await backends.close()


async def _restore(
    deleter: DeleteService, holds: HoldService, settings: Settings, args: argparse.Namespace
) -> int:
    site = args.site or settings.default_site
    count = await deleter.restore(site, args.study, args.series)
    detail = f"series {args.series}" if args.series else ""
    restored = system_event(
        AuditAction.RESTORE,
        "cli:restore",
        site,
        {args.study: None},
        operator=operator_name(),
        detail=detail,
    )
    await write_now(_audit_log(deleter), [restored])  # the patient: the study is back
    log.info(
        "restore by %s: %d instance(s) of study %s at site %s",
        operator_name(),
        count,
        args.study,
        site,
    )
    what = f"series {args.series}" if args.series else f"study {args.study}"
    print(f"restored {count} instance(s) of {what} at site {site}")
    return 0


async def _purge(
    deleter: DeleteService, holds: HoldService, settings: Settings, args: argparse.Namespace
) -> int:
    if args.older_than < 0:
        print("dicomweb-server: --older-than must be 0 or more", file=sys.stderr)
        return 2
    report = await deleter.purge(older_than_days=args.older_than, site=args.site)
    await write_now(
        _audit_log(deleter),
        [
            system_event(
                AuditAction.DELETE,
                "cli:purge",
                site,
                dict.fromkeys(studies),
                operator=operator_name(),
                detail="purge",
            )
            for site, studies in sorted(report.studies.items())
        ],
    )
    log.info(
        "purge by %s: %d trashed instance(s), %d object(s), %d kept under legal hold",
        operator_name(),
        report.instances,
        report.objects,
        report.held,
    )
    print(
        f"purged {report.instances} trashed instance(s): deleted {report.objects} object(s),"
        f" kept {len(report.kept)} stored again since"
    )
    if report.held:
        held_by = ", ".join(map(str, sorted(report.holds)))
        print(
            f"kept {report.held} trashed instance(s) under legal hold {held_by}: restorable;"
            " purged once the hold is removed"
        )
    return 0


async def _hold_add(
    deleter: DeleteService, holds: HoldService, settings: Settings, args: argparse.Namespace
) -> int:
    hold = await holds.add(
        reason=args.reason,
        who=operator_name(),
        patient_id=args.patient,
        issuer_of_patient_id=args.issuer,
        study_instance_uid=args.study,
        site=args.site,
    )
    await record_change(
        _audit_log(deleter),
        "cli:hold",
        hold.site,
        f"added legal hold {hold.id} on {hold.subject}: {hold.reason}",
        logged=f"added legal hold {hold.id} on {hold.logged_subject}",
    )
    print(f"added legal hold {hold.id} on {hold.subject}: {hold.reason}")
    return 0


async def _hold_list(
    deleter: DeleteService, holds: HoldService, settings: Settings, args: argparse.Namespace
) -> int:
    print(f"{'ID':>5}  {'CREATED':<20}  {'BY':<12}  SUBJECT: REASON")
    for hold in await holds.list():
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hold.created))
        print(f"{hold.id:>5}  {created:<20}  {hold.created_by:<12}  {hold.subject}: {hold.reason}")
    return 0


async def _hold_remove(
    deleter: DeleteService, holds: HoldService, settings: Settings, args: argparse.Namespace
) -> int:
    removed = await holds.remove(args.id, who=operator_name())
    await record_change(
        _audit_log(deleter),
        "cli:hold",
        removed.site,
        f"removed legal hold {removed.id} on {removed.subject}: {removed.reason}",
        logged=f"removed legal hold {removed.id} on {removed.logged_subject}",
    )
    print(f"removed legal hold {removed.id} on {removed.subject}")
    return 0
