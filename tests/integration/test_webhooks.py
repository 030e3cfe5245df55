"""Issue 20: webhooks over real HTTP, from the real app, on both backend pairs: signed
CloudEvents, at least once, in order per study, retries, dead letters, refused targets,
study.stable, and the README's receiver."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.server import HTTPServer
from pathlib import Path

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from webhook_receiver import Delivery, Receiver, receiving

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.domain.events import SIGNATURE_HEADER, Webhook, verify_signature
from dicomweb_server.errors import BadRequestError
from dicomweb_server.index.base import ServerIndex, WebhookStatus
from dicomweb_server.services import events as events_service
from dicomweb_server.services.webhooks import WebhookService

SECRET = "whsec-issue20-test-secret"
VARIABLE = "DICOMWEB_TEST_WEBHOOK_SECRET"
CREATED_ONLY = "instance.created"
DEAD_BACKLOG = ("dicomweb_event_backlog", {"queue": "dead"})


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(VARIABLE, SECRET)
    return settings.replace(
        events_poll_seconds=0.05,
        webhook_retry_seconds=0.05,
        webhook_timeout=1.0,
        study_stable_seconds=0.5,
    )


def service(app: Starlette) -> WebhookService:
    return WebhookService(app.state.backends.index)


def index_of(app: Starlette) -> ServerIndex:
    index: ServerIndex = app.state.backends.index
    return index


async def store(client: httpx.AsyncClient, study: str, count: int, **fields: object) -> list[str]:
    datasets = [ct_dataset(study, instance_number=i + 1, **fields) for i in range(count)]  # type: ignore[arg-type]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    return [str(ds.SOPInstanceUID) for ds in datasets]


async def until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def status_of(app: Starlette, webhook_id: int) -> WebhookStatus:
    return next(s for s in await index_of(app).list_webhooks() if s.webhook.id == webhook_id)


async def settled_status(app: Starlette, webhook_id: int, within: float = 20.0) -> WebhookStatus:
    """The status once nothing is pending: a receiver has the last event a moment before its
    delivery is recorded as done."""
    deadline = time.monotonic() + within
    status = await status_of(app, webhook_id)
    while status.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status = await status_of(app, webhook_id)
    return status


async def test_issue20_deliveries_are_signed_cloud_events_in_order(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    with receiving() as receiver:
        webhook = await service(app).add(receiver.url, VARIABLE, allow_private=True)
        study = uid()
        sops = await store(client, study, 4)
        await until(lambda: len(receiver.accepted) == 5)  # 4 created, then study.stable
        events = [d.event for d in receiver.accepted]
        assert [e["data"].get("SopInstanceUid") for e in events[:4]] == sops
        stable = events[4]
        assert stable["type"] == "org.dicomweb.study.stable"
        assert stable["subject"] == f"studies/{study}"
        assert stable["data"]["NumberOfStudyRelatedInstances"] == 4
        assert stable["data"]["NumberOfStudyRelatedSeries"] == 4
        assert stable["data"]["ModalitiesInStudy"] == ["CT"]
        first = events[0]
        assert first["specversion"] == "1.0" and first["source"] == "http://testserver/dicomweb"
        assert first["type"] == "org.dicomweb.instance.created"
        assert first["datacontenttype"] == "application/json"
        assert first["data"]["Site"] == "default" and first["data"]["StudyInstanceUid"] == study
        assert first["subject"].endswith(f"/instances/{sops[0]}")
        for delivery in receiver.accepted:
            assert delivery.headers["content-type"].startswith("application/cloudevents+json")
            header = delivery.headers[SIGNATURE_HEADER.lower()]
            assert verify_signature(SECRET.encode(), header, delivery.body, time.time())
        feed = (await client.get("/changefeed?includemetadata=false")).json()
        assert [e["id"] for e in events[:4]] == [str(e["Sequence"]) for e in feed]
        status = await settled_status(app, webhook.id)
        assert (status.pending, status.delivered, status.dead) == (0, 5, 0)


async def test_issue20_failures_are_retried_and_later_events_of_the_study_wait(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The first event meets a 500, a timeout and a redirect (never followed) before a 204;
    the study's second event is only sent once the first is delivered."""
    first_id: list[str] = []

    def answer(delivery: Delivery, attempt: int) -> int | tuple[str, float]:
        if not first_id:
            first_id.append(delivery.event["id"])
        if delivery.event["id"] != first_id[0]:
            return 204
        return {1: 500, 2: ("sleep", 1.5), 3: 302}.get(attempt, 204)

    with receiving(Receiver(answer)) as receiver:
        webhook = await service(app).add(
            receiver.url, VARIABLE, events=CREATED_ONLY, allow_private=True
        )
        await store(client, uid(), 2)
        await until(lambda: len(receiver.accepted) == 2)
        paths = [d.path for d in receiver.deliveries]
        assert "/redirected" not in paths
        ids = [d.event["id"] for d in receiver.deliveries]
        assert ids[:4] == [first_id[0]] * 4  # the second waited for all four attempts
        assert receiver.ids() == sorted(receiver.ids(), key=int)
        status = await settled_status(app, webhook.id)
        assert (status.pending, status.delivered, status.dead) == (0, 2, 0)


async def test_issue20_other_studies_are_not_held_up_by_a_failing_one(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    stuck = uid()

    def answer(delivery: Delivery, attempt: int) -> int:
        return 503 if delivery.event["data"]["StudyInstanceUid"] == stuck else 204

    with receiving(Receiver(answer)) as receiver:
        await service(app).add(receiver.url, VARIABLE, events=CREATED_ONLY, allow_private=True)
        await store(client, stuck, 2)
        free = await store(client, uid(), 3)
        await until(lambda: len(receiver.accepted) == 3)
        assert [d.event["data"]["SopInstanceUid"] for d in receiver.accepted] == free
        stuck_ids = {d.event["id"] for d in receiver.deliveries if d not in receiver.accepted}
        assert len(stuck_ids) == 1  # only the stuck study's first event was ever tried


async def test_issue20_deliveries_past_the_maximum_age_are_dead_lettered(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_service, "_BACKLOG_EVERY", 0.0)  # count every round
    async with running(settings.replace(webhook_max_age=1)) as (app, client):
        with receiving(Receiver(lambda delivery, attempt: 500)) as receiver:
            webhook = await service(app).add(
                receiver.url, VARIABLE, events=CREATED_ONLY, allow_private=True
            )
            await store(client, uid(), 2)
            for _ in range(200):
                status = await status_of(app, webhook.id)
                if status.dead == 2:
                    break
                await asyncio.sleep(0.1)
            assert (status.pending, status.delivered, status.dead) == (0, 0, 2)
            assert status.last_error is not None and "HTTP 500" in status.last_error
            # /metrics: dicomweb_event_backlog{queue="dead"} (issue 21), counted by the worker
            await until(lambda: REGISTRY.get_sample_value(*DEAD_BACKLOG) == 2)
            assert REGISTRY.get_sample_value("dicomweb_event_backlog", {"queue": "webhooks"}) == 0


async def test_issue20_deleted_instances_reach_webhooks_and_the_feed(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    with receiving() as receiver:
        await service(app).add(
            receiver.url, VARIABLE, events="instance.created,instance.deleted", allow_private=True
        )
        study = uid()
        sops = await store(client, study, 2)
        found = await client.get(f"/studies/{study}/instances", params={"SOPInstanceUID": sops[0]})
        series = found.json()[0]["0020000E"]["Value"][0]
        deleted = await client.delete(f"/studies/{study}/series/{series}/instances/{sops[0]}")
        assert deleted.status_code == 204  # DELETE's transaction writes the event (outbox)
        await until(lambda: len(receiver.accepted) == 3)
        events = [d.event for d in receiver.accepted]
        assert [(e["type"], e["data"]["SopInstanceUid"]) for e in events] == [
            ("org.dicomweb.instance.created", sops[0]),
            ("org.dicomweb.instance.created", sops[1]),
            ("org.dicomweb.instance.deleted", sops[0]),
        ]
        assert events[2]["data"]["Action"] == "delete"
    feed = (await client.get("/changefeed")).json()
    assert [(e["Action"], e["State"], "Metadata" in e) for e in feed] == [
        ("create", "deleted", False),
        ("create", "current", True),
        ("delete", "deleted", False),
    ]


async def test_issue20_targets_are_checked_when_added(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = service(app)
    refused = [
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://169.254.10.10/hook", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("ftp://example.org/hook", "http"),
        ("http://user:pass@example.org/hook", "credentials"),
    ]
    for url, reason in refused:
        with pytest.raises(BadRequestError, match=reason):
            await hooks.add(url, VARIABLE)
    with pytest.raises(BadRequestError, match="not set"):
        await hooks.add("http://127.0.0.1:9/hook", "DICOMWEB_TEST_UNSET_SECRET", allow_private=True)
    with pytest.raises(BadRequestError, match="unknown event"):
        await hooks.add("http://127.0.0.1:9/hook", VARIABLE, events="x", allow_private=True)
    added = await hooks.add("http://127.0.0.1:9/hook", VARIABLE, allow_private=True)
    assert added.allow_private
    assert [s.webhook.id for s in await hooks.list()] == [added.id]


async def test_issue20_targets_are_checked_again_on_every_delivery(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A subscription whose name now resolves to loopback (DNS rebinding), or stored without
    the allowance, gets no request: every resolved address is checked at delivery."""
    with receiving() as receiver:
        for host in ("localhost", "127.0.0.1"):
            url = f"http://{host}:{receiver.port}/hook"
            stored = Webhook(0, url, VARIABLE, frozenset({CREATED_ONLY}))
            await index_of(app).add_webhook(stored)  # as if it had passed the check
        await store(client, uid(), 1)
        statuses: list[WebhookStatus] = []

        async def both_failed() -> bool:
            statuses[:] = await index_of(app).list_webhooks()
            return all(s.last_error for s in statuses)

        for _ in range(200):
            if await both_failed():
                break
            await asyncio.sleep(0.05)
        assert receiver.deliveries == []
        errors = [s.last_error or "" for s in statuses]
        assert all("loopback" in error for error in errors), errors


async def test_issue20_a_stored_url_with_a_bad_port_fails_like_any_delivery(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Added before ports were checked: the delivery fails with its reason, recorded and
    retried (it escaped the run before, which was then retried each lease, unrecorded)."""
    stored = Webhook(0, "http://10.255.255.1:99999/hook", VARIABLE, frozenset({CREATED_ONLY}))
    added = await index_of(app).add_webhook(stored)  # as if it had passed the check
    await store(client, uid(), 1)
    deadline = time.monotonic() + 20
    while (status := await status_of(app, added.id)).last_error is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert "not valid" in status.last_error


async def test_issue20_the_secret_is_read_at_delivery_and_never_shown(
    app: Starlette,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with receiving() as receiver:
        webhook = await service(app).add(
            receiver.url, VARIABLE, events=CREATED_ONLY, allow_private=True
        )
        monkeypatch.delenv(VARIABLE)
        await store(client, uid(), 1)
        for _ in range(200):
            status = await status_of(app, webhook.id)
            if status.last_error:
                break
            await asyncio.sleep(0.05)
        assert status.last_error is not None and VARIABLE in status.last_error
        assert receiver.deliveries == []
        monkeypatch.setenv(VARIABLE, "rotated-secret")  # the current value is used
        await until(lambda: len(receiver.accepted) == 1)
        header = receiver.accepted[0].headers[SIGNATURE_HEADER.lower()]
        assert verify_signature(b"rotated-secret", header, receiver.accepted[0].body, time.time())
    listed = repr(await index_of(app).list_webhooks())
    assert SECRET not in listed and "rotated-secret" not in listed
    assert SECRET not in caplog.text and "rotated-secret" not in caplog.text


async def test_issue20_filters_and_replay(app: Starlette, client: httpx.AsyncClient) -> None:
    with receiving() as receiver:
        mr_only = await service(app).add(
            receiver.url, VARIABLE, events=CREATED_ONLY, modalities=["MR"], allow_private=True
        )
        await store(client, uid(), 2)  # CT: not for this subscription
        mr = await store(client, uid(), 1, modality="MR")
        await until(lambda: len(receiver.accepted) == 1)
        assert receiver.accepted[0].event["data"]["SopInstanceUid"] == mr[0]
        first_id = receiver.accepted[0].event["id"]
        assert await service(app).replay(mr_only.id, time.time() - 3600) == 1
        await until(lambda: len(receiver.accepted) == 2)
        assert receiver.ids() == [first_id, first_id]  # the same event, the same id
        assert await service(app).remove(mr_only.id)
        assert await service(app).replay(mr_only.id, 0) is None


async def test_issue20_a_slow_receiver_never_slows_stow(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    with receiving(Receiver(lambda delivery, attempt: ("sleep", 0.9))) as receiver:
        await service(app).add(receiver.url, VARIABLE, events=CREATED_ONLY, allow_private=True)
        await store(client, uid(), 1)
        await until(lambda: len(receiver.deliveries) >= 1)
        started = time.monotonic()
        for _ in range(5):
            await store(client, uid(), 2)
        assert time.monotonic() - started < 3.0  # 5 STOWs while deliveries sit 0.9 s each


async def test_issue20_a_receiver_that_never_answers_does_not_hold_up_other_webhooks(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Each new study of the dead receiver's webhook is a run of its own; before, every free
    slot took one and held it for the whole timeout, so the healthy webhook waited behind
    them. Once it has failed, its webhook gets one run at a time (index/events.py
    fair_heads): the dead receiver is asked again only when the last ask timed out (1 s)."""
    arrivals: list[float] = []

    def never(delivery: Delivery, attempt: int) -> tuple[str, float]:
        arrivals.append(time.monotonic())
        return ("sleep", 1.5)

    with receiving(Receiver(never)) as dead, receiving() as healthy:
        # The dead one first: its deliveries are queued, and were claimed, first.
        hook = await service(app).add(dead.url, VARIABLE, events=CREATED_ONLY, allow_private=True)
        await service(app).add(healthy.url, VARIABLE, events=CREATED_ONLY, allow_private=True)
        for _ in range(4):
            await store(client, uid(), 1)
        deadline = time.monotonic() + 20
        while (await status_of(app, hook.id)).last_error is None:
            assert time.monotonic() < deadline, "the dead receiver's timeout was not recorded"
            await asyncio.sleep(0.05)
        failing = time.monotonic()
        for _ in range(16):
            await store(client, uid(), 1)
        await until(lambda: len(healthy.accepted) == 20)
        later = [t for t in arrivals if t > failing + 0.2]
        gaps = [b - a for a, b in itertools.pairwise(later)]
        assert all(gap > 0.9 for gap in gaps), gaps


async def test_issue20_more_instances_after_a_quiet_period_bring_another_study_stable(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    with receiving() as receiver:
        await service(app).add(receiver.url, VARIABLE, events="study.stable", allow_private=True)
        study = uid()
        await store(client, study, 2)
        await until(lambda: len(receiver.accepted) == 1)
        await store(client, study, 1)
        await until(lambda: len(receiver.accepted) == 2)
        await asyncio.sleep(1.0)
        counts = [d.event["data"]["NumberOfStudyRelatedInstances"] for d in receiver.accepted]
        assert counts == [2, 3]  # exactly one per quiet period


async def test_issue20_readme_receiver_verifies_real_deliveries(
    app: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's receiver, as written, accepts the server's deliveries and refuses a
    tampered one."""
    monkeypatch.setenv("DICOMWEB_WEBHOOK_SECRET", SECRET)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```python\n# receiver.py:", 1)[1].split("```", 1)[0]
    block = "# receiver.py:" + block
    namespace: dict[str, object] = {"__name__": "receiver"}
    exec(compile(block, "README.md receiver", "exec"), namespace)
    server = HTTPServer(("127.0.0.1", 0), namespace["Receiver"])  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        webhook = await service(app).add(
            url, "DICOMWEB_WEBHOOK_SECRET", events=CREATED_ONLY, allow_private=True
        )
        await store(client, uid(), 3)
        for _ in range(200):
            status = await status_of(app, webhook.id)
            if status.delivered == 3:
                break
            await asyncio.sleep(0.05)
        assert (status.delivered, status.pending) == (3, 0)
        body = b'{"type":"org.dicomweb.instance.created","subject":"studies/1"}'
        async with httpx.AsyncClient() as outside:
            forged = await outside.post(
                url, content=body, headers={SIGNATURE_HEADER: f"t={int(time.time())},v1=00"}
            )
        assert forged.status_code == 401
    finally:
        server.shutdown()
        server.server_close()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """Another app over the same backends (another server process, as far as the index can
    tell), with its own settings."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/dicomweb"
        ) as c:
            yield application, c
