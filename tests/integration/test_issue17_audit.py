"""Audit (issue 17) over the real app on both backend pairs: what a STOW, a QIDO and a viewer's
reads leave in the trail, the FHIR Bundle, append-only enforcement, retention, the CLI."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from pydicom import dcmread
from starlette.applications import Starlette
from test_issue18_rejection import _kos

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditQuery, AuditRecord, AuditStudy
from dicomweb_server.domain.lifecycle import DeleteTarget
from dicomweb_server.errors import BackendUnavailableError
from dicomweb_server.services.audit import AuditService

BASE = "http://testserver/dicomweb"
SECRET_NAME = "Zyxwvut"  # a QIDO value: must never reach the trail
FRAMES = "multipart/related; type=application/octet-stream"


async def _stow(client: httpx.AsyncClient, files: list[bytes], root: str = BASE) -> None:
    body, content_type = multipart_body(files)
    response = await client.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text


def _audit(app: Starlette) -> AuditService:
    service: AuditService = app.state.dicomweb.audit
    return service


async def _bundle(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    bundle: dict[str, Any] = response.json()
    _check_bundle(bundle)
    return bundle


def _check_bundle(bundle: dict[str, Any]) -> None:
    """FHIR R4 structure: a searchset Bundle of AuditEvents with their required elements."""
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["link"][0]["relation"] == "self"
    for entry in bundle["entry"]:
        assert entry["search"] == {"mode": "match"}
        event = entry["resource"]
        assert event["resourceType"] == "AuditEvent"
        assert set(event["type"]) == {"system", "code", "display"}
        assert event["recorded"].endswith("Z") and len(event["recorded"]) == 24
        assert event["action"] in ("C", "R", "U", "D", "E")
        assert event["outcome"] in ("0", "4", "8", "12")
        assert event["agent"] and all(isinstance(a["requestor"], bool) for a in event["agent"])
        assert event["source"]["observer"]["display"]
        for entity in event.get("entity", []):
            assert entity["type"]["code"] in ("1", "2")


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle["entry"]]


def _action(event: dict[str, Any]) -> str:
    return next(
        s["code"] for s in event["subtype"] if s["system"] == "urn:dicomweb-server:audit-action"
    )


def _details(entity: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in entity.get("detail", [])}


async def _all_audit_text(app: Starlette) -> str:
    """Every audit row of the index, as text (to look for what must never be stored)."""
    index = app.state.backends.index
    tables = ("audit_events", "audit_studies")
    if hasattr(index, "_pool"):

        async def pg(conn: Any) -> str:
            return repr([list(await conn.fetch(f"SELECT * FROM {t}")) for t in tables])

        text: str = await index._with_connection(pg)
        return text
    return str(
        await index._read(
            lambda conn: [conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables]
        )
    )


async def test_issue17_audit_stow_qido_and_viewer_reads_leave_a_readable_trail(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    ds = ct_dataset(patient_id="P17-A", patient_name=f"{SECRET_NAME}^Ann", frames=3)
    ds.IssuerOfPatientID = "1.2.3.4"
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    await _stow(client, [to_part10(ds)])
    found = await client.get(
        f"{BASE}/studies", params={"PatientName": f"{SECRET_NAME}*", "limit": "5"}
    )
    assert found.status_code == 200 and len(found.json()) == 1
    instance = f"{BASE}/studies/{study}/series/{series}/instances/{sop}"
    for frame in (1, 2, 3):
        response = await client.get(f"{instance}/frames/{frame}", headers={"Accept": FRAMES})
        assert response.status_code == 200
    for path in ("rendered", "rendered", "metadata", "thumbnail"):
        assert (await client.get(f"{instance}/{path}")).status_code == 200
    assert (await client.get(f"{BASE}/studies/{study}/metadata")).status_code == 200
    missing = await client.get(f"{instance}/frames/9", headers={"Accept": FRAMES})
    assert missing.status_code == 404
    await _audit(app).flush(close_rollups=True)

    by_patient = _events(await _bundle(client, f"{BASE}/audit?patient=P17-A"))
    actions = sorted(_action(e) for e in by_patient)
    assert actions == ["store", "view", "view"]  # reads rolled up: one of 200s, one of the 404
    view = next(e for e in by_patient if _action(e) == "view" and e["outcome"] == "0")
    assert view["type"]["code"] == "110103" and view["action"] == "R"
    patient = next(e for e in view["entity"] if e["role"]["code"] == "1")
    assert patient["what"]["identifier"] == {"system": "urn:oid:1.2.3.4", "value": "P17-A"}
    study_entity = next(e for e in view["entity"] if e["role"]["code"] == "3")
    assert study_entity["what"]["identifier"]["value"] == f"urn:oid:{study}"
    counts = _details(study_entity)
    assert (counts["frames"], counts["rendered"], counts["metadata"], counts["thumbnail"]) == (
        "3",
        "2",
        "2",
        "1",
    )
    assert counts["site"] == "default"
    failed = next(e for e in by_patient if _action(e) == "view" and e["outcome"] == "4")
    assert _details(next(e for e in failed["entity"] if e["role"]["code"] == "3"))["frames"] == "1"
    stored = next(e for e in by_patient if _action(e) == "store")
    assert (stored["type"]["code"], stored["action"]) == ("110104", "C")
    assert stored["subtype"][0]["code"] == "RAD-108"

    everyone = _events(await _bundle(client, f"{BASE}/audit?user=anonymous"))
    search = next(e for e in everyone if _action(e) == "search")
    assert (search["type"]["code"], search["subtype"][0]["code"]) == ("110112", "RAD-129")
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert query["description"] == "PatientName"  # limit is no match key; values never
    assert _details(query) == {"results": "1"}
    agent = next(a for a in search["agent"] if a["requestor"])
    assert agent["who"]["identifier"]["value"] == "anonymous"
    assert SECRET_NAME not in await _all_audit_text(app)


async def test_issue17_audit_fhir_bundle_pages_and_filters(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    files = [to_part10(ct_dataset(patient_id=f"P17-{n}")) for n in range(3)]
    for data in files:
        await _stow(client, [data])
    await _audit(app).flush()
    first = await _bundle(client, f"{BASE}/audit?_count=2")
    assert len(first["entry"]) == 2
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{BASE}/audit?") and "_count=2" in next_url
    seen = [e["id"] for e in _events(first)]
    while next_url:
        page = await _bundle(client, next_url)
        seen += [e["id"] for e in _events(page)]
        next_url = next((x["url"] for x in page["link"] if x["relation"] == "next"), "")
    assert len(seen) == len(set(seen)) >= 4  # three stores and the application start
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)
    one = _events(await _bundle(client, f"{BASE}/audit?patient=P17-1"))
    assert len(one) == 1 and _action(one[0]) == "store"
    assert not (await _bundle(client, f"{BASE}/audit?patient=other|P17-1"))["entry"]
    assert not (await _bundle(client, f"{BASE}/audit?since=2999-01-01"))["entry"]
    assert len((await _bundle(client, f"{BASE}/audit?until=2999-01-01T00:00:00Z"))["entry"]) >= 4
    for bad in ("_count=0", "since=yesterday", "patinet=P17-1", "user=a&user=b"):
        response = await client.get(f"{BASE}/audit?{bad}")
        assert response.status_code == 400, bad
    assert (await client.get(f"{BASE}/audit", headers={"Accept": "image/png"})).status_code == 406
    # Reading the trail is itself recorded (DICOM "Audit Log Used")
    await _audit(app).flush()
    used = _events(await _bundle(client, f"{BASE}/audit?_count=1"))[0]
    assert (used["type"]["code"], _action(used)) == ("110101", "audit")


async def test_issue17_audit_site_root_returns_that_sites_records(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await app.state.dicomweb.sites.add_site("north", "north")
    await _stow(client, [to_part10(ct_dataset(patient_id="P17-N"))], f"{BASE}/sites/north")
    await _stow(client, [to_part10(ct_dataset(patient_id="P17-D"))])
    await _audit(app).flush()
    north = _events(await _bundle(client, f"{BASE}/sites/north/audit"))
    assert [e["source"]["site"] for e in north] == ["north"]
    refused = await client.get(f"{BASE}/sites/north/audit?site=default")
    assert refused.status_code == 400


async def test_issue17_audit_enterprise_root_reads_resolve_site_and_patient(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await app.state.dicomweb.sites.add_site("east", "east")
    ds = ct_dataset(patient_id="P17-E")
    await _stow(client, [to_part10(ds)], f"{BASE}/sites/east")
    assert (await client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/metadata")).status_code == 200
    await _audit(app).flush(close_rollups=True)
    view = _events(await _bundle(client, f"{BASE}/audit?patient=P17-E&site=east"))
    assert sorted(_action(e) for e in view) == ["store", "view"]


async def test_issue17_audit_records_are_append_only_on_the_backend(app: Starlette) -> None:
    service = _audit(app)
    index = app.state.backends.index
    await index.append_audit_records([_record(time.time(), "someone")])
    before = await service.search(AuditQuery())
    assert before.records[0].studies
    statements = ["UPDATE audit_events SET subject = 'x'", "DELETE FROM audit_events"]
    statements += ["UPDATE audit_studies SET patient_id = 'x'", "DELETE FROM audit_studies"]
    if hasattr(index, "_pool"):
        statements += ["TRUNCATE audit_events", "TRUNCATE audit_studies"]
        for statement in statements:

            async def run(conn: Any, statement: str = statement) -> Any:
                return await conn.execute(statement)

            with pytest.raises(BackendUnavailableError, match="42501"):
                await index._with_connection(run)
    else:
        for statement in statements:
            with pytest.raises(BackendUnavailableError, match="append-only"):
                await index._write(lambda conn, s=statement: conn.execute(s))
        # Another connection (another process, a sqlite3 shell) is refused the same way
        path = Path(app.state.dicomweb.settings.data_dir) / "index.sqlite"
        with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM audit_events")
    after = await service.search(AuditQuery())
    assert [r.id for r in after.records] == [r.id for r in before.records]
    assert after.records[0].subject == before.records[0].subject


def _record(end: float, subject: str) -> AuditRecord:
    return AuditRecord(
        time=end - 1,
        end_time=end,
        subject=subject,
        kind="oidc",
        display_name="",
        client="127.0.0.1",
        action="view",
        site="default",
        outcome=200,
        request_id="r",
        studies=(AuditStudy("1.2.3", "default", "P", None),),
        counts={"frames": 2},
    )


async def test_issue17_audit_retention_expiry_removes_only_old_records(app: Starlette) -> None:
    service = _audit(app)
    index = app.state.backends.index
    now = time.time()
    day = 86400.0
    old = [_record(now - 2556 * day, "old-1"), _record(now - 3000 * day, "old-2")]
    young = [_record(now - 2554 * day, "young")]
    await index.append_audit_records([*old, *young])
    assert await service.expire(now) == 2
    left = {r.subject for r in (await service.search(AuditQuery(limit=1000))).records}
    assert "young" in left and not {"old-1", "old-2"} & left
    young_study = await service.search(AuditQuery(user="young"))
    assert young_study.records[0].studies == (AuditStudy("1.2.3", "default", "P", None),)
    assert await service.expire(now) == 0
    if hasattr(index, "_pool"):  # one process at a time: a held lock makes others skip
        import asyncpg

        url = app.state.dicomweb.settings.database_url
        holder = await asyncpg.connect(url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", 0x64_7761_7564_6974)
            await index.append_audit_records([_record(now - 3000 * day, "old-3")])
            assert await service.expire(now) is None
        finally:
            await holder.close()
        assert await service.expire(now) == 1


async def test_issue17_audit_open_rollup_is_written_at_shutdown(settings: Settings) -> None:
    ds = ct_dataset(patient_id="P17-S")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            await _stow(client, [to_part10(ds)])
            for _ in range(2):
                response = await client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/metadata")
                assert response.status_code == 200
    # A fresh app on the same stores (another process) finds the roll-up written
    again = create_app(settings)
    async with again.router.lifespan_context(again):
        page = await _audit(again).search(AuditQuery(patient_id="P17-S"))
    views = [r for r in page.records if r.action == "view"]
    assert len(views) == 1 and views[0].counts == {"metadata": 2}


async def test_issue17_audit_cli_table_and_ndjson(
    app: Starlette, client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    ds = ct_dataset(patient_id="P17-CLI")
    await _stow(client, [to_part10(ds)])
    await _audit(app).flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env["DICOMWEB_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["DICOMWEB_DATABASE_URL"] = settings.database_url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomweb_server", "audit", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    table = await asyncio.to_thread(run, "--patient", "P17-CLI")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "TIME",
        "USER",
        "ACTION",
        "STATUS",
        "SITE",
        "PATIENT",
        "STUDY",
        "DETAIL",
    ]
    assert len(lines) == 2
    assert lines[1].split()[1:7] == [
        "anonymous",
        "store",
        "200",
        "default",
        "P17-CLI",
        ds.StudyInstanceUID,
    ]
    ndjson = await asyncio.to_thread(run, "--patient", "P17-CLI", "--format", "ndjson")
    assert ndjson.returncode == 0, ndjson.stderr
    import json

    events = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert [e["resourceType"] for e in events] == ["AuditEvent"]
    assert events[0]["type"]["code"] == "110104"
    bad = await asyncio.to_thread(run, "--since", "last week")
    assert bad.returncode == 2 and "--since" in bad.stderr


async def test_issue17_audit_a_body_cut_after_its_200_is_recorded_as_a_failure(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Once a 200 has started, a failure can only cut the body: the client did not get the
    study, so the trail must not say it did (outcome 8, "HTTP 500")."""
    from dicomweb_server.web.audit import AuditMiddleware

    ds = ct_dataset(patient_id="P17-CUT")
    await _stow(client, [to_part10(ds)])

    async def breaks_off(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"--part", "more_body": True})
        raise OSError("the object store went away")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {
        "type": "http",
        "method": "GET",
        "path": f"/dicomweb/studies/{ds.StudyInstanceUID}",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "app": app,
        "state": {},
    }
    with pytest.raises(OSError):
        await AuditMiddleware(breaks_off)(scope, receive, send)
    await _audit(app).flush(close_rollups=True)
    events = _events(await _bundle(client, f"{BASE}/audit?patient=P17-CUT"))
    retrieve = next(e for e in events if _action(e) == "retrieve")
    assert (retrieve["outcome"], retrieve.get("outcomeDesc")) == ("8", "HTTP 500")


async def _key(app: Starlette, name: str, *grants: str) -> str:
    from dicomweb_server.services.apikeys import ApiKeyService

    issued = await ApiKeyService(app.state.backends.index).create_api_key(name, grants)
    return issued.key


def _as(app: Starlette, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers)


async def _records(app: Starlette, user: str) -> list[AuditRecord]:
    page = await _audit(app).search(AuditQuery(user=user, limit=1000))
    return page.records


async def test_issue17_audit_enterprise_root_names_the_copy_served_or_deleted(
    settings: Settings,
) -> None:
    """Two sites hold the same study: a root read is recorded under the site whose copy it
    served, with that copy's patient, and a root delete under the site it deleted from."""
    application = create_app(settings.replace(auth="apikey"))
    async with application.router.lifespan_context(application):
        await application.state.dicomweb.sites.add_site("beta")
        loader = await _key(application, "loader", "default:write", "beta:write")
        reader = await _key(application, "beta-reader", "beta:read")
        deleter = await _key(application, "root-deleter", "*:delete")
        ds = ct_dataset(patient_id="P17-DEFAULT-COPY")
        study = ds.StudyInstanceUID
        instance = f"{BASE}/studies/{study}/series/{ds.SeriesInstanceUID}"
        instance += f"/instances/{ds.SOPInstanceUID}"
        async with _as(application, loader) as client:
            await _stow(client, [to_part10(ds)])
            ds.PatientID = "P17-BETA-COPY"
            await _stow(client, [to_part10(ds)], f"{BASE}/sites/beta")
        async with _as(application, reader) as client:
            served = await client.get(instance, headers={"Accept": "application/dicom"})
            assert served.status_code == 200 and b"P17-BETA-COPY" in served.content
            assert (await client.get(f"{instance}/metadata")).status_code == 200
        await _audit(application).flush(close_rollups=True)
        reads = await _records(application, "beta-reader")
        assert sorted(r.action for r in reads) == ["retrieve", "view"]
        for record in reads:
            assert record.site == "beta"
            assert record.studies == (AuditStudy(study, "beta", "P17-BETA-COPY", None),)

        async with _as(application, deleter) as client:
            assert (await client.delete(f"{BASE}/studies/{study}")).status_code == 204
        # The default site's copy went (the one the root serves); beta's is still there
        rows = await application.state.backends.index.study_patients(None, [study])
        assert [row.site for row in rows] == ["beta"]
        assert [row.patient_id for row in rows] == ["P17-BETA-COPY"]
        await _audit(application).flush()
        (deleted,) = await _records(application, "root-deleter")
        assert deleted.action == "delete" and deleted.site == "default"
        assert [s.site for s in deleted.studies] == ["default"]
        assert "P17-BETA-COPY" not in {s.patient_id for s in deleted.studies}


async def test_issue17_audit_records_of_a_deleted_study_keep_its_patient(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The store, the reads and the delete of a study deleted before their records are
    written still name its patient: it is captured while the study exists."""
    ds = ct_dataset(patient_id="P17-GONE")
    study = ds.StudyInstanceUID
    instance = f"{BASE}/sites/south/studies/{study}/series/{ds.SeriesInstanceUID}"
    instance += f"/instances/{ds.SOPInstanceUID}"
    await app.state.dicomweb.sites.add_site("south")
    await _stow(client, [to_part10(ds)], f"{BASE}/sites/south")
    assert (await client.get(f"{instance}/metadata")).status_code == 200
    await _audit(app).flush()  # the roll-up of image reads is open, not written
    assert (await client.get(f"{instance}/thumbnail")).status_code == 200
    served = await client.get(instance, headers={"Accept": "application/dicom"})
    assert served.status_code == 200
    assert (await client.delete(f"{BASE}/sites/south/studies/{study}")).status_code == 204
    await _audit(app).flush(close_rollups=True)
    records = (await _audit(app).search(AuditQuery(study_instance_uid=study))).records
    assert sorted(r.action for r in records) == ["delete", "retrieve", "store", "view"]
    for record in records:
        assert record.studies == (AuditStudy(study, "south", "P17-GONE", None),), record.action

    again = ct_dataset(patient_id="P17-GONE-TOO")  # stored and deleted within one turn
    await _stow(client, [to_part10(again)])
    deleted = await client.delete(f"{BASE}/studies/{again.StudyInstanceUID}")
    assert deleted.status_code == 204
    await _audit(app).flush()
    page = await _audit(app).search(AuditQuery(patient_id="P17-GONE-TOO"))
    assert sorted(r.action for r in page.records) == ["delete", "store"]

    # Deleted by another process while a viewer's roll-up is open: it resolved on opening
    other = ct_dataset(patient_id="P17-GONE-ELSEWHERE")
    await _stow(client, [to_part10(other)])
    viewed = await client.get(f"{BASE}/studies/{other.StudyInstanceUID}/metadata")
    assert viewed.status_code == 200
    await _audit(app).flush()
    target = DeleteTarget("default", other.StudyInstanceUID)
    await app.state.dicomweb.delete.delete(target, who="another process")
    await _audit(app).flush(close_rollups=True)
    page = await _audit(app).search(AuditQuery(patient_id="P17-GONE-ELSEWHERE"))
    assert sorted(r.action for r in page.records) == ["store", "view"]


async def test_issue17_audit_change_feed_reads_are_recorded_with_their_patients(
    settings: Settings,
) -> None:
    """The change feed hands out patient data (its metadata): each read is a Query record
    naming the studies, sites and patients its entries showed."""
    application = create_app(settings.replace(auth="apikey"))
    async with application.router.lifespan_context(application):
        for site in ("alpha", "beta"):
            await application.state.dicomweb.sites.add_site(site)
        loader = await _key(application, "feed-loader", "alpha:write", "beta:write")
        reader = await _key(application, "feed-reader", "beta:read")
        beta, alpha = ct_dataset(patient_id="P17-FEED-B"), ct_dataset(patient_id="P17-FEED-A")
        async with _as(application, loader) as client:
            await _stow(client, [to_part10(alpha)], f"{BASE}/sites/alpha")
            await _stow(client, [to_part10(beta)], f"{BASE}/sites/beta")
        async with _as(application, reader) as client:
            page = await client.get(f"{BASE}/changefeed", params={"includemetadata": "true"})
            assert page.status_code == 200 and [e["Site"] for e in page.json()] == ["beta"]
            latest = await client.get(f"{BASE}/sites/beta/changefeed/latest")
            assert latest.status_code == 200
            bare = await client.get(f"{BASE}/changefeed", params={"includemetadata": "false"})
            assert bare.status_code == 200 and "Metadata" not in bare.json()[0]
        await _audit(application).flush()
        records = await _records(application, "feed-reader")
        assert [r.action for r in records] == ["changefeed"] * 3
        beta_study = AuditStudy(beta.StudyInstanceUID, "beta", "P17-FEED-B", None)
        for record in records:
            assert record.studies == (beta_study,) and record.site == "beta"
            assert record.results == 1 and record.outcome == 200
        assert [r.detail for r in records] == ["", "latest,metadata", "metadata"]  # newest first
        async with _as(application, await _key(application, "auditor", "*:admin")) as client:
            found = _events(await _bundle(client, f"{BASE}/audit?patient=P17-FEED-B"))
        feed = next(e for e in found if _action(e) == "changefeed")
        assert (feed["type"]["code"], feed["action"]) == ("110112", "E")
        alpha_records = await _audit(application).search(AuditQuery(patient_id="P17-FEED-A"))
        assert [r.action for r in alpha_records.records] == ["store"]  # not shown to the reader


async def test_issue17_audit_retention_expiry_is_recorded_with_its_patient(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A study a site's retention expires leaves a "study deleted" record by `retention`,
    naming the patient (read before the delete), as a DELETE does."""
    from dicomweb_server.services.retention import Maintenance

    sites = app.state.dicomweb.sites
    await sites.update_site(await sites.get_site("default"), retain_years=10)
    ds = ct_dataset(patient_id="P17-EXPIRED", study_date="19990101")
    await _stow(client, [to_part10(ds)])
    index = app.state.backends.index
    maintenance = Maintenance(
        index, index, app.state.dicomweb.delete, interval=0, audit=_audit(app)
    )
    report = await maintenance.run_once()
    assert report is not None and report.expired == 1
    await _audit(app).flush()
    (expired,) = await _records(app, "retention")
    assert (expired.action, expired.kind, expired.site, expired.detail) == (
        "delete",
        "system",
        "default",
        "retention",
    )
    assert expired.studies == (AuditStudy(ds.StudyInstanceUID, "default", "P17-EXPIRED", None),)


async def test_issue17_audit_cli_restore_and_purge_are_recorded(
    app: Starlette, client: httpx.AsyncClient, settings: Settings
) -> None:
    ds = ct_dataset(patient_id="P17-TRASH")
    study = ds.StudyInstanceUID
    await _stow(client, [to_part10(ds)])
    assert (await client.delete(f"{BASE}/studies/{study}")).status_code == 204
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env["DICOMWEB_DATA_DIR"] = str(settings.data_dir)
    env["USER"] = env["LOGNAME"] = "operator9"
    if settings.database_url:
        env["DICOMWEB_DATABASE_URL"] = settings.database_url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dicomweb_server", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    restored = await asyncio.to_thread(run, "restore", "--study", study)
    assert restored.returncode == 0, restored.stderr
    (record,) = await _records(app, "cli:restore")
    assert (record.action, record.kind, record.site) == ("restore", "system", "default")
    assert record.display_name == "cli:restore (operator9)"
    assert record.studies == (AuditStudy(study, "default", "P17-TRASH", None),)

    assert (await client.delete(f"{BASE}/studies/{study}")).status_code == 204
    purged = await asyncio.to_thread(run, "purge")
    assert purged.returncode == 0, purged.stderr
    (record,) = await _records(app, "cli:purge")
    assert (record.action, record.site, record.detail) == ("delete", "default", "purge")
    assert [s.study_instance_uid for s in record.studies] == [study]
    assert (await asyncio.to_thread(run, "purge")).returncode == 0  # nothing left: no record
    assert len(await _records(app, "cli:purge")) == 1


async def test_issue17_audit_a_stored_rejection_note_is_recorded_as_a_rejection(
    settings: Settings,
) -> None:
    """A rejection note stored over STOW rejects another study: besides the store of the
    note, a "reject" record by the caller names that study and its patient, read before the
    study's instances were hidden."""
    application = create_app(settings.replace(auth="apikey"))
    async with application.router.lifespan_context(application):
        loader = await _key(application, "note-loader", "default:write", "default:read")
        rejecter = await _key(application, "note-rejecter", "default:write", "default:delete")
        ds = ct_dataset(patient_id="P17-REJECTED")
        study = ds.StudyInstanceUID
        async with _as(application, loader) as client:
            await _stow(client, [to_part10(ds)])
        note = dcmread(BytesIO(_kos(study, [(ds.SeriesInstanceUID, ds.SOPInstanceUID)])))
        note.StudyInstanceUID = uid()  # the note lives in a study of its own
        note.PatientID = "P17-REJECTED"
        async with _as(application, rejecter) as client:
            await _stow(client, [to_part10(note)])
        async with _as(application, loader) as client:
            gone = await client.get(f"{BASE}/studies/{study}/metadata")
            assert gone.status_code == 404
        await _audit(application).flush()
        records = await _records(application, "note-rejecter")
        assert sorted(r.action for r in records) == ["reject", "store"]
        (rejected,) = [r for r in records if r.action == "reject"]
        assert (rejected.subject, rejected.kind, rejected.site, rejected.detail) == (
            "note-rejecter",
            "system",
            "default",
            f"rejection note {note.SOPInstanceUID}",
        )
        assert rejected.studies == (AuditStudy(study, "default", "P17-REJECTED", None),)


_ADMIN_COMMANDS = """
import sys
from dicomweb_server.cli import main

codes = [
    main(["sites", "add", "gamma"]),
    main(["sites", "set", "gamma", "--retain-years", "12"]),
    main(["apikey", "create", "--name", "ai-puller", "--grant", "gamma:read"]),
    main(["apikey", "revoke", "ai-puller"]),
    main(["webhook", "add", "--url", "https://10.9.8.7/hook", "--secret-env", "DWT_SECRET",
          "--site", "gamma"]),
    main(["webhook", "add", "--url", "https://10.9.8.7/hook", "--secret-env", "DWT_SECRET",
          "--site", "no-such-site"]),
    main(["webhook", "add", "--url", "https://10.9.8.7/hook", "--secret-env", "DWT_SECRET",
          "--events", ""]),
    main(["webhook", "remove", "1"]),
    main(["sites", "remove", "gamma"]),
]
print(codes)
"""


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue17_configuration_commands_are_recorded_as_security_configuration(
    app: Starlette, settings: Settings
) -> None:
    """Sites, API keys and webhooks decide who reads what and where events go: each change
    leaves a record naming the operator (DICOM Security Alert, Security Configuration), and
    no key. A webhook for a site that does not exist, or for no event, is refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update(DICOMWEB_DATA_DIR=str(settings.data_dir), USER="operator7", LOGNAME="operator7")
    env["DWT_SECRET"] = "s" * 32
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _ADMIN_COMMANDS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0, 0, 2, 2, 0, 0]", ran.stderr
    assert "site 'no-such-site' does not exist" in ran.stderr
    records = [
        r for user in ("cli:sites", "cli:apikey", "cli:webhook") for r in await _records(app, user)
    ]
    shown = sorted((r.display_name, r.site or "-", r.detail) for r in records)
    assert shown == sorted(
        [
            ("cli:sites (operator7)", "gamma", "added site gamma (objects in the server's store)"),
            ("cli:sites (operator7)", "gamma", "changed site gamma: retain_years=12"),
            ("cli:sites (operator7)", "gamma", "removed site gamma"),
            ("cli:apikey (operator7)", "-", "created API key ai-puller (gamma:read)"),
            ("cli:apikey (operator7)", "-", "revoked API key ai-puller"),
            (
                "cli:webhook (operator7)",
                "gamma",
                "added webhook 1: https://10.9.8.7/hook receives"
                " instance.created,instance.deleted,study.stable",
            ),
            ("cli:webhook (operator7)", "-", "removed webhook 1"),
        ]
    )
    assert {r.action for r in records} == {"admin"}
    key = next(line for line in ran.stdout.splitlines() if not line.startswith("["))
    assert all(key not in (r.detail or "") for r in records)
