"""Sites (issue 16): a DICOMweb root per site, independent copies, the enterprise root's rules,
a site's own storage, on both backend pairs."""

from __future__ import annotations

import io

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom import dcmread
from starlette.applications import Starlette

from dicomweb_server.config import Settings

BASE = "http://testserver/dicomweb"
ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def _add_site(app: Starlette, name: str, storage_url: str = "") -> None:
    await app.state.dicomweb.sites.add_site(name, f"test site {name}", storage_url)


async def _stow(client: httpx.AsyncClient, root: str, files: list[bytes]) -> httpx.Response:
    body, content_type = multipart_body(files)
    return await client.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}
    )


def _pixels(data: bytes) -> bytes:
    return bytes(dcmread(io.BytesIO(data)).PixelData)


async def _retrieve(client: httpx.AsyncClient, url: str) -> list[bytes]:
    response = await client.get(url, headers={"Accept": ALL})
    assert response.status_code == 200, response.text
    return [data for _, data in parse_multipart(response.content, response.headers["content-type"])]


async def test_issue16_every_resource_exists_under_a_site_root(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await _add_site(app, "hospital-a")
    root = f"{BASE}/sites/hospital-a"
    ds = ct_dataset(rows=32, columns=32)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    stored = await _stow(client, root, [to_part10(ds)])
    assert stored.status_code == 200
    assert stored.json()["00081190"]["Value"][0] == f"{root}/studies/{study}"
    found = (await client.get(f"{root}/studies", params={"PatientID": ds.PatientID})).json()
    assert found[0]["00081190"]["Value"] == [f"{root}/studies/{study}"]
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    for path, accept in (
        (f"{root}/studies/{study}", ALL),
        (f"{root}/studies/{study}/series/{series}", ALL),
        (instance, ALL),
        (f"{instance}/metadata", "application/dicom+json"),
        (f"{root}/studies/{study}/metadata", "application/dicom+json"),
        (f"{instance}/frames/1", "multipart/related; type=application/octet-stream"),
        (f"{instance}/rendered", "image/jpeg"),
        (f"{root}/studies/{study}/thumbnail", "image/jpeg"),
        (f"{root}/studies/{study}/series", "application/dicom+json"),
    ):
        response = await client.get(path, headers={"Accept": accept})
        assert response.status_code == 200, (path, response.text)
    metadata = (await client.get(f"{instance}/metadata")).json()
    assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"{instance}/bulkdata/")
    capabilities = await client.options(root, headers={"Accept": "application/json"})
    assert capabilities.status_code == 200
    assert capabilities.json()["base"] == root
    # Nothing of it at the enterprise root's default site.
    assert (await client.get(f"{BASE}/studies/{study}", headers={"Accept": ALL})).status_code == 200
    default = await client.get(f"{BASE}/sites/default/studies/{study}", headers={"Accept": ALL})
    assert default.status_code == 404


@pytest.mark.parametrize(
    ("site", "status", "reason"),
    [
        ("nowhere", 404, "site 'nowhere' does not exist"),
        ("Bad_Name", 400, "Bad_Name"),
        ("-dash", 400, "-dash"),
    ],
)
async def test_issue16_unknown_or_malformed_site_is_refused(
    client: httpx.AsyncClient, site: str, status: int, reason: str
) -> None:
    for method, path in (("GET", "/studies"), ("OPTIONS", ""), ("POST", "/studies")):
        response = await client.request(method, f"{BASE}/sites/{site}{path}")
        assert response.status_code == status, (method, path)
        assert reason in response.json()["reason"]


async def test_issue16_same_uids_in_two_sites_are_two_independent_copies(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await _add_site(app, "site-a")
    await _add_site(app, "site-b")
    study, series, sop = uid(), uid(), uid()
    copy_a = to_part10(ct_dataset(study, series, sop, seed=1))
    copy_b = to_part10(ct_dataset(study, series, sop, seed=2))
    assert (await _stow(client, f"{BASE}/sites/site-a", [copy_a])).status_code == 200
    assert (await _stow(client, f"{BASE}/sites/site-b", [copy_b])).status_code == 200
    # A conflicting copy in site-a is refused there and touches nothing in site-b.
    clash = to_part10(ct_dataset(study, series, sop, seed=3))
    refused = await _stow(client, f"{BASE}/sites/site-a", [clash])
    assert refused.status_code == 409
    got_a = await _retrieve(client, f"{BASE}/sites/site-a/studies/{study}")
    got_b = await _retrieve(client, f"{BASE}/sites/site-b/studies/{study}")
    assert [_pixels(d) for d in got_a] == [_pixels(copy_a)]
    assert [_pixels(d) for d in got_b] == [_pixels(copy_b)]


async def test_issue16_enterprise_root_stores_in_the_default_site_and_serves_one_copy(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """STOW at the root goes to the default site; WADO at the root serves the default site's
    copy when it has one, else the first holding site by name, never a mix."""
    await _add_site(app, "site-b")
    await _add_site(app, "site-c")
    study, series = uid(), uid()
    sops = [uid(), uid()]

    def copy(seed: int) -> list[bytes]:
        return [
            to_part10(ct_dataset(study, series, sop, seed=seed + n)) for n, sop in enumerate(sops)
        ]

    in_c, in_b, in_default = copy(30), copy(20), copy(10)
    assert (await _stow(client, f"{BASE}/sites/site-c", in_c)).status_code == 200
    served = await _retrieve(client, f"{BASE}/studies/{study}")
    assert sorted(map(_pixels, served)) == sorted(map(_pixels, in_c))  # the only holder
    assert (await _stow(client, f"{BASE}/sites/site-b", in_b)).status_code == 200
    served = await _retrieve(client, f"{BASE}/studies/{study}")
    assert sorted(map(_pixels, served)) == sorted(map(_pixels, in_b))  # first by name
    assert (await _stow(client, BASE, in_default)).status_code == 200  # the default site
    default_copy = await _retrieve(client, f"{BASE}/sites/default/studies/{study}")
    assert sorted(map(_pixels, default_copy)) == sorted(map(_pixels, in_default))
    served = await _retrieve(client, f"{BASE}/studies/{study}")
    assert sorted(map(_pixels, served)) == sorted(map(_pixels, in_default))  # default first
    instance = f"{BASE}/studies/{study}/series/{series}/instances/{sops[0]}"
    (one,) = await _retrieve(client, instance)
    assert _pixels(one) == _pixels(in_default[0])


async def test_issue16_a_site_keeps_its_objects_in_its_own_storage(
    app: Starlette, client: httpx.AsyncClient, settings: Settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    if settings.storage_url.startswith("s3://"):
        bucket = settings.storage_url.removeprefix("s3://").split("/", 1)[0]
        own = f"s3://{bucket}/residency-eu"
    else:
        own = f"file://{tmp_path}/residency-eu"
    await _add_site(app, "eu", own)
    ds = ct_dataset()
    data = to_part10(ds)
    assert (await _stow(client, f"{BASE}/sites/eu", [data])).status_code == 200
    blobs = app.state.backends.blobs
    server_keys = [info.key async for info in blobs._default.iter_objects("eu/")]
    own_store = await blobs.store_of("eu")
    own_keys = [info.key async for info in own_store.iter_objects("eu/")]
    assert server_keys == []
    assert len(own_keys) == 1 and own_keys[0].endswith(".dcm")
    (served,) = await _retrieve(client, f"{BASE}/sites/eu/studies/{ds.StudyInstanceUID}")
    assert served[128:] == data[128:]
    listed = [info.key async for info in blobs.iter_objects("eu/")]
    assert listed == own_keys  # the routed listing covers the site's own store


def _urls(rows: list[dict[str, object]]) -> list[str]:
    return sorted(row["00081190"]["Value"][0] for row in rows)  # type: ignore[index]


async def test_issue16_enterprise_root_searches_every_site_with_each_row_in_its_site(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """QIDO at the root covers every site (the caller may read): each result's RetrieveURL
    (and an includefield BulkDataURI) points into its own site's root. One patient ID
    issued by two hospitals is two patients: IssuerOfPatientID tells them apart."""
    await _add_site(app, "east")
    await _add_site(app, "west")
    shared = uid()  # one study UID in two sites: two independent copies, two rows
    east = ct_dataset(shared, patient_id="MRN-7")
    east.IssuerOfPatientID = "EAST-HOSPITAL"
    west = ct_dataset(shared, patient_id="MRN-7", seed=4)
    west.IssuerOfPatientID = "WEST-HOSPITAL"
    local = ct_dataset(patient_id="MRN-7")
    local.IssuerOfPatientID = "EAST-HOSPITAL"
    assert (await _stow(client, f"{BASE}/sites/east", [to_part10(east)])).status_code == 200
    assert (await _stow(client, f"{BASE}/sites/west", [to_part10(west)])).status_code == 200
    assert (await _stow(client, BASE, [to_part10(local)])).status_code == 200

    found = (await client.get(f"{BASE}/studies", params={"PatientID": "MRN-7"})).json()
    assert _urls(found) == sorted(
        [
            f"{BASE}/sites/east/studies/{shared}",
            f"{BASE}/sites/west/studies/{shared}",
            f"{BASE}/sites/default/studies/{local.StudyInstanceUID}",
        ]
    )
    by_issuer = await client.get(
        f"{BASE}/studies", params={"PatientID": "MRN-7", "IssuerOfPatientID": "WEST-HOSPITAL"}
    )
    assert _urls(by_issuer.json()) == [f"{BASE}/sites/west/studies/{shared}"]
    east_patient = await client.get(
        f"{BASE}/studies", params={"PatientID": "MRN-7", "IssuerOfPatientID": "EAST-HOSPITAL"}
    )
    assert len(east_patient.json()) == 2  # one issuer's patient, in two sites

    instances = (
        await client.get(f"{BASE}/studies/{shared}/instances", params={"includefield": "all"})
    ).json()
    pixel_uris = sorted(row["7FE00010"]["BulkDataURI"] for row in instances)
    assert [uri.split("/studies/")[0] for uri in pixel_uris] == [
        f"{BASE}/sites/east",
        f"{BASE}/sites/west",
    ]
    # A site's root still sees only its own rows, and paging runs across sites.
    assert len((await client.get(f"{BASE}/sites/east/studies")).json()) == 1
    pages = [
        (await client.get(f"{BASE}/studies", params={"limit": 1, "offset": n})).json()
        for n in range(4)
    ]
    assert [len(page) for page in pages] == [1, 1, 1, 0]
    assert _urls([row for page in pages for row in page]) == _urls(found)


async def test_issue16_a_study_answered_again_follows_its_changes_and_its_root(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Study rows and their serialised answers are kept per process (index/rows.py,
    services/search.py): asked again, a study's answer is the same; once it changes, or at
    another root, or with other return keys, it is that answer, never the one kept."""
    await _add_site(app, "hospital-a")
    study = uid()
    first = ct_dataset(study=study, patient_id="KEPT-1")
    assert (await _stow(client, f"{BASE}/sites/hospital-a", [to_part10(first)])).status_code == 200

    async def found(root: str, extra: str = "") -> dict[str, dict[str, object]]:
        response = await client.get(f"{root}/studies?PatientID=KEPT-1{extra}")
        assert response.status_code == 200, response.text
        (row,) = response.json()
        return dict(row)

    site_root = f"{BASE}/sites/hospital-a"
    once = await found(site_root)
    assert await found(site_root) == once
    assert once["00201208"]["Value"] == [1]
    assert once["00081190"]["Value"] == [f"{site_root}/studies/{study}"]
    enterprise = await found(BASE)  # the same row, pointing into its site from the root
    assert enterprise["00081190"] == once["00081190"]
    assert "00080062" not in once
    asked = await found(site_root, "&includefield=SOPClassesInStudy")
    assert asked["00080062"]["Value"] == [str(first.SOPClassUID)]

    second = ct_dataset(study=study, series=uid(), patient_id="KEPT-1", modality="MR")
    assert (await _stow(client, site_root, [to_part10(second)])).status_code == 200
    changed = await found(site_root)
    assert changed["00201208"]["Value"] == [2]
    assert changed["00201206"]["Value"] == [2]
    assert changed["00080061"]["Value"] == ["CT", "MR"]
    assert (await client.delete(f"{site_root}/studies/{study}")).status_code == 204
    gone = await client.get(f"{site_root}/studies?PatientID=KEPT-1")
    assert gone.status_code == 200 and gone.json() == []


async def test_issue22_a_series_instance_list_asked_again_follows_its_changes(
    client: httpx.AsyncClient,
) -> None:
    """Instance rows and their answers are kept per process too: a series' instance list is
    the same asked again, and follows a new instance, a delete and its return keys."""
    study, series = uid(), uid()
    first = [ct_dataset(study=study, series=series, instance_number=n) for n in (1, 2)]
    assert (await _stow(client, BASE, [to_part10(ds) for ds in first])).status_code == 200
    path = f"{BASE}/studies/{study}/series/{series}/instances"

    async def listed(extra: str = "") -> list[dict[str, dict[str, object]]]:
        response = await client.get(f"{path}{extra}")
        assert response.status_code == 200, response.text
        return list(response.json())

    once = await listed()
    assert await listed() == once
    assert all("00201209" not in row for row in once)  # not asked for
    counted = await listed("?includefield=00201209")
    assert [row["00201209"]["Value"] for row in counted] == [[2], [2]]
    into = f"{BASE}/sites/default/studies/{study}/series/{series}/instances"  # its site's copy
    urls = {row["00081190"]["Value"][0] for row in once}  # type: ignore[index]
    assert urls == {f"{into}/{ds.SOPInstanceUID}" for ds in first}
    asked = await listed("?includefield=00280101")  # BitsStored: from each instance's metadata
    assert [row["00280101"]["Value"] for row in asked] == [[first[0].BitsStored]] * 2
    assert all("00280101" not in row for row in await listed())
    sop = first[0].SOPInstanceUID

    late = ct_dataset(study=study, series=series, instance_number=3)
    assert (await _stow(client, BASE, [to_part10(late)])).status_code == 200
    grown = await listed("?includefield=00201209")
    assert len(grown) == 3 and [row["00201209"]["Value"] for row in grown] == [[3]] * 3
    deleted = await client.delete(f"{path}/{sop}")
    assert deleted.status_code == 204
    shrunk = await listed("?includefield=00201209")
    assert {row["00080018"]["Value"][0] for row in shrunk} == {  # type: ignore[index]
        first[1].SOPInstanceUID,
        late.SOPInstanceUID,
    }
    assert [row["00201209"]["Value"] for row in shrunk] == [[2], [2]]
