"""What a configuration command leaves behind: a log line and an audit record naming who ran
it. Sites, API keys and webhooks decide who may read what and where patient data is sent, so
each change is a DICOM "Security Alert" of type "Security Configuration" (PS3.15 A.5.3.11),
as an ATNA audit repository expects."""

from __future__ import annotations

import getpass
import logging

from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.index.base import AuditLog
from dicomweb_server.services.audit import system_event, write_now

__all__ = ["operator_name", "record_change"]

log = logging.getLogger("dicomweb_server.cli")


def operator_name() -> str:
    """Who runs the command (the account's user name), for the log and the audit trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def record_change(
    audit_log: AuditLog, actor: str, site: str | None, detail: str, *, logged: str | None = None
) -> None:
    """Record `detail` (never a secret) done by `actor` (`cli:sites`, ...) at `site` (None:
    the whole server), then log it, or `logged` instead when `detail` names a patient."""
    operator = operator_name()
    event = system_event(AuditAction.ADMIN, actor, site, {}, operator=operator, detail=detail)
    await write_now(audit_log, [event])
    log.info("%s by %s: %s", actor, operator, detail if logged is None else logged)
