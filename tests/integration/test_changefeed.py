"""Issue 20: the change feed over HTTP, on both backend pairs, as Microsoft's DICOM service
defines it (plus Site)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from index_cases import InstanceFactory
from pydicom.uid import generate_uid
from starlette.applications import Starlette

from dicomweb_server.domain.events import parse_time
from dicomweb_server.index.base import ServerIndex
from dicomweb_server.index.batch import NewInstance, add_instances
from dicomweb_server.services.events import feed_sites

FIELDS = [
    "Sequence",
    "Site",
    "StudyInstanceUid",
    "SeriesInstanceUid",
    "SopInstanceUid",
    "Action",
    "Timestamp",
    "State",
]


async def store(client: httpx.AsyncClient, count: int, study: str | None = None) -> list[str]:
    """STOW `count` CT instances (one request); their SOP Instance UIDs in order."""
    datasets = [ct_dataset(study, instance_number=i + 1) for i in range(count)]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    return [str(ds.SOPInstanceUID) for ds in datasets]


async def test_issue20_changefeed_lists_stored_instances_with_metadata(
    client: httpx.AsyncClient,
) -> None:
    study = uid()
    sops = await store(client, 3, study)
    response = await client.get("/changefeed")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    entries = response.json()
    assert [e["SopInstanceUid"] for e in entries] == sops
    first = entries[0]
    assert list(first) == [*FIELDS, "Metadata"]  # Microsoft's order, Site added
    assert first["Action"] == "create" and first["State"] == "current"
    assert first["Site"] == "default" and first["StudyInstanceUid"] == study
    assert datetime.fromisoformat(first["Timestamp"]).tzinfo is not None
    assert [e["Sequence"] for e in entries] == sorted({e["Sequence"] for e in entries})
    metadata = first["Metadata"]
    assert metadata["00080018"]["Value"] == [sops[0]]
    assert metadata["7FE00010"]["BulkDataURI"].startswith(
        "http://testserver/dicomweb/sites/default/studies/"
    )
    lean = (await client.get("/changefeed?includeMetadata=false")).json()
    assert [list(e) for e in lean] == [FIELDS] * 3
    latest = await client.get("/changefeed/latest", params={"includemetadata": "false"})
    assert latest.json() == lean[-1]


async def test_issue20_paging_by_sequence_returns_the_entries_after_it(
    client: httpx.AsyncClient,
) -> None:
    sops = await store(client, 5)
    page = (await client.get("/changefeed?limit=2&includemetadata=false")).json()
    seen = [e["SopInstanceUid"] for e in page]
    while page:
        after = page[-1]["Sequence"]
        page = (await client.get(f"/changefeed?offset={after}&limit=2")).json()
        seen += [e["SopInstanceUid"] for e in page]
    assert seen == sops
    more = await store(client, 1)
    assert [
        e["SopInstanceUid"] for e in (await client.get(f"/changefeed?offset={after}")).json()
    ] == more


async def test_issue20_a_time_window_pages_by_count(client: httpx.AsyncClient) -> None:
    early = await store(client, 2)
    await asyncio.sleep(0.05)
    entries = (await client.get("/changefeed?includemetadata=false")).json()
    middle = parse_time(entries[-1]["Timestamp"], "t") + 0.001
    late = await store(client, 3)
    start = datetime.fromtimestamp(middle, UTC)
    window = {
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + timedelta(hours=1)).isoformat(),
        "includemetadata": "false",
        "limit": "2",
    }
    first = (await client.get("/changefeed", params=window)).json()
    second = (await client.get("/changefeed", params={**window, "offset": "2"})).json()
    assert [e["SopInstanceUid"] for e in first + second] == late
    before = (await client.get("/changefeed", params={"endTime": window["startTime"]})).json()
    assert [e["SopInstanceUid"] for e in before] == early


async def test_issue20_latest_of_an_empty_feed_is_204(client: httpx.AsyncClient) -> None:
    response = await client.get("/changefeed/latest")
    assert response.status_code == 204 and response.content == b""
    assert (await client.get("/changefeed")).json() == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "offset=-1",
        "offset=x",
        "startTime=yesterday",
        "includemetadata=maybe",
        "limit=1&LIMIT=2",
        "startTime=2024-01-02T00:00:00Z&endTime=2024-01-01T00:00:00Z",
    ],
)
async def test_issue20_bad_changefeed_parameters_are_400(
    client: httpx.AsyncClient, query: str
) -> None:
    response = await client.get(f"/changefeed?{query}")
    assert response.status_code == 400
    assert response.json()["reason"]


async def test_issue20_the_enterprise_root_shows_every_site(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    index: ServerIndex = app.state.backends.index
    built = InstanceFactory(tmp_path / "east").make(generate_uid(), generate_uid())
    await add_instances(
        index, "east", [NewInstance(built.record, built.blob_key, built.size, built.digest)]
    )
    ours = await store(client, 1)
    entries = (await client.get("/changefeed?includemetadata=false")).json()
    assert [(e["Site"], e["SopInstanceUid"]) for e in entries] == [
        ("east", built.sop),
        ("default", ours[0]),
    ]


def test_issue20_feed_sites_is_the_access_control_seam() -> None:
    assert feed_sites(None, None) is None  # enterprise root, no access control: everything
    assert feed_sites(None, {"a", "b"}) == {"a", "b"}  # enterprise root: what may be read
    assert feed_sites("a", None) == {"a"}
    assert feed_sites("a", {"a", "b"}) == {"a"}
    assert feed_sites("c", {"a"}) == frozenset()  # a site root the caller may not read


async def test_issue20_delete_reject_and_restore_are_in_the_feed(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The delete transaction writes instance.deleted (the outbox), a restore writes
    instance.created again; States follow (deleted, then current for the restored rows)."""
    study = uid()
    sops = await store(client, 2, study)
    series = (await client.get("/changefeed?includemetadata=false")).json()[0]["SeriesInstanceUid"]
    gone = await client.delete(f"/studies/{study}/series/{series}/instances/{sops[0]}")
    assert gone.status_code == 204
    entries = (await client.get("/changefeed?includemetadata=false")).json()
    assert [(e["SopInstanceUid"], e["Action"], e["State"]) for e in entries] == [
        (sops[0], "create", "deleted"),
        (sops[1], "create", "current"),
        (sops[0], "delete", "deleted"),
    ]
    rejected = await client.post(f"/studies/{study}/reject/113001%5EDCM")
    assert rejected.status_code == 200, rejected.text
    after_reject = (await client.get(f"/changefeed?offset={entries[-1]['Sequence']}")).json()
    assert [(e["SopInstanceUid"], e["Action"]) for e in after_reject] == [(sops[1], "delete")]

    assert await app.state.dicomweb.delete.restore("default", study) == 2
    latest = (await client.get("/changefeed?includemetadata=false")).json()[-2:]
    assert sorted((e["SopInstanceUid"], e["Action"], e["State"]) for e in latest) == sorted(
        [(sops[0], "create", "current"), (sops[1], "create", "current")]
    )
    metadata = (await client.get("/changefeed/latest")).json()["Metadata"]
    assert metadata["0020000D"]["Value"] == [study]


async def test_issue20_an_instance_stored_again_leaves_its_old_entries_replaced(
    client: httpx.AsyncClient,
) -> None:
    """Deleted, then stored again with other content: the first version's entries read
    `replaced` without metadata, only the new one's is `current` (SQLite handed the newest
    row's id out again, so the old entries read `current` with the new version's metadata)."""
    first = ct_dataset(uid())
    first.SeriesDescription = "VERSION-ONE"
    body, content_type = multipart_body([to_part10(first)])
    assert (
        await client.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    url = (
        f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}"
    )
    assert (await client.delete(url)).status_code == 204
    second = first.copy()
    second.SeriesDescription = "VERSION-TWO"
    body, content_type = multipart_body([to_part10(second)])
    assert (
        await client.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    entries = (await client.get("/changefeed")).json()[-3:]
    assert [(e["Action"], e["State"]) for e in entries] == [
        ("create", "replaced"),
        ("delete", "replaced"),
        ("create", "current"),
    ]
    assert ["Metadata" in e for e in entries] == [False, False, True]
    assert entries[2]["Metadata"]["0008103E"]["Value"] == ["VERSION-TWO"]


async def test_issue20_a_restored_study_leaves_its_old_entries_replaced(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study = uid()
    sops = await store(client, 3, study)
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    assert await app.state.dicomweb.delete.restore("default", study) == 3
    entries = [
        e
        for e in (await client.get("/changefeed?includemetadata=false")).json()
        if e["StudyInstanceUid"] == study
    ]
    assert [(e["Action"], e["State"]) for e in entries] == [("create", "replaced")] * 3 + [
        ("delete", "replaced")
    ] * 3 + [("create", "current")] * 3
    assert sorted(e["SopInstanceUid"] for e in entries[-3:]) == sorted(sops)
