"""Webhook delivery inside each server process: claim runs of deliveries, POST them, settle.

At least once: a delivery is marked delivered only after its receiver answered 2xx, so a
process killed mid-delivery leaves it leased, and once the lease expires another process (or
this one, restarted) sends it again. In order per study and webhook: a run is one study's
deliveries to one webhook, oldest first, stopped at the first failure, and nothing later in
that study goes out before the failed one is delivered or dead. Anything but a 2xx answer
(a timeout, a 5xx, a redirect, which is never followed) is retried with exponential back-off
and jitter until the delivery is `webhook_max_age` old, then dead-lettered.

Each delivery is a CloudEvents 1.0 JSON document (structured mode) signed with the secret
read from the subscription's environment variable at that moment (domain/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping

import aiohttp
from yarl import URL

from dicomweb_server.domain.events import (
    CLOUDEVENTS_MEDIA_TYPE,
    SIGNATURE_HEADER,
    Webhook,
    cloud_event,
    sign,
)
from dicomweb_server.index.base import DeliveryFailure, DeliveryRun, WebhookLedger
from dicomweb_server.services.webhook_targets import CheckedResolver, host_problem

__all__ = ["WebhookClient", "WebhookDispatcher", "retry_delay"]

log = logging.getLogger("dicomweb_server.webhooks")

_MAX_RETRY_DELAY = 3600.0  # seconds between two attempts, at most
_RUN = 50  # deliveries of one study claimed at once
_SETTLE_EVERY = 1.0  # seconds between progress records within a run (they renew the lease)
_CLOSE_GRACE = 2.0  # seconds runs in flight may finish when the process stops
_USER_AGENT = "dicomweb-server-webhooks/1"
_ANSWER_BYTES = 64 << 10  # of a receiver's answer read, at most (it is not used)


def retry_delay(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempt + 1` after `attempt` failures: `base` doubled per
    failure, at most an hour, with equal jitter (between half and all of it)."""
    delay = min(base * 2.0 ** min(attempt - 1, 32), _MAX_RETRY_DELAY)
    jitter: float = (rng or random).uniform(0, delay / 2)
    return delay / 2 + jitter


class WebhookClient:
    """POSTs signed events; one connection pool per process, connecting only to addresses
    its resolver has checked (services/webhook_targets.py)."""

    def __init__(
        self,
        *,
        timeout: float,
        concurrency: int,
        allow_private: bool,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._timeout = timeout
        self._concurrency = concurrency
        self._allow_private = allow_private
        self._environ = os.environ if environ is None else environ
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_private)
        if session is None:
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(allow_private), limit=self._concurrency
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,  # no proxy from the environment: it would bypass the checks
            )
            self._sessions[allow_private] = session
        return session

    async def post(self, webhook: Webhook, body: bytes) -> str | None:
        """Deliver `body`; None when the receiver answered 2xx, else why not (no secret)."""
        secret = self._environ.get(webhook.secret_env)
        if not secret:
            return f"environment variable {webhook.secret_env} (the signing secret) is not set"
        allowed = webhook.allow_private or self._allow_private
        try:
            host = URL(webhook.url).host or ""
        except ValueError as exc:  # a port out of range, say: a failure like any other
            return f"refused: the URL is not valid: {exc}"[:300]
        # A name is checked by the resolver as it resolves; an address literal, here.
        problem = host_problem(host, allowed)
        if problem is not None:
            return f"refused: {problem}"
        headers = {
            "Content-Type": f"{CLOUDEVENTS_MEDIA_TYPE}; charset=utf-8",
            SIGNATURE_HEADER: sign(secret.encode(), int(time.time()), body),
            "User-Agent": _USER_AGENT,
        }
        try:
            async with self._session(allowed).post(
                webhook.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                # A short answer is read so the connection is kept; a long one is cut off.
                await response.content.read(_ANSWER_BYTES)
                if 200 <= response.status < 300:
                    return None
                return f"the receiver answered HTTP {response.status}"
        except TimeoutError:
            return f"the receiver did not answer within {self._timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            return f"cannot connect: {exc.os_error}"[:300]
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


class WebhookDispatcher:
    """Claims due runs while this process has free delivery slots and delivers each run in a
    task of its own, so a slow receiver holds only its own slot."""

    def __init__(
        self,
        ledger: WebhookLedger,
        client: WebhookClient,
        *,
        source: str,
        concurrency: int,
        timeout: float,
        max_age: float,
        retry_seconds: float,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._source = source
        self._concurrency = concurrency
        self._max_age = max_age
        self._retry_seconds = retry_seconds
        # A run's lease outlives one attempt plus a progress record: renewed as it goes.
        self._lease = 2 * timeout + 5
        self._webhooks: dict[int, Webhook] = {}
        self._tasks: dict[asyncio.Task[None], int] = {}  # each run's webhook
        self.idle = asyncio.Event()  # set when a run finishes: a slot is free
        self._claims = 0

    async def dispatch(self) -> bool:
        """Claim runs for the free slots and start them; True if any was claimed."""
        free = self._concurrency - len(self._tasks)
        if free <= 0:
            return False
        self._claims += 1
        owner = f"{uuid.uuid4().hex[:12]}-{self._claims}"
        busy = Counter(self._tasks.values())
        runs = await self._ledger.claim_deliveries(owner, free, _RUN, self._lease, busy)
        if not runs:
            return False
        self._webhooks = {webhook.id: webhook for webhook in await self._ledger.get_webhooks()}
        for run in runs:
            task = asyncio.create_task(self._deliver(run))
            self._tasks[task] = run.deliveries[0].webhook_id
            task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self.idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook run failed: %s", task.exception())

    async def _deliver(self, run: DeliveryRun) -> None:
        delivered: list[int] = []
        try:
            await self._deliver_in_order(run, delivered)
        except asyncio.CancelledError:
            # Stopping: record what was delivered and release the rest now, rather than
            # leaving it leased until the lease expires.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await self._ledger.settle_deliveries(run.token, delivered, None, None)
            raise

    async def _deliver_in_order(self, run: DeliveryRun, delivered: list[int]) -> None:
        """Each delivery of the run in order; stop at the first failure."""
        started = time.monotonic()
        settled = started
        for position, delivery in enumerate(run.deliveries):
            webhook = self._webhooks.get(delivery.webhook_id)
            if webhook is None:  # removed meanwhile
                break
            body = cloud_event(delivery.event, self._source)
            error = await self._client.post(webhook, body)
            if error is not None:
                attempt = delivery.attempts + 1
                retry_in = retry_delay(attempt, self._retry_seconds)
                age = delivery.age + time.monotonic() - started
                dead = age + retry_in > self._max_age
                log.warning(
                    "webhook %d: event %d %s (attempt %d)%s",
                    webhook.id,
                    delivery.event.sequence,
                    error,
                    attempt,
                    "; dead-lettered" if dead else f"; retrying in {retry_in:.0f} s",
                )
                failure = DeliveryFailure(delivery.id, retry_in, _stamped(error), dead)
                await self._ledger.settle_deliveries(run.token, delivered, failure, None)
                delivered.clear()
                return
            delivered.append(delivery.id)
            more = position + 1 < len(run.deliveries)
            if more and time.monotonic() - settled > _SETTLE_EVERY:
                # Progress, and a renewed lease for the rest; a lost lease means another
                # process has the run now (ours expired): leave it to that one.
                if not await self._ledger.settle_deliveries(
                    run.token, delivered, None, self._lease
                ):
                    return
                delivered.clear()
                settled = time.monotonic()
        await self._ledger.settle_deliveries(run.token, delivered, None, None)
        delivered.clear()

    async def close(self) -> None:
        """Let runs in flight finish briefly; cancel the rest (their leases expire)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_GRACE)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self._client.close()


def _stamped(error: str) -> str:
    """The error with the time it happened (UTC), as `webhook list` shows it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + error
