"""Issue 21: the landing page (HTML and JSON), the API summary, capabilities by GET, and the
index's counts (exact, or PostgreSQL's estimates for large tables)."""

from __future__ import annotations

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from starlette.applications import Starlette

from dicomweb_server.index import postgres
from dicomweb_server.index.base import Counts

ROOT = "http://testserver"


async def _store(client: httpx.AsyncClient, count: int, study: str | None = None) -> str:
    study = study or uid()
    series = uid()
    body, content_type = multipart_body(
        [to_part10(ct_dataset(study=study, series=series, seed=n)) for n in range(count)]
    )
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    return study


async def test_issue21_landing_page_shows_version_counts_sites_and_links(
    client: httpx.AsyncClient,
) -> None:
    await _store(client, 3)
    page = await client.get(f"{ROOT}/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    text = page.text
    assert "<link" not in text and "<script" not in text  # no external assets, no scripts
    assert "<b>1</b>studies" in text and "<b>1</b>series" in text and "<b>3</b>instances" in text
    for link in ('href="api"', 'href="capabilities"', 'href="healthz"', 'href="metrics"'):
        assert link in text
    assert "dicomweb-server viewer install" in text  # not installed yet
    assert "<code>default</code>" in text

    document = (await client.get(f"{ROOT}/", headers={"Accept": "application/json"})).json()
    assert document["counts"] == {"studies": 1, "series": 1, "instances": 3, "exact": True}
    assert document["sites"] == ["default"]
    assert document["viewer"] is None
    assert document["dicomweb"] == "http://testserver/dicomweb"
    assert document["links"]["capabilities"] == "http://testserver/capabilities"
    assert document["version"]


async def test_issue21_api_summary_lists_every_resource_from_the_route_table(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get(f"{ROOT}/api")
    assert page.status_code == 200
    for text in (
        "Store Instances",
        "Search for Studies",
        "Retrieve Frames",
        "Retrieve Rendered Instance",
        "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    ):
        assert text in page.text


async def test_issue21_capabilities_by_get_match_options_on_the_root(
    client: httpx.AsyncClient,
) -> None:
    wadl = await client.get(f"{ROOT}/capabilities")
    assert wadl.status_code == 200
    assert wadl.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    options = await client.options("", headers={"Accept": "application/json"})
    by_get = await client.get(f"{ROOT}/capabilities", headers={"Accept": "application/json"})
    assert by_get.json() == options.json()


@pytest.mark.parametrize("backend", ["production"])
async def test_issue21_postgresql_counts_use_estimates_past_the_exact_bound(
    app: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = await _store(client, 3)
    index = app.state.backends.index
    assert await index.counts() == Counts(1, 1, 3, exact=True)
    async with index._pool.acquire() as conn:  # what autovacuum's ANALYZE does in time
        await conn.execute("ANALYZE studies; ANALYZE series; ANALYZE instances")
    monkeypatch.setattr(postgres, "_EXACT_COUNT_ROWS", 2)
    counts = await index.counts()
    assert (counts.studies, counts.series, counts.instances) == (1, 1, 3)
    assert not counts.exact  # instances came from pg_class.reltuples
    await _store(client, 2, study)  # not analysed yet: the bounded count says at least 2
    counts = await index.counts()
    assert counts.instances >= 3 and not counts.exact
