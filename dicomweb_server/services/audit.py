"""Audit (issue 17): record what each request did to patient data, off the request path.

`record(event)` only appends to an in-memory queue (bounded: past DICOMWEB_AUDIT_QUEUE_LIMIT
events are dropped, counted and logged, a request never waits). A background task started in
the app's lifespan takes the queue every DICOMWEB_AUDIT_FLUSH_SECONDS (sooner once a batch is
full) and:

1. rolls up image reads (metadata, frames, rendered, thumbnails, bulk data) of one study by one
   user from one address into one "view" record with counts per kind, written when it is
   DICOMWEB_AUDIT_ROLLUP_SECONDS old (or when the server stops), so a viewer's thousand frame
   requests are one readable line of the trail;
2. resolves the PatientID (and issuer) of every study in the batch with one index query per
   site, never a query per request: a roll-up's when it opens (a few seconds after its first
   read, not when it is written), and a deletion's, captured by its handler while the study
   still existed (`patients_of`), also fills in the records of that study queued before it;
3. appends the batch in one transaction (kept and retried while the index is down, within the
   same bound), then hands it to the syslog forwarder, if any;
4. about once an hour, removes records older than DICOMWEB_AUDIT_RETENTION_DAYS (one process at
   a time; the index refuses any other deletion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from dicomweb_server.config import Settings
from dicomweb_server.domain.attributes import keyword_for_tag, resolve_tag
from dicomweb_server.domain.audit import (
    ROLLED_UP,
    AuditAction,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditRecord,
    AuditStudy,
)
from dicomweb_server.domain.grants import is_valid_site_name
from dicomweb_server.domain.sites import choose_site
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import AuditLog

__all__ = ["AuditForwarder", "AuditService", "AuditSettings", "system_event", "write_now"]

log = logging.getLogger("dicomweb_server.audit")

MAX_UIDS_PER_RECORD = 200  # series or instance UIDs a roll-up lists (its counts stay exact)
MAX_OPEN_ROLLUPS = 10_000  # past this the oldest roll-up is written early
MAX_NAME_LENGTH = 256  # subject, display name and client as stored
_STOP_TIMEOUT = 15.0  # seconds the final write may take at shutdown
_DROP_LOG_INTERVAL = 10.0  # seconds between two warnings about dropped events
_UID = re.compile(r"[0-9][0-9.]{0,63}")
_KEY = re.compile(r"[A-Za-z0-9]{1,64}(\.[A-Za-z0-9]{1,64}){0,7}")
SERVER_SUBJECT = "dicomweb-server"


class AuditForwarder(Protocol):
    """Where written records go next (an ATNA repository over syslog)."""

    def submit(self, records: Sequence[AuditRecord]) -> None:
        """Take records to send; never waits (a bounded buffer of its own)."""
        ...

    async def start(self) -> None:
        """Start sending."""
        ...

    async def close(self) -> None:
        """Send what is buffered (briefly), then stop."""
        ...


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The DICOMWEB_AUDIT_* settings the service uses."""

    default_site: str = "default"
    queue_limit: int = 10_000
    batch_size: int = 200
    flush_seconds: float = 1.0
    rollup_seconds: float = 300.0
    retention_days: int = 2555
    expiry_interval_seconds: float = 3600.0


@dataclass(slots=True)
class _RollUp:
    first: AuditEvent
    end_time: float
    study: AuditStudy  # with its patient once resolved
    resolved: bool = False  # looked up in the index (found or not)
    counts: dict[str, int] = field(default_factory=dict)
    series: dict[str, None] = field(default_factory=dict)
    instances: dict[str, None] = field(default_factory=dict)

    def add(self, event: AuditEvent) -> None:
        self.end_time = max(self.end_time, event.time)
        action = str(event.action)
        self.counts[action] = self.counts.get(action, 0) + 1
        if event.series is not None and len(self.series) < MAX_UIDS_PER_RECORD:
            self.series[_uid(event.series)] = None
        if event.instance is not None and len(self.instances) < MAX_UIDS_PER_RECORD:
            self.instances[_uid(event.instance)] = None


_RollUpKey = tuple[str, str, str, str | None, str, int]


class AuditService:
    """Records audit events without blocking requests; searches and expires the trail."""

    def __init__(
        self,
        log: AuditLog,
        settings: AuditSettings | None = None,
        *,
        forwarder: AuditForwarder | None = None,
    ) -> None:
        self._log = log
        self._settings = settings or AuditSettings()
        self._forwarder = forwarder
        self._queue: deque[AuditEvent] = deque()
        self._pending: list[AuditRecord] = []  # taken from the queue, not yet written
        self._rollups: dict[_RollUpKey, _RollUp] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0  # events (or records) lost to the bounds, since start
        self._dropped_logged = 0
        self._last_drop_log = 0.0
        self._next_expiry = 0.0
        self._failing_since: float | None = None

    @classmethod
    def from_settings(cls, log: AuditLog, settings: Settings) -> AuditService:
        """The service the DICOMWEB_AUDIT_* settings describe, forwarding to syslog if asked."""
        forwarder = None
        if settings.audit_syslog_url:
            from dicomweb_server.services.audit_syslog import SyslogForwarder

            forwarder = SyslogForwarder.from_url(
                settings.audit_syslog_url,
                source=settings.audit_source,
                queue_limit=settings.audit_syslog_queue_limit,
                ca_file=settings.audit_syslog_ca_file,
                cert_file=settings.audit_syslog_certfile,
                key_file=settings.audit_syslog_keyfile,
            )
        return cls(
            log,
            AuditSettings(
                default_site=settings.default_site,
                queue_limit=settings.audit_queue_limit,
                batch_size=settings.audit_batch_size,
                flush_seconds=settings.audit_flush_seconds,
                rollup_seconds=settings.audit_rollup_seconds,
                retention_days=settings.audit_retention_days,
                expiry_interval_seconds=settings.audit_expiry_interval_seconds,
            ),
            forwarder=forwarder,
        )

    @property
    def default_site(self) -> str:
        """The site STOW at the enterprise root stores into."""
        return self._settings.default_site

    # -- the request path ------------------------------------------------------------------

    async def patients_of(
        self, site: str, study_instance_uids: Sequence[str]
    ) -> dict[str, tuple[str, str | None]]:
        """{StudyInstanceUID: (PatientID, IssuerOfPatientID)} of the studies the site holds:
        what a handler about to delete them leaves for its record (`AuditEvent.patients`).
        Empty when the index cannot say: the record is then resolved when written."""
        try:
            rows = await self._log.study_patients(site, study_instance_uids)
        except DicomwebError as exc:
            log.warning("audit: the patients of a deletion were not resolved: %s", exc.reason)
            return {}
        return {
            row.study_instance_uid: (row.patient_id, row.issuer_of_patient_id)
            for row in rows
            if row.patient_id is not None
        }

    def record(self, event: AuditEvent) -> None:
        """Queue an event for the writer; when the queue is full, count it as dropped."""
        queue = self._queue
        if len(queue) >= self._settings.queue_limit:
            self._drop(1)
            return
        queue.append(event)
        if len(queue) >= self._settings.batch_size:
            self._wake.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            log.warning(
                "audit queue full (DICOMWEB_AUDIT_QUEUE_LIMIT=%d): %d audit events dropped"
                " since the last warning, %d in all",
                self._settings.queue_limit,
                self.dropped - self._dropped_logged,
                self.dropped,
            )
            self._dropped_logged = self.dropped
            self._last_drop_log = now

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background writer (and the forwarder); record the application start."""
        if self._task is not None:
            return
        self._stopping = False
        # The first expiry a few minutes after start, then hourly: processes started together
        # spread out, and the index lets one of them at a time do it.
        interval = self._settings.expiry_interval_seconds
        self._next_expiry = time.monotonic() + min(interval, random.uniform(60.0, 300.0))
        if self._forwarder is not None:
            await self._forwarder.start()
        self.record(_application_event("start"))
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Write everything queued and every open roll-up, then stop (the forwarder too)."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(task, _STOP_TIMEOUT)
            self.record(_application_event("stop"))  # after everything it ends
            await asyncio.wait_for(self.flush(close_rollups=True), _STOP_TIMEOUT)
        except TimeoutError:
            log.error("the audit writer did not finish within %gs at shutdown", _STOP_TIMEOUT)
        except Exception:
            log.exception("audit write at shutdown failed")
        lost = len(self._queue) + len(self._pending) + len(self._rollups)
        if lost:
            log.error("%d audit events could not be written before shutdown", lost)
        if self._forwarder is not None:
            await self._forwarder.close()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.flush_seconds)
            self._wake.clear()
            try:
                await self.flush(close_rollups=self._stopping)
                self._failing_since = None
            except DicomwebError as exc:
                now = time.monotonic()
                if self._failing_since is None or now - self._failing_since >= 60.0:
                    self._failing_since = now  # warned once a minute while the index is down
                    log.warning(
                        "audit write failed (%s): %d records kept and retried",
                        exc.reason,
                        len(self._pending),
                    )
            except Exception:
                log.exception("audit write failed; the records are kept and retried")
            if not self._stopping and time.monotonic() >= self._next_expiry:
                self._next_expiry = time.monotonic() + self._settings.expiry_interval_seconds
                try:
                    await self.expire()
                except Exception:
                    log.exception("audit retention expiry failed; retried in an hour")
        # One last attempt for what a failed write left behind.
        if self._queue or self._pending or self._rollups:
            try:
                await self.flush(close_rollups=True)
            except Exception:
                log.exception("audit write at shutdown failed")

    # -- writing ---------------------------------------------------------------------------

    async def flush(self, *, close_rollups: bool = False, now: float | None = None) -> int:
        """Write what is queued, and roll-ups whose window has passed (all with
        `close_rollups`); return how many records were written."""
        async with self._lock:
            now = time.time() if now is None else now
            while self._queue:
                event = self._queue.popleft()
                if event.patients:
                    self._fill_in_patients(_site(event.site), event.patients)
                if event.action in ROLLED_UP and event.study and self._settings.rollup_seconds:
                    self._roll_up(event)
                else:
                    self._pending.append(_single_record(event))
            window = self._settings.rollup_seconds
            for key, rollup in list(self._rollups.items()):
                if close_rollups or now - rollup.first.time >= window:
                    self._pending.append(_rollup_record(self._rollups.pop(key)))
            # Roll-ups opened since the last turn: their patient now, while their study exists
            fresh = [rollup for rollup in self._rollups.values() if not rollup.resolved]
            overflow = len(self._pending) - self._settings.queue_limit
            if overflow > 0:
                del self._pending[:overflow]
                self._drop(overflow)
            if not self._pending:
                await self._resolve_patients((), fresh)
                return 0
            written = 0
            while self._pending:
                batch = self._pending[: self._settings.batch_size]
                try:
                    await self._resolve_patients(batch, fresh)
                    fresh = []
                    await self._log.append_audit_records(batch)
                except DicomwebError:
                    raise  # the index is down: kept, and retried on the next turn
                except Exception:
                    # A record the index cannot take would block the trail for good
                    log.exception("%d audit records could not be written: dropped", len(batch))
                    del self._pending[: len(batch)]
                    self._drop(len(batch))
                    continue
                del self._pending[: len(batch)]
                written += len(batch)
                if self._forwarder is not None:
                    self._forwarder.submit(batch)
            return written

    def _roll_up(self, event: AuditEvent) -> None:
        assert event.study is not None
        key = (event.subject, event.kind, event.client, event.site, event.study, event.outcome)
        rollup = self._rollups.get(key)
        if rollup is not None and event.time - rollup.first.time >= self._settings.rollup_seconds:
            self._pending.append(_rollup_record(self._rollups.pop(key)))  # its window is over
            rollup = None
        if rollup is None:
            if len(self._rollups) >= MAX_OPEN_ROLLUPS:
                oldest = min(self._rollups, key=lambda k: self._rollups[k].first.time)
                self._pending.append(_rollup_record(self._rollups.pop(oldest)))
            study = AuditStudy(_uid(event.study), _site(event.site))
            rollup = self._rollups[key] = _RollUp(event, event.time, study)
        rollup.add(event)

    def _fill_in_patients(
        self, site: str | None, patients: dict[str, tuple[str, str | None]]
    ) -> None:
        """A deletion's patients (captured before its rows went) for the records of those
        studies at that site still waiting for theirs: they were queued before it."""
        known = {_uid(uid): patient for uid, patient in patients.items()}

        def filled(study: AuditStudy) -> AuditStudy:
            if (
                study.patient_id is None
                and study.site == site
                and study.study_instance_uid in known
            ):
                return AuditStudy(study.study_instance_uid, site, *known[study.study_instance_uid])
            return study

        for record in self._pending:
            record.studies = tuple(filled(study) for study in record.studies)
        for rollup in self._rollups.values():
            rollup.study = filled(rollup.study)

    async def _resolve_patients(
        self, records: Sequence[AuditRecord], rollups: Sequence[_RollUp] = ()
    ) -> None:
        """Fill in each study's patient (and, at the enterprise root, its site) in records and
        roll-ups: one index query per site over the distinct studies of the batch."""
        wanted: dict[str | None, set[str]] = {}
        studies = [study for record in records for study in record.studies]
        for study in [*studies, *(rollup.study for rollup in rollups)]:
            if study.patient_id is None and study.study_instance_uid != "invalid":
                wanted.setdefault(study.site, set()).add(study.study_instance_uid)
        found = await self._find_patients(wanted) if wanted else {}
        for rollup in rollups:
            study = rollup.study
            if study.patient_id is None:
                rollup.study = found.get((study.site, study.study_instance_uid), study)
            rollup.resolved = True
        for record in records:
            if not any(s.patient_id is None for s in record.studies):
                continue
            record.studies = tuple(
                found.get((s.site, s.study_instance_uid), s) if s.patient_id is None else s
                for s in record.studies
            )
            if record.site is None and len(record.studies) == 1:
                record.site = record.studies[0].site

    async def _find_patients(
        self, wanted: dict[str | None, set[str]]
    ) -> dict[tuple[str | None, str], AuditStudy]:
        """{(site, study): the study with its patient} for the studies wanted at each site
        (None: at the enterprise root), one index query per site."""
        found: dict[tuple[str | None, str], AuditStudy] = {}
        for site, uids in wanted.items():
            rows = await self._log.study_patients(site, sorted(uids))
            if site is not None:
                found.update({(site, row.study_instance_uid): row for row in rows})
                continue
            by_uid: dict[str, dict[str, AuditStudy]] = {}
            for row in rows:
                by_uid.setdefault(row.study_instance_uid, {})[row.site or ""] = row
            for uid, holding in by_uid.items():
                # A record without a site was refused before a handler chose a copy (a 401):
                # name the one the enterprise root would serve (services/sites.py). Reads and
                # deletes that got that far carry the site they served or changed.
                chosen = choose_site(sorted(holding), self._settings.default_site)
                if chosen is not None:
                    found[(None, uid)] = holding[chosen]
        return found

    # -- reading and expiry ----------------------------------------------------------------

    async def search(self, query: AuditQuery) -> AuditPage:
        """Records matching the query, newest first (what is still queued is not included)."""
        return await self._log.query_audit_records(query)

    async def expire(self, now: float | None = None) -> int | None:
        """Remove records that ended more than DICOMWEB_AUDIT_RETENTION_DAYS ago; how many
        (None when another process is doing it right now)."""
        now = time.time() if now is None else now
        cutoff = now - self._settings.retention_days * 86400.0
        try:
            removed = await self._log.expire_audit_records(cutoff)
        except DicomwebError as exc:
            log.warning("audit retention expiry failed: %s", exc.reason)
            return None
        if removed:
            log.info(
                "audit retention: removed %d records older than %d days",
                removed,
                self._settings.retention_days,
            )
        return removed


def system_event(
    action: AuditAction,
    actor: str,
    site: str | None,
    patients: Mapping[str, tuple[str, str | None] | None],
    *,
    operator: str = "",
    detail: str = "",
) -> AuditEvent:
    """An event no request made: retention expiry, a CLI command, a stored rejection note.

    `actor` names the system actor (`retention`, `cli:purge`, `cli:restore`), `operator` who
    ran it when someone did; `site` None for the whole server; `patients` maps each study to
    its patient, captured before the change when it removes the study (None: resolved from
    the index when written)."""
    known = {uid: patient for uid, patient in patients.items() if patient is not None}
    return AuditEvent(
        time=time.time(),
        subject=actor,
        kind="system",
        display_name=f"{actor} ({operator})" if operator else actor,
        client="",
        action=action,
        site=site,
        outcome=200,
        request_id="",
        studies=tuple(patients),
        detail=detail,
        patients=known or None,
    )


async def write_now(log: AuditLog, events: Sequence[AuditEvent]) -> int:
    """Write events at once, outside a server (a CLI command); how many records."""
    service = AuditService(log)
    for event in events:
        service.record(event)
    return await service.flush(close_rollups=True)


def _application_event(what: str) -> AuditEvent:
    return AuditEvent(
        time=time.time(),
        subject=SERVER_SUBJECT,
        kind="system",
        display_name=f"dicomweb-server (pid {os.getpid()})",
        client="",
        action=AuditAction.APPLICATION,
        site=None,
        outcome=200,
        request_id="",
        detail=what,
    )


def _uid(text: str) -> str:
    """A UID as stored; anything else in its place (a path typo, a name) is not kept."""
    return text if _UID.fullmatch(text) else "invalid"


def _site(text: str | None) -> str | None:
    """A site name as stored (a path's bad one is not kept: the request was refused)."""
    return text if text is None or is_valid_site_name(text) else "invalid"


def _name(text: str) -> str:
    return text.replace("\x00", "")[:MAX_NAME_LENGTH]


def _keyword(key: str) -> str | None:
    """A match key as recorded: its keyword path (`PatientID`, `00100020` → `PatientID`);
    None for a key that is no attribute (never its text: it could be patient data)."""
    if not _KEY.fullmatch(key):
        return None
    try:
        return ".".join(keyword_for_tag(resolve_tag(part)) for part in key.split("."))
    except DicomwebError:
        return None


def query_keywords(keys: Sequence[str]) -> tuple[str, ...]:
    """The distinct match keys of a query, as keywords, in the order given."""
    found: dict[str, None] = {}
    for key in keys:
        keyword = _keyword(key)
        if keyword is not None:
            found[keyword] = None
    return tuple(found)


def _base_record(event: AuditEvent) -> AuditRecord:
    return AuditRecord(
        time=event.time,
        end_time=event.time,
        subject=_name(event.subject),
        kind=event.kind,
        display_name=_name(event.display_name),
        client=_name(event.client),
        action=str(event.action),
        site=_site(event.site),
        outcome=event.outcome,
        request_id=event.request_id,
    )


def _single_record(event: AuditEvent) -> AuditRecord:
    record = _base_record(event)
    uids = event.studies or ((event.study,) if event.study else ())
    site = _site(event.site)
    known = event.patients or {}
    record.studies = tuple(
        AuditStudy(_uid(uid), site, *known[uid]) if uid in known else AuditStudy(_uid(uid), site)
        for uid in dict.fromkeys(uids)
    )
    if event.shown:
        shown = (
            replace(s, study_instance_uid=_uid(s.study_instance_uid), site=_site(s.site))
            for s in event.shown
        )
        record.studies += tuple(dict.fromkeys(shown))
        sites = {study.site for study in record.studies}
        if record.site is None and len(sites) == 1:
            record.site = sites.pop()
    record.series = (_uid(event.series),) if event.series else ()
    record.instances = (_uid(event.instance),) if event.instance else ()
    record.query_keys = query_keywords(event.query_keys)
    record.results = event.results
    record.detail = event.detail
    return record


def _rollup_record(rollup: _RollUp) -> AuditRecord:
    first = rollup.first
    record = replace(_base_record(first), end_time=rollup.end_time, action=str(AuditAction.VIEW))
    record.studies = (rollup.study,)
    if record.site is None:
        record.site = rollup.study.site
    record.series = tuple(rollup.series)
    record.instances = tuple(rollup.instances)
    record.counts = dict(sorted(rollup.counts.items()))
    return record
