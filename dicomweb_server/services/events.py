"""Events: the change feed (the outbox read back) and the work each server process does in
the background: announce quiet studies, fan new events out to webhooks, deliver them.

The outbox is written by the index in the transaction of each change (index/events_*.py);
everything here runs after the fact, coordinated through the index, in every process at
once: claims and leases decide who does what, so any number of processes on any number of
machines share the work and none is special.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Set
from typing import Protocol

from dicomweb_server import telemetry
from dicomweb_server.config import Settings
from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.events import FeedEntry, feed_entry_json
from dicomweb_server.errors import DicomwebError
from dicomweb_server.index.base import EventLog, FeedPage, WebhookLedger
from dicomweb_server.services.webhook_delivery import WebhookClient, WebhookDispatcher

__all__ = ["ChangeFeedService", "EventWorker", "feed_sites"]

log = logging.getLogger("dicomweb_server.events")

_ANNOUNCE_BATCH = 100  # studies announced per transaction
_FAN_OUT_BATCH = 1000  # events queued per webhook per transaction
_PRUNE_EVERY = 300.0  # seconds between prunes of delivered rows
_BACKLOG_EVERY = 15.0  # seconds between counts of undelivered events (the metrics gauge)
_ERROR_PAUSE = 5.0  # seconds to wait after the index failed


def feed_sites(request_site: str | None, readable: Set[str] | None) -> frozenset[str] | None:
    """The sites a change feed request shows (None: every site).

    `request_site` is the site root the request came through (None: the enterprise root,
    which shows every site). `readable` is what the caller may read (None: everything);
    this is the one place access control narrows the feed: pass the principal's readable
    sites once there is a principal.
    """
    if request_site is None:
        return None if readable is None else frozenset(readable)
    if readable is None or request_site in readable:
        return frozenset({request_site})
    return frozenset()


class ChangeFeedService:
    """Reads the change feed as JSON entries (Microsoft's shape, plus Site)."""

    def __init__(self, log: EventLog, root_url: str) -> None:
        self._log = log
        self._root_url = root_url

    def _json(self, entry: FeedEntry) -> bytes:
        metadata = entry.metadata
        if metadata is not None:  # BulkDataURIs into the entry's own site's root
            root = f"{self._root_url}/sites/{entry.event.site}"
            metadata = absolute_bulk_uris(metadata, root)
        return feed_entry_json(entry, metadata)

    async def read(
        self,
        sites: frozenset[str] | None,
        *,
        limit: int,
        after: int = 0,
        skip: int = 0,
        start: float | None = None,
        end: float | None = None,
        metadata: bool = True,
    ) -> bytes:
        """A JSON array of entries in sequence order (see EventLog and FeedPage)."""
        page = FeedPage(sites, limit, after, skip, start, end, metadata)
        entries = await self._log.read_feed(page)
        return b"[" + b",".join(self._json(entry) for entry in entries) + b"]"

    async def latest(self, sites: frozenset[str] | None, *, metadata: bool = True) -> bytes | None:
        """The latest entry as a JSON object, or None when the feed is empty."""
        entry = await self._log.latest_feed_entry(sites, metadata)
        return None if entry is None else self._json(entry)


class _EventIndex(EventLog, WebhookLedger, Protocol):
    """An index holding both the outbox and the subscriptions (every server index does)."""


class EventWorker:
    """The background task of one server process: every `poll` seconds (sooner while there
    is work), announce quiet studies, fan new events out, and claim deliveries."""

    def __init__(
        self,
        log: EventLog,
        ledger: WebhookLedger,
        dispatcher: WebhookDispatcher,
        *,
        poll: float,
        quiet_seconds: float,
        keep_delivered: float,
    ) -> None:
        self._log = log
        self._ledger = ledger
        self._dispatcher = dispatcher
        self._poll = poll
        self._quiet = quiet_seconds
        self._keep_delivered = keep_delivered
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned = time.monotonic()
        self._counted = -_BACKLOG_EVERY  # the first round counts the backlog

    @classmethod
    def start_from_settings(cls, index: _EventIndex, settings: Settings) -> EventWorker:
        """The worker the DICOMWEB_* event settings describe, started."""
        client = WebhookClient(
            timeout=settings.webhook_timeout,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_allow_private,
        )
        dispatcher = WebhookDispatcher(
            index,
            client,
            source=settings.root_url,
            concurrency=settings.webhook_concurrency,
            timeout=settings.webhook_timeout,
            max_age=settings.webhook_max_age,
            retry_seconds=settings.webhook_retry_seconds,
        )
        worker = cls(
            index,
            index,
            dispatcher,
            poll=settings.events_poll_seconds,
            quiet_seconds=settings.study_stable_seconds,
            keep_delivered=settings.webhook_max_age,
        )
        worker.start()
        return worker

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.create_task(self._loop(), name="dicomweb-events")

    async def stop(self) -> None:
        """Stop the loop, then the deliveries in flight (what is left is redone later)."""
        self._stop.set()
        self._dispatcher.idle.set()  # wakes the loop's sleep
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._dispatcher.close()

    async def run_once(self) -> bool:
        """One round; True if it found work (the next round comes at once)."""
        busy = await self._log.announce_quiet_studies(self._quiet, _ANNOUNCE_BATCH) > 0
        busy = await self._ledger.fan_out(_FAN_OUT_BATCH) > 0 or busy
        busy = await self._dispatcher.dispatch() or busy
        if time.monotonic() - self._pruned > _PRUNE_EVERY:
            self._pruned = time.monotonic()
            await self._ledger.prune_deliveries(self._keep_delivered)
        if time.monotonic() - self._counted > _BACKLOG_EVERY:
            self._counted = time.monotonic()
            await self._count_backlog()
        return busy

    async def _count_backlog(self) -> None:
        """dicomweb_event_backlog: deliveries not yet made (queue "webhooks") and those given
        up on (queue "dead"), over every webhook; each process reports, the highest shows."""
        statuses = await self._ledger.list_webhooks()
        telemetry.set_event_backlog(sum(s.pending for s in statuses), "webhooks")
        telemetry.set_event_backlog(sum(s.dead for s in statuses), "dead")

    async def _loop(self) -> None:
        while not self._stop.is_set():
            pause = self._poll
            self._dispatcher.idle.clear()  # a run finishing from now on wakes the next round
            try:
                if await self.run_once():
                    pause = 0.0
            except DicomwebError as exc:
                log.warning("events: %s; trying again in %g s", exc.reason, _ERROR_PAUSE)
                pause = _ERROR_PAUSE
            except Exception:
                log.exception("events: unexpected error; trying again in %g s", _ERROR_PAUSE)
                pause = _ERROR_PAUSE
            await self._sleep(pause)

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when stopping or when a delivery slot frees up (stop()
        sets the dispatcher's idle event too: one event, and no task per round)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._dispatcher.idle.wait()
