"""Issue 21: /healthz, /readyz and /metrics on the real app (in-process, both backend pairs)."""

from __future__ import annotations

import re

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from dicomweb_server.services.status import StatusService
from dicomweb_server.web.observe import TRANSACTIONS
from dicomweb_server.web.state import AppState

ROOT = "http://testserver"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def _metrics(
    client: httpx.AsyncClient,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get(f"{ROOT}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_issue21_healthz_answers_ok_outside_the_dicomweb_root(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(f"{ROOT}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"
    assert "x-request-id" in response.headers


async def test_issue21_readyz_is_200_when_both_backends_answer(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{ROOT}/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "index": "ok", "object_store": "ok"}


class _Stuck:
    """A backend whose ping never returns (a network black hole)."""

    async def ping(self) -> None:
        import asyncio

        await asyncio.sleep(3600)


class _Down:
    async def ping(self) -> None:
        from dicomweb_server.errors import BackendUnavailableError

        raise BackendUnavailableError("index unavailable: connection refused")


@pytest.mark.parametrize("backend", ["embedded"])
async def test_issue21_readyz_is_503_naming_the_backend_that_does_not_answer(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    state: AppState = app.state.dicomweb
    real = state.status
    try:
        state.status = StatusService(_Down(), _Stuck(), ready_timeout=0.2)  # type: ignore[arg-type]
        response = await client.get(f"{ROOT}/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "index": "index unavailable: connection refused",
            "object_store": "no answer within 0.2 s",
        }
        state.status = StatusService(real._index, _Stuck(), ready_timeout=0.2)  # type: ignore[arg-type]
        response = await client.get(f"{ROOT}/readyz")
        assert response.status_code == 503
        assert response.json()["index"] == "ok"
    finally:
        state.status = real


async def test_issue21_metrics_count_requests_bytes_and_stored_instances_by_transaction(
    client: httpx.AsyncClient,
) -> None:
    study = uid()
    datasets = [ct_dataset(study=study, seed=n) for n in range(2)]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    before = await _metrics(client)

    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200
    body2, content_type2 = multipart_body([b"not dicom"])
    failed = await client.post("/studies", content=body2, headers={"Content-Type": content_type2})
    assert failed.status_code == 409
    found = await client.get(f"/studies?StudyInstanceUID={study}")
    assert found.status_code == 200
    metadata = await client.get(f"/studies/{study}/metadata")
    assert metadata.status_code == 200
    missing = await client.get(f"/studies/{uid()}/metadata")
    assert missing.status_code == 404
    unrouted = await client.get("/no/such/resource")  # a mounted router matched nothing
    assert unrouted.status_code == 404
    series = datasets[0].SeriesInstanceUID
    sop = datasets[0].SOPInstanceUID
    frames = await client.get(
        f"/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frames.status_code == 200
    thumbnail = await client.get(f"/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    assert thumbnail.status_code == 200
    options = await client.options("", headers={"Accept": "application/json"})
    assert options.status_code == 200
    feed = await client.get("/changefeed")
    assert feed.status_code == 200
    other = datasets[1]
    other_path = (
        f"/studies/{study}/series/{other.SeriesInstanceUID}/instances/{other.SOPInstanceUID}"
    )
    rejected = await client.post(other_path + "/reject/113001%5EDCM")
    deleted = await client.delete(f"/studies/{study}/series/{series}/instances/{sop}")

    after = await _metrics(client)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    count = "dicomweb_request_duration_seconds_count"
    site = {"site": "default"}
    assert delta(count, transaction="store", status="2xx", **site) == 1
    assert delta(count, transaction="store", status="4xx", **site) == 1
    assert delta(count, transaction="search", status="2xx", **site) == 1
    assert delta(count, transaction="metadata", status="2xx", **site) == 1
    assert delta(count, transaction="metadata", status="4xx", **site) == 1
    assert delta(count, transaction="frames", status="2xx", **site) == 1
    assert delta(count, transaction="thumbnail", status="2xx", **site) == 1
    assert delta(count, transaction="capabilities", status="2xx", **site) == 1
    assert delta(count, transaction="changefeed", status="2xx", **site) == 1
    assert rejected.status_code // 100 in (2, 4), rejected.text  # refused or done: labelled
    assert (
        delta(count, transaction="reject", status=f"{rejected.status_code // 100}xx", **site) == 1
    )
    assert delta(count, transaction="delete", status=f"{deleted.status_code // 100}xx", **site) == 1
    assert delta(count, transaction="other", status="2xx", **site) >= 1  # the first scrape
    assert delta(count, transaction="other", status="4xx", **site) == 1
    assert delta("dicomweb_request_body_bytes_total", transaction="store", **site) == len(
        body
    ) + len(body2)
    # Bytes as sent: compressed, as this client accepts gzip
    sent = delta("dicomweb_response_body_bytes_total", transaction="metadata", **site)
    assert 0 < sent < len(metadata.content) + len(missing.content)
    assert delta("dicomweb_stored_instances_total", **site) == 2
    assert delta("dicomweb_store_failures_total", reason="cannot_understand", **site) == 1
    assert delta("dicomweb_codec_duration_seconds_count", kind="render") >= 1
    assert delta("dicomweb_object_store_duration_seconds_count", operation="put") >= 2
    assert delta("dicomweb_object_store_duration_seconds_count", operation="read_range") >= 1
    # Never a UID in a label
    text = (await client.get(f"{ROOT}/metrics")).text
    assert study not in text and sop not in text
    labels = "|".join(TRANSACTIONS)
    assert not re.search(f'transaction="(?!({labels})")', text)


async def test_issue21_made_up_site_names_do_not_become_metric_labels(
    client: httpx.AsyncClient,
) -> None:
    """Any caller, even one not signed in, can name a site in a path (OPTIONS needs no
    credentials): those names are one label, "-", so /metrics cannot be grown without bound."""
    before = await _metrics(client)
    for n in range(3):
        await client.options(f"/sites/made-up-{n}/studies")
        await client.get(f"/sites/made-up-{n}/studies")
    known = await client.get("/sites/default/studies")
    assert known.status_code == 200
    text = (await client.get(f"{ROOT}/metrics")).text
    assert "made-up" not in text
    after = _samples(text)
    count = "dicomweb_request_duration_seconds_count"
    made_up = sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == count and ("site", "-") in key[1]
    )
    assert made_up == 6
    assert (
        _value(after, count, transaction="search", status="2xx", site="default")
        - _value(before, count, transaction="search", status="2xx", site="default")
        == 1
    )


async def test_issue21_metrics_report_the_index_connections_and_the_version(
    client: httpx.AsyncClient, backend: str
) -> None:
    await client.get("/studies?limit=1")
    samples = await _metrics(client)
    assert _value(samples, "dicomweb_index_connections", state="open") >= 1
    assert _value(samples, "dicomweb_index_connections", state="max") >= 1
    if backend == "production":  # PostgreSQL's pool says how many are in use
        assert ("dicomweb_index_connections", (("state", "in_use"),)) in samples
    assert any(name == "dicomweb_build_info" and value == 1 for (name, _), value in samples.items())
