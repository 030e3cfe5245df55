"""Delete, reject, restore and purge (issue 18): hiding data first, removing it later.

Every way data disappears goes through one soft delete (`Lifecycle.delete_instances`): a
DELETE request, an IOCM rejection (a stored rejection note, or the reject resource), and
retention. It moves the instance rows into the trash in one transaction, so the data is gone
from every search and retrieve at once, and removes the derived data (transcoded frames,
thumbnails) kept for those instances. Objects stay in the store for `grace_days`, during
which `restore` brings the instances back unchanged; `purge` (run by maintenance after the
grace period, or by an operator) deletes the objects, then the trash rows. An answer planned
before a delete keeps reading objects that are still there, so it completes.

A stored rejection note is audited here (no request names the studies it rejects): one
"reject" record per study it names, by the caller, with the patient read before the change.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from dicomweb_server.domain.audit import AuditAction
from dicomweb_server.domain.blob_keys import derived_prefix
from dicomweb_server.domain.lifecycle import Hold, StudyFacts, check_deletable
from dicomweb_server.domain.rejection import (
    DATA_RETENTION_POLICY_EXPIRED,
    RejectionCode,
    RejectionNote,
)
from dicomweb_server.domain.sites import Site
from dicomweb_server.errors import DicomwebError, NotFoundError
from dicomweb_server.index.base import (
    DeleteTarget,
    Judge,
    Lifecycle,
    Rejection,
    RejectionLog,
    SiteCatalog,
    TrashedInstance,
)
from dicomweb_server.services.audit import AuditService, system_event
from dicomweb_server.storage.base import BlobStore

__all__ = ["DeleteService", "PurgeReport", "delete_unneeded", "referenced"]

log = logging.getLogger("dicomweb_server.delete")
_DAY = 86400.0
_PURGE_BATCH = 500
# A deletion mark this old belongs to a deleter that died between marking and unmarking (a
# live one deletes a batch in seconds): the next deleter drops it.
_FORGET_MARKS_AFTER = _DAY


async def delete_unneeded(
    lifecycle: Lifecycle,
    blobs: BlobStore,
    blob_keys: Sequence[str],
    needed: Callable[[Sequence[str]], Awaitable[set[str]]],
) -> tuple[list[str], list[str]]:
    """Delete the objects of `blob_keys` except those `needed` names; (deleted, kept).

    Object keys are content digests, so a store of the same bytes writes the same key, maybe
    between the look at the rows and the delete, and its rows commit after the look. The keys
    are therefore marked (committed) before `needed` looks, and unmarked (advancing the
    deletion epoch) once their objects are deleted. A store commits its rows, then reads the
    marks and the epoch, and writes its objects again once the marks are gone when either
    says a deletion overlapped it (services/store.py): either `needed` sees the store's rows,
    or the store sees the deletion. No transaction stays open across an object-store call.
    """
    if not blob_keys:
        return [], []
    now = time.time()
    marks = await lifecycle.mark_deletions(blob_keys, now, now - _FORGET_MARKS_AFTER)
    try:
        keep = await needed(blob_keys)
        deleted: list[str] = []
        for key in blob_keys:
            if key not in keep:
                await blobs.delete(key)
                deleted.append(key)
    finally:
        await lifecycle.end_deletions(marks)
    return deleted, [key for key in blob_keys if key in keep]


async def referenced(
    lifecycle: Lifecycle, keys: Sequence[str], excluding: Sequence[int] = ()
) -> set[str]:
    """Those of `keys` an instance needs: a live one (the same instance stored again has the
    same key), or a trash row other than the `excluding` ones (restorable)."""
    live = await lifecycle.blob_keys_in_use(keys)
    rest = [key for key in keys if key not in live]
    if not rest:
        return live
    return live | await lifecycle.blob_keys_in_trash(rest, excluding)


@dataclass(slots=True)
class PurgeReport:
    """What a purge removed, and what it kept."""

    instances: int = 0
    objects: int = 0
    kept: list[str] = field(default_factory=list)  # objects stored again since their delete
    held: int = 0  # trashed instances kept (still restorable) because a legal hold covers them
    holds: set[int] = field(default_factory=set)  # the ids of those holds
    # The studies whose trashed instances were purged, by site, in purge order (the audit)
    studies: dict[str, dict[str, None]] = field(default_factory=dict)


@dataclass(slots=True)
class DeleteService:
    """Soft delete, rejection, restore and purge over the index's Lifecycle and the store."""

    lifecycle: Lifecycle
    rejections: RejectionLog
    sites: SiteCatalog
    blobs: BlobStore
    grace_days: float = 7.0
    audit: AuditService | None = None  # records the rejections of stored notes

    async def delete(self, target: DeleteTarget, *, who: str, reason: str = "deleted") -> int:
        """Trash the target's instances (NotFoundError when none); ConflictError naming a
        legal hold or the site's minimum retention when the study may not be deleted."""
        site = await self._site(target.site)
        trashed = await self.lifecycle.delete_instances(
            target, who=who, reason=reason, now=time.time(), judge=_judge(site, min_retain=True)
        )
        await self._forget_derived(target, trashed)
        log.info(
            "deleted %d instance(s) of study %s at site %s (%s, by %s)",
            len(trashed),
            target.study_instance_uid,
            target.site,
            reason,
            who,
        )
        return len(trashed)

    async def reject(self, target: DeleteTarget, code: RejectionCode, *, who: str) -> int:
        """The reject resource: trash the target's instances and record them as rejected with
        `code` (a later store of one is refused). NotFoundError when there are none."""
        count = await self._reject(target, code, None, (), who)
        if not count:
            raise NotFoundError(
                f"no instances of study {target.study_instance_uid} found for rejection"
            )
        return count

    async def apply_rejection_note(
        self, site: str, note: RejectionNote, note_sop_instance_uid: str, *, who: str
    ) -> int:
        """A stored rejection note: record every instance it names as rejected and trash those
        present, study by study, each audited as a rejection by `who` (the caller). ConflictError
        when a named study may not be changed (the studies before it stay rejected)."""
        detail = f"rejection note {note_sop_instance_uid}"
        audit = self.audit
        count = 0
        for study in note.studies():
            references = tuple(
                (ref.series_instance_uid, ref.sop_instance_uid)
                for ref in note.references
                if ref.study_instance_uid == study
            )
            target = DeleteTarget(site, study, None, tuple(sop for _, sop in references))
            # The patient while the study's rows exist: the record names it, as a DELETE's does
            patients = await audit.patients_of(site, [study]) if audit is not None else {}
            count += await self._reject(
                target, note.code, note_sop_instance_uid, references, f"{who} ({detail})"
            )
            if audit is not None:
                audit.record(
                    system_event(
                        AuditAction.REJECT,
                        who,
                        site,
                        {study: patients.get(study)},
                        detail=detail,
                    )
                )
        return count

    async def _reject(
        self,
        target: DeleteTarget,
        code: RejectionCode,
        note: str | None,
        references: tuple[tuple[str, str], ...],
        who: str,
    ) -> int:
        site = await self._site(target.site)
        trashed = await self.lifecycle.delete_instances(
            target,
            who=who,
            reason=f"rejected: {code} ({code.meaning})",
            now=time.time(),
            judge=_judge(site, min_retain=code == DATA_RETENTION_POLICY_EXPIRED),
            rejection=Rejection(str(code), note, references),
        )
        await self._forget_derived(target, trashed)
        if trashed:
            log.info(
                "rejected %d instance(s) of study %s at site %s (%s, by %s)",
                len(trashed),
                target.study_instance_uid,
                target.site,
                code,
                who,
            )
        return len(trashed)

    async def rejected_among(self, site: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        """{SOP Instance UID: rejection code} of those that were rejected at the site."""
        if not sop_instance_uids:
            return {}
        return await self.rejections.rejected_among(site, sop_instance_uids)

    async def uid_level(self, site: str, uid: str) -> str | None:
        """`study`, `series` or `instance` when the site holds something with this UID."""
        return await self.lifecycle.uid_level(site, uid)

    async def discard(self, blob_key: str) -> None:
        """Delete the object of a part that is not stored, unless an instance still needs it:
        a trashed one, or a stored one (the same instance sent again, byte for byte, has the
        stored copy's key)."""
        needed = functools.partial(referenced, self.lifecycle)
        await delete_unneeded(self.lifecycle, self.blobs, [blob_key], needed)

    async def deletion_state(self, blob_keys: Sequence[str]) -> tuple[int, set[str]]:
        """The deletion epoch, and those of `blob_keys` whose deletion is under way (see
        `delete_unneeded`)."""
        return await self.lifecycle.deletion_state(blob_keys)

    async def restore(self, site: str, study: str, series: str | None = None) -> int:
        """Bring a study's (or series') trashed instances back, unchanged."""
        await self._site(site)
        count = await self.lifecycle.restore_instances(site, study, series)
        log.info("restored %d instance(s) of study %s at site %s", count, study, site)
        return count

    async def purge(
        self, *, older_than_days: float | None = None, site: str | None = None
    ) -> PurgeReport:
        """Delete the objects of instances trashed more than `older_than_days` ago (default:
        the grace period), then their trash rows.

        An object a live instance references again (the same instance stored again with the
        same content has the same key) is kept; a store of it racing the purge writes it
        again (`delete_unneeded`). A trashed
        instance whose study a legal hold covers (by the study, or by its patient) is left in
        the trash, restorable, and counted in `held`: a later purge takes it once the hold is
        removed.
        """
        days = self.grace_days if older_than_days is None else older_than_days
        cutoff = time.time() - days * _DAY
        report = PurgeReport()
        after = 0
        while True:
            found = await self.lifecycle.trashed_before(cutoff, site, _PURGE_BATCH, after)
            if not found:
                break
            after = found[-1].id
            batch = [trashed for trashed in found if trashed.held_by is None]
            if len(batch) < len(found):
                report.held += len(found) - len(batch)
                report.holds.update(t.held_by for t in found if t.held_by is not None)
            if not batch:
                continue
            # The same object, trashed again under a hold, stays with it
            held_keys = {t.blob_key for t in found if t.held_by is not None}
            keys = sorted({t.blob_key for t in batch} - held_keys)
            purged_ids = [t.id for t in batch]
            # A trash row this batch does not purge (the same bytes stored again and deleted
            # again since) is still restorable: its object stays
            needed = functools.partial(referenced, self.lifecycle, excluding=purged_ids)
            deleted, kept = await delete_unneeded(self.lifecycle, self.blobs, keys, needed)
            report.kept.extend(kept)
            report.objects += len(deleted)
            await self.lifecycle.forget_trashed(purged_ids)
            report.instances += len(batch)
            for trashed in batch:
                site_studies = report.studies.setdefault(trashed.key.site, {})
                site_studies[trashed.key.study_instance_uid] = None
            log.info("purged %d trashed instance(s) (%d objects)", len(batch), report.objects)
        if report.held:
            log.info(
                "purge kept %d trashed instance(s) under legal hold %s",
                report.held,
                ", ".join(map(str, sorted(report.holds))),
            )
        return report

    async def _site(self, name: str) -> Site:
        site = await self.sites.get_site(name)
        if site is None:
            raise NotFoundError(f"site {name!r} does not exist")
        return site

    async def _forget_derived(self, target: DeleteTarget, trashed: list[TrashedInstance]) -> None:
        """Remove the derived data of trashed instances: ledger entries, then objects. A
        failure is logged: the instances are gone already, and derived data of an instance
        that does not exist is never served (every answer looks the instance up first)."""
        if not trashed:
            return
        if target.sop_instance_uids is None:
            prefixes = {
                derived_prefix(t.key.site, t.key.study_instance_uid, t.key.series_instance_uid)
                for t in trashed
            }
        else:
            prefixes = {
                derived_prefix(
                    t.key.site,
                    t.key.study_instance_uid,
                    t.key.series_instance_uid,
                    t.key.sop_instance_uid,
                )
                for t in trashed
            }
        try:
            for prefix in sorted(prefixes):
                await self.lifecycle.forget_cache_entries(prefix)
                async for info in self.blobs.iter_objects(prefix):
                    await self.blobs.delete(info.key)
        except DicomwebError as exc:
            log.warning("derived data of deleted instances not removed: %s", exc.reason)


def _judge(site: Site, *, min_retain: bool) -> Judge:
    """Holds always; the site's minimum retention for deletes (not for quality rejections)."""
    years = site.min_retain_years if min_retain else None
    now = time.time()

    def judge(facts: StudyFacts, holds: list[Hold]) -> None:
        check_deletable(facts, holds, now=now, min_retain_years=years)

    return judge
