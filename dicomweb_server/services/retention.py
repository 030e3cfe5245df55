"""Maintenance inside the server processes (issue 18): purge past the grace period, retention.

Every server process runs a `Maintenance` task; each `interval` seconds it tries to take a
lease in the index (shared by every worker and machine), and only the holder works: it purges
trashed instances older than DICOMWEB_DELETE_GRACE_DAYS, then expires the studies of each
site with `retain_years` through the same soft delete as a DELETE (reason "retention"), so
expired data stays restorable for the grace period too. A study under a legal hold or younger
than its site's minimum retention is skipped (and logged), never expired. Each expired study
leaves a "study deleted" audit record by the actor `retention`, naming its patient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.domain.lifecycle import years_before
from dicomweb_server.errors import ConflictError, DicomwebError, NotFoundError
from dicomweb_server.index.base import DeleteTarget, Lifecycle, SiteCatalog
from dicomweb_server.services.audit import AuditService, system_event
from dicomweb_server.services.delete import DeleteService, PurgeReport

__all__ = ["Maintenance", "MaintenanceReport"]

log = logging.getLogger("dicomweb_server.maintenance")
_LEASE = "maintenance"
_MIN_LEASE = 60.0  # seconds a lease lasts at least, whatever the interval


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run did."""

    purged: PurgeReport
    expired: int
    refused: int


class Maintenance:
    """The periodic purge and retention run, one process at a time."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        sites: SiteCatalog,
        deleter: DeleteService,
        *,
        interval: float,
        batch: int = 100,
        audit: AuditService | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._audit = audit
        self._sites = sites
        self._deleter = deleter
        self.interval = interval
        self.batch = batch
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: float | None = None) -> MaintenanceReport | None:
        """One run, if this process holds the lease (None when another one does)."""
        now = time.time() if now is None else now
        lease = max(self.interval, _MIN_LEASE)
        if not await self._lifecycle.claim_lease(_LEASE, self.holder, now + lease, now):
            return None
        purged = await self._deleter.purge()
        expired, refused = await self.expire(now)
        if purged.instances or expired or refused:
            log.info(
                "maintenance: purged %d trashed instance(s), expired %d study(ies),"
                " %d kept by a hold or minimum retention",
                purged.instances,
                expired,
                refused,
            )
        return MaintenanceReport(purged, expired, refused)

    async def expire(self, now: float) -> tuple[int, int]:
        """Soft-delete studies older than their site's `retain_years`; (expired, refused)."""
        expired = refused = 0
        for site in await self._sites.list_sites():
            if not site.retain_years:
                continue
            cutoff = years_before(now, site.retain_years)
            day = cutoff.strftime("%Y%m%d")
            midnight = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC).timestamp()
            kept: set[str] = set()
            done = 0
            while done < self.batch:
                found = await self._lifecycle.expired_studies(
                    site.name, day, midnight, self.batch + len(kept)
                )
                fresh = [uid for uid in found if uid not in kept]
                if not fresh:
                    break
                for uid in fresh[: self.batch - done]:
                    done += 1
                    # The patient while the study exists: its audit record names it
                    audit = self._audit
                    patients = await audit.patients_of(site.name, [uid]) if audit else {}
                    try:
                        await self._deleter.delete(
                            DeleteTarget(site.name, uid), who="retention", reason="retention"
                        )
                        expired += 1
                        if audit is not None:
                            audit.record(
                                system_event(
                                    AuditAction.DELETE,
                                    "retention",
                                    site.name,
                                    {uid: patients.get(uid)},
                                    detail="retention",
                                )
                            )
                    except ConflictError as exc:
                        kept.add(uid)
                        refused += 1
                        log.info("retention: %s", exc.reason)
                    except NotFoundError:
                        continue  # deleted meanwhile
        return expired, refused

    def start(self) -> None:
        """Run in the background every `interval` seconds (jittered); 0 never runs."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval * (0.5 + random.random() / 2))
            try:
                await self.run_once()
            except DicomwebError as exc:
                log.warning("maintenance run failed: %s", exc.reason)
            except Exception:
                log.exception("maintenance run failed")

    async def stop(self) -> None:
        """Stop the background task (a run in progress is cancelled: each step is atomic)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
