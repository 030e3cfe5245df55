"""Correcting and removing data (issue 18): DELETE, restore, purge, derived data, planned
answers, concurrency, on both backend pairs."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom import dcmread
from starlette.applications import Starlette

from dicomweb_server.domain.blob_keys import derived_prefix
from dicomweb_server.domain.identifiers import StudyKey
from dicomweb_server.services.holds import HoldService
from dicomweb_server.services.maintenance import sweep_orphans
from dicomweb_server.storage.base import FileRegion

BASE = "http://testserver/dicomweb"
ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON = "application/dicom+json"


async def _stow(client: httpx.AsyncClient, files: list[bytes], root: str = BASE) -> None:
    body, content_type = multipart_body(files)
    response = await client.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text


async def _objects(client: httpx.AsyncClient, url: str) -> list[bytes]:
    response = await client.get(url, headers={"Accept": ALL})
    assert response.status_code == 200, response.text
    return [data for _, data in parse_multipart(response.content, response.headers["content-type"])]


async def _count(client: httpx.AsyncClient, path: str, tag: str, **params: str) -> int | None:
    found = (await client.get(path, params=params)).json()
    return None if not found else int(found[0][tag]["Value"][0])


def _study(study: str, series: str, sops: list[str], modality: str = "CT") -> list[bytes]:
    return [
        to_part10(ct_dataset(study, series, sop, modality=modality, instance_number=n + 1, seed=n))
        for n, sop in enumerate(sops)
    ]


async def test_issue18_delete_an_instance_changes_nothing_else(client: httpx.AsyncClient) -> None:
    """The neighbours in the same series and study stay byte for byte, with exact counts."""
    study, series_a, series_b = uid(), uid(), uid()
    a_sops, b_sops = [uid(), uid(), uid()], [uid(), uid()]
    await _stow(client, _study(study, series_a, a_sops) + _study(study, series_b, b_sops, "MR"))
    before = {
        sop: (await _objects(client, f"/studies/{study}/series/{s}/instances/{sop}"))[0]
        for s, sops in ((series_a, a_sops), (series_b, b_sops))
        for sop in sops
    }
    gone = f"/studies/{study}/series/{series_a}/instances/{a_sops[1]}"
    response = await client.delete(gone)
    assert response.status_code == 204 and response.content == b""
    for path in (gone, f"{gone}/metadata", f"{gone}/rendered", f"{gone}/thumbnail"):
        assert (await client.get(path)).status_code == 404, path
    for s, sops in ((series_a, a_sops), (series_b, b_sops)):
        for sop in sops:
            if sop != a_sops[1]:
                got = await _objects(client, f"/studies/{study}/series/{s}/instances/{sop}")
                assert got == [before[sop]]
    assert await _count(client, "/studies", "00201208", StudyInstanceUID=study) == 4
    assert await _count(client, "/studies", "00201206", StudyInstanceUID=study) == 2
    series = (await client.get(f"/studies/{study}/series")).json()
    counts = {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in series}
    assert counts == {series_a: 2, series_b: 2}
    listed = (await client.get(f"/studies/{study}/instances")).json()
    assert {i["00080018"]["Value"][0] for i in listed} == set(before) - {a_sops[1]}
    assert len(await _objects(client, f"/studies/{study}")) == 4


async def test_issue18_delete_a_series_then_the_study(client: httpx.AsyncClient) -> None:
    study, ct_series, mr_series = uid(), uid(), uid()
    await _stow(
        client, _study(study, ct_series, [uid(), uid()]) + _study(study, mr_series, [uid()], "MR")
    )
    assert (await client.delete(f"/studies/{study}/series/{ct_series}")).status_code == 204
    found = (await client.get("/studies", params={"StudyInstanceUID": study})).json()[0]
    assert found["00080061"]["Value"] == ["MR"]  # ModalitiesInStudy recomputed
    assert found["00201206"]["Value"] == [1] and found["00201208"]["Value"] == [1]
    again = await client.delete(f"/studies/{study}/series/{ct_series}")
    assert again.status_code == 404 and ct_series in again.json()["reason"]
    assert (await client.get(f"/studies/{study}/series/{ct_series}")).status_code == 404
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    assert (await client.get("/studies", params={"StudyInstanceUID": study})).json() == []
    assert (await client.get(f"/studies/{study}/metadata")).status_code == 404
    assert (await client.get(f"/studies/{study}/thumbnail")).status_code == 404
    assert (await client.delete(f"/studies/{study}")).status_code == 404


async def test_issue18_if_match_on_delete_rfc_9110_13_1_1(client: httpx.AsyncClient) -> None:
    """No strong entity tag of a study matches a listed one: 412 and nothing deleted (a
    DELETE with a stale If-Match deleted it); `*` deletes what exists, and is a 412 when
    nothing does."""
    study, series, sop = uid(), uid(), uid()
    await _stow(client, _study(study, series, [sop]))
    for tags in ('"bogus"', 'W/"abc", "def"'):
        refused = await client.delete(f"/studies/{study}", headers={"If-Match": tags})
        assert refused.status_code == 412 and "If-Match" in refused.json()["reason"]
        rejected = await client.post(
            f"/studies/{study}/reject/113001%5EDCM", headers={"If-Match": tags}
        )
        assert rejected.status_code == 412
    assert (await client.get(f"/studies/{study}/metadata")).status_code == 200
    anyway = await client.delete(f"/studies/{study}", headers={"If-Match": "*"})
    assert anyway.status_code == 204
    gone = await client.delete(f"/studies/{study}", headers={"If-Match": "*"})
    assert gone.status_code == 412


async def test_issue18_bad_delete_requests_are_400s(client: httpx.AsyncClient) -> None:
    study, series, sop = uid(), uid(), uid()
    await _stow(client, _study(study, series, [sop]))
    instance = f"/studies/{study}/series/{series}/instances/{sop}"
    cases = [
        client.request("DELETE", instance, content=b"{}"),  # a body
        client.delete(f"/studies/{study}", params={"PatientID": "PAT-1"}),  # a query
        client.delete("/studies/1.2.*"),  # a wildcard is no UID
        client.delete("/studies/1.2.abc"),
        client.delete(f"/studies/{series}"),  # a series UID where a study's belongs
        client.delete(f"/studies/{study}/series/{sop}"),  # an instance UID as a series
    ]
    for response in await asyncio.gather(*cases):
        assert response.status_code == 400, response.text
    assert "is the UID of a series" in (await client.delete(f"/studies/{series}")).json()["reason"]
    assert (await client.delete("/studies")).status_code == 405  # no delete of everything
    assert (await client.delete(f"/studies/{uid()}")).status_code == 404
    assert len(await _objects(client, instance)) == 1  # nothing was deleted


async def test_issue18_restore_brings_back_exactly_what_was_deleted(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series, sops = uid(), uid(), [uid(), uid()]
    await _stow(client, _study(study, series, sops))
    before = await _objects(client, f"/studies/{study}")
    metadata = (await client.get(f"/studies/{study}/metadata")).json()
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    deleter = app.state.dicomweb.delete
    assert await deleter.restore("default", study) == 2
    assert await _objects(client, f"/studies/{study}") == before
    assert (await client.get(f"/studies/{study}/metadata")).json() == metadata
    found = (await client.get("/studies", params={"StudyInstanceUID": study})).json()[0]
    assert found["00201208"]["Value"] == [2] and found["00080061"]["Value"] == ["CT"]
    # Stored again after a delete: restore refuses, naming the instance.
    assert (
        await client.delete(f"/studies/{study}/series/{series}/instances/{sops[0]}")
    ).status_code == 204
    await _stow(client, [to_part10(ct_dataset(study, series, sops[0], seed=9))])
    with pytest.raises(Exception, match=f"SOP Instance {sops[0]} was stored again"):
        await deleter.restore("default", study)


async def test_issue18_purge_deletes_objects_after_the_grace_period(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series, sops = uid(), uid(), [uid(), uid()]
    await _stow(client, _study(study, series, sops))
    blobs = app.state.backends.blobs
    keys = [
        i.blob_key
        async for i in app.state.backends.index.iter_instances(StudyKey("default", study))
    ]
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    # In the trash the objects are no orphans, and the grace period keeps them.
    report = await sweep_orphans(app.state.backends.index, blobs, min_age_seconds=0)
    assert report.orphans == []
    deleter = app.state.dicomweb.delete
    assert (await deleter.purge()).instances == 0
    assert [info.key async for info in blobs.iter_objects(keys[0])] == [keys[0]]
    purged = await deleter.purge(older_than_days=0)
    assert (purged.instances, purged.objects) == (2, 2)
    for key in keys:
        assert [info.key async for info in blobs.iter_objects(key)] == []
    with pytest.raises(Exception, match="holds nothing"):
        await deleter.restore("default", study)


async def test_issue18_purge_keeps_an_object_stored_again(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The same instance stored again with the same bytes has the same object key."""
    study, series, sop = uid(), uid(), uid()
    files = _study(study, series, [sop])
    await _stow(client, files)
    path = f"/studies/{study}/series/{series}/instances/{sop}"
    assert (await client.delete(path)).status_code == 204
    await _stow(client, files)
    purged = await app.state.dicomweb.delete.purge(older_than_days=0)
    assert purged.instances == 1 and purged.objects == 0
    assert len(await _objects(client, path)) == 1


async def test_issue18_purge_keeps_an_object_a_later_trash_row_needs(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Stored, deleted, stored again, deleted again: purging the first trash row kept the
    object only for live rows, so the second, still within its grace, could not be restored."""
    study, series, sop = uid(), uid(), uid()
    files = _study(study, series, [sop])
    path = f"/studies/{study}/series/{series}/instances/{sop}"
    await _stow(client, files)
    assert (await client.delete(path)).status_code == 204
    await asyncio.sleep(0.05)
    between = time.time()
    await asyncio.sleep(0.05)
    await _stow(client, files)
    assert (await client.delete(path)).status_code == 204
    delete = app.state.dicomweb.delete
    purged = await delete.purge(older_than_days=(time.time() - between) / 86400)
    assert purged.instances == 1 and purged.objects == 0  # the first row only; object kept
    assert await delete.restore("default", study) == 1
    assert len(await _objects(client, path)) == 1


async def test_issue18_purge_keeps_the_trash_of_a_held_study(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A hold placed on deleted data during the grace period keeps it restorable: purge
    (the operator's, or maintenance's) skips it and counts it, and takes it once the hold
    is removed."""
    held, other = uid(), uid()
    await _stow(
        client,
        [to_part10(ct_dataset(held, uid(), uid(), patient_id="HELD-P", seed=n)) for n in range(2)]
        + [to_part10(ct_dataset(other, uid(), uid(), patient_id="FREE-P"))],
    )
    index, blobs = app.state.backends.index, app.state.backends.blobs
    keys = [i.blob_key async for i in index.iter_instances(StudyKey("default", held))]
    for study in (held, other):
        assert (await client.delete(f"/studies/{study}")).status_code == 204
    holds = HoldService(index)
    hold = await holds.add(reason="litigation", who="tester", patient_id="HELD-P")
    deleter = app.state.dicomweb.delete
    purged = await deleter.purge(older_than_days=0)
    assert (purged.instances, purged.objects) == (1, 1)
    assert (purged.held, purged.holds) == (2, {hold.id})
    for key in keys:
        assert [info.key async for info in blobs.iter_objects(key)] == [key]
    assert (await deleter.purge(older_than_days=0)).held == 2  # kept, run after run
    assert await deleter.restore("default", held) == 2
    assert (await client.get(f"/studies/{held}/metadata")).status_code == 200
    # Deleted again once the hold is removed: the next purge takes it.
    await holds.remove(hold.id, who="tester")
    assert (await client.delete(f"/studies/{held}")).status_code == 204
    purged = await deleter.purge(older_than_days=0)
    assert (purged.instances, purged.objects, purged.held) == (2, 2, 0)
    for key in keys:
        assert [info.key async for info in blobs.iter_objects(key)] == []
    with pytest.raises(Exception, match="holds nothing"):
        await deleter.restore("default", held)


async def test_issue18_derived_data_of_deleted_instances_is_removed(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series, sops = uid(), uid(), [uid(), uid(), uid()]
    await _stow(client, _study(study, series, sops))
    assert (await client.get(f"/studies/{study}/series/{series}/thumbnail")).status_code == 200
    for sop in sops:
        frame = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
        assert (await client.get(f"{frame}/thumbnail")).status_code == 200
    state = app.state
    render = state.dicomweb.render
    await render.thumbnail_cache.wait_for_writes()
    await render.thumbnail_cache.flush()
    blobs = state.backends.blobs
    prefix = derived_prefix("default", study, series)
    assert [i async for i in blobs.iter_objects(prefix)]
    assert (
        await client.delete(f"/studies/{study}/series/{series}/instances/{sops[1]}")
    ).status_code == 204
    # The memoised representative (the middle instance) is looked up again, not served.
    thumb = await client.get(f"/studies/{study}/series/{series}/thumbnail")
    assert thumb.status_code == 200
    remaining = {info.key async for info in blobs.iter_objects(prefix)}
    assert not any(f"/{sops[1]}/" in key for key in remaining)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    assert [i async for i in blobs.iter_objects(derived_prefix("default", study))] == []
    assert (await client.get(f"/studies/{study}/series/{series}/thumbnail")).status_code == 404
    assert await state.backends.index.note_cache_use([], []) == 0  # ledger rows gone too


async def test_issue18_an_answer_planned_before_a_delete_completes(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series = uid(), uid()
    files = _study(study, series, [uid() for _ in range(4)])
    await _stow(client, files)
    retrieve = app.state.dicomweb.retrieve
    plan = await retrieve.plan_instances(StudyKey("default", study), None, ["*"], regions=False)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    assert (await client.get(f"/studies/{study}")).status_code == 404  # new requests: gone
    bodies = []
    assert plan.bodies is not None
    async for _, chunks in plan.bodies:
        parts = [c async for c in chunks]
        bodies.append(b"".join(bytes(c.view() if isinstance(c, FileRegion) else c) for c in parts))
    assert len(bodies) == 4
    sent = {dcmread(io.BytesIO(b)).SOPInstanceUID for b in bodies}
    assert sent == {dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}


async def test_issue18_two_concurrent_deletes_are_one_delete(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series = uid(), uid()
    await _stow(client, _study(study, series, [uid() for _ in range(6)]))
    first, second = await asyncio.gather(
        client.delete(f"/studies/{study}"), client.delete(f"/studies/{study}")
    )
    assert sorted([first.status_code, second.status_code]) == [204, 404]
    trashed = await app.state.backends.index.trashed_before(1e12, "default", 100)
    assert len([t for t in trashed if t.key.study_instance_uid == study]) == 6


async def test_issue18_a_store_racing_a_delete_keeps_counts_exact(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A STOW into the same study while a series of it is deleted: every count matches rows."""
    study, doomed, kept = uid(), uid(), uid()
    await _stow(
        client, _study(study, doomed, [uid() for _ in range(5)]) + _study(study, kept, [uid()])
    )
    late = _study(study, kept, [uid(), uid(), uid()])
    body, content_type = multipart_body(late)
    stored, deleted = await asyncio.gather(
        client.post("/studies", content=body, headers={"Content-Type": content_type}),
        client.delete(f"/studies/{study}/series/{doomed}"),
    )
    assert stored.status_code == 200 and deleted.status_code == 204
    found = (await client.get("/studies", params={"StudyInstanceUID": study})).json()[0]
    assert found["00201208"]["Value"] == [4] and found["00201206"]["Value"] == [1]
    assert len((await client.get(f"/studies/{study}/instances")).json()) == 4


async def test_issue18_enterprise_root_deletes_the_copy_it_serves(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await app.state.dicomweb.sites.add_site("other", "a second site")
    study, series, sop = uid(), uid(), uid()
    files = _study(study, series, [sop])
    await _stow(client, files)
    await _stow(client, files, f"{BASE}/sites/other")
    assert (await client.delete(f"/studies/{study}")).status_code == 204  # the default's copy
    assert (await client.get(f"{BASE}/sites/default/studies/{study}")).status_code == 404
    assert len(await _objects(client, f"{BASE}/sites/other/studies/{study}")) == 1
    assert len(await _objects(client, f"/studies/{study}")) == 1  # now the root serves other's
    assert (
        await client.delete(f"{BASE}/sites/other/studies/{study}/series/{series}")
    ).status_code == 204
    assert (await client.get(f"/studies/{study}")).status_code == 404


async def test_issue18_delete_needs_the_delete_grant(settings: object, tmp_path: object) -> None:
    from dicomweb_server.app import create_app
    from dicomweb_server.services.apikeys import ApiKeyService

    application = create_app(settings.replace(auth="apikey"))  # type: ignore[attr-defined]
    async with application.router.lifespan_context(application):
        keys = ApiKeyService(application.state.backends.index)
        writer = (await keys.create_api_key("writer", ["*:write", "*:read"])).key
        deleter = (await keys.create_api_key("deleter", ["default:delete"])).key

        def client_for(key: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application),
                base_url=BASE,
                headers={"Authorization": f"Bearer {key}"},
            )

        study, series = uid(), uid()
        async with client_for(writer) as http:
            await _stow(http, _study(study, series, [uid()]))
            assert (await http.delete(f"/studies/{study}")).status_code == 403
            site_root = f"{BASE}/sites/default/studies/{study}"
            assert (await http.delete(site_root)).status_code == 403
            reject = f"{site_root}/series/{series}/reject/113001%5EDCM"
            assert (await http.post(reject)).status_code == 403
        async with client_for(deleter) as http:
            assert (await http.delete(f"/studies/{study}")).status_code == 204
