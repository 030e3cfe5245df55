"""IOCM rejection, minimum retention, legal holds and retention (issue 18), on both backends."""

from __future__ import annotations

import logging

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from starlette.applications import Starlette

from dicomweb_server.config import Settings
from dicomweb_server.domain.rejection import KEY_OBJECT_SELECTION_DOCUMENT
from dicomweb_server.services.holds import HoldService
from dicomweb_server.services.retention import Maintenance

BASE = "http://testserver/dicomweb"
ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CT = "1.2.840.10008.5.1.4.1.1.2"


def _kos(study: str, references: list[tuple[str, str]], code: str = "113001") -> bytes:
    """A rejection note (Key Object Selection Document) naming (series, sop) of `study`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT
    ds.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = uid()
    ds.PatientID = "PAT-1"
    ds.PatientName = "Doe^Jane"
    ds.StudyDate = "20240115"
    ds.Modality = "KO"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = Sequence([title])
    series_items = []
    for series in dict.fromkeys(s for s, _ in references):
        item = Dataset()
        item.SeriesInstanceUID = series
        sops = []
        for _, sop in (r for r in references if r[0] == series):
            ref = Dataset()
            ref.ReferencedSOPClassUID = CT
            ref.ReferencedSOPInstanceUID = sop
            sops.append(ref)
        item.ReferencedSOPSequence = Sequence(sops)
        series_items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return to_part10(ds)


async def _post(client: httpx.AsyncClient, files: list[bytes]) -> httpx.Response:
    body, content_type = multipart_body(files)
    return await client.post("/studies", content=body, headers={"Content-Type": content_type})


def _sops(response: httpx.Response) -> list[str]:
    return [i["00080018"]["Value"][0] for i in response.json()]


async def test_issue18_a_stored_rejection_note_hides_what_it_names(
    client: httpx.AsyncClient,
) -> None:
    study, series = uid(), uid()
    sops = [uid(), uid(), uid()]
    files = [
        to_part10(ct_dataset(study, series, sop, instance_number=n)) for n, sop in enumerate(sops)
    ]
    assert (await _post(client, files)).status_code == 200
    note = _kos(study, [(series, sops[0]), (series, sops[1])])
    assert (await _post(client, [note])).status_code == 200
    listed = _sops(await client.get(f"/studies/{study}/series/{series}/instances"))
    assert listed == [sops[2]]
    # The note itself stays visible (as dcm4chee keeps rejection notes): it says why.
    modalities = (await client.get("/studies", params={"StudyInstanceUID": study})).json()[0]
    assert modalities["00080061"]["Value"] == ["CT", "KO"]
    assert modalities["00201208"]["Value"] == [2]
    # A rejected instance sent again is refused: 0xA771, with a reason.
    again = await _post(client, [files[0]])
    assert again.status_code == 409
    failed = again.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA771]
    assert "was rejected (113001^DCM)" in again.headers["warning"]


async def test_issue18_a_note_rejects_instances_sent_later_and_in_the_same_request(
    client: httpx.AsyncClient,
) -> None:
    study, series = uid(), uid()
    early, late = uid(), uid()
    early_file = to_part10(ct_dataset(study, series, early))
    note = _kos(study, [(series, early), (series, late)])
    assert (await _post(client, [early_file, note])).status_code == 200
    assert _sops(await client.get(f"/studies/{study}/series/{series}/instances")) == []
    refused = await _post(client, [to_part10(ct_dataset(study, series, late))])
    assert refused.status_code == 409


async def test_issue18_the_reject_resource_answers_as_dcm4chee(client: httpx.AsyncClient) -> None:
    study, series, other = uid(), uid(), uid()
    files = [to_part10(ct_dataset(study, series, uid(), instance_number=n)) for n in range(2)]
    files.append(to_part10(ct_dataset(study, other, uid(), modality="MR")))
    assert (await _post(client, files)).status_code == 200
    url = f"/studies/{study}/series/{series}/reject/113001%5EDCM"  # as OHIF sends it
    response = await client.post(url)
    assert response.status_code == 200
    assert response.json() == {"count": 2}
    assert response.headers["content-type"] == "application/json"
    assert (await client.get(f"/studies/{study}/series/{series}")).status_code == 404
    found = (await client.get("/studies", params={"StudyInstanceUID": study})).json()[0]
    assert found["00080061"]["Value"] == ["MR"] and found["00201208"]["Value"] == [1]
    assert (await client.post(url)).status_code == 404  # nothing left to reject
    assert (await _post(client, files[:1])).status_code == 409  # rejected: refused
    bad = await client.post(f"/studies/{study}/series/{other}/reject/999999%5EDCM")
    assert bad.status_code == 400 and "113001^DCM" in bad.json()["reason"]
    assert (await client.post(f"/studies/{study}/series/{other}/reject/113001")).status_code == 400
    options = await client.options(url, headers={"Accept": "application/json"})
    assert options.headers["allow"] == "OPTIONS, POST"


async def test_issue18_minimum_retention_refuses_a_young_study(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    sites = app.state.dicomweb.sites
    await sites.update_site(await sites.get_site("default"), min_retain_years=5)
    study, old_study = uid(), uid()
    young = to_part10(ct_dataset(study, uid(), uid(), study_date="20991231"))
    old = to_part10(ct_dataset(old_study, uid(), uid(), study_date="19990101"))
    assert (await _post(client, [young, old])).status_code == 200
    refused = await client.delete(f"/studies/{study}")
    assert refused.status_code == 409
    assert refused.json()["reason"] == (
        f"study {study} is younger than site default's minimum retention of 5 years"
    )
    assert (await client.delete(f"/studies/{old_study}")).status_code == 204
    # A rejection for quality reasons is allowed at any age; one for retention is not.
    series = (await client.get(f"/studies/{study}/series")).json()[0]["0020000E"]["Value"][0]
    expired = await client.post(f"/studies/{study}/series/{series}/reject/113039%5EDCM")
    assert expired.status_code == 409
    quality = await client.post(f"/studies/{study}/series/{series}/reject/113001%5EDCM")
    assert quality.status_code == 200


async def test_issue18_a_legal_hold_keeps_a_study(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    holds = HoldService(app.state.backends.index)
    study, series, patient_study = uid(), uid(), uid()
    files = [
        to_part10(ct_dataset(study, series, uid(), patient_id="HELD-1")),
        to_part10(ct_dataset(patient_study, uid(), uid(), patient_id="HELD-2")),
    ]
    assert (await _post(client, files)).status_code == 200
    by_study = await holds.add(reason="case 2024-17", who="tester", study_instance_uid=study)
    by_patient = await holds.add(reason="litigation", who="tester", patient_id="HELD-2")
    refused = await client.delete(f"/studies/{study}/series/{series}")
    assert refused.status_code == 409
    assert f"legal hold {by_study.id}" in refused.json()["reason"]
    assert "case 2024-17" in refused.json()["reason"]
    rejected = await client.post(f"/studies/{study}/series/{series}/reject/113001%5EDCM")
    assert rejected.status_code == 409
    note = await _post(client, [_kos(study, [(series, uid())])])
    assert note.status_code == 409  # the note cannot take effect: it is not stored
    assert "legal hold" in note.headers["warning"]
    patient = await client.delete(f"/studies/{patient_study}")
    assert patient.status_code == 409 and f"legal hold {by_patient.id}" in patient.text
    assert [h.id for h in await holds.list()] == [by_study.id, by_patient.id]
    await holds.remove(by_study.id, who="tester")
    assert (await client.delete(f"/studies/{study}")).status_code == 204
    with pytest.raises(Exception, match="no legal hold"):
        await holds.remove(by_study.id, who="tester")


async def test_issue18_hold_ids_are_never_reused(app: Starlette) -> None:
    """ "Hold N" names one hold: removing the newest and adding another gives a new id."""
    holds = HoldService(app.state.backends.index)
    first = await holds.add(reason="case 1", who="tester", study_instance_uid=uid())
    newest = await holds.add(reason="case 2", who="tester", patient_id="P-2")
    await holds.remove(newest.id, who="tester")
    added = await holds.add(reason="case 3", who="tester", patient_id="P-3")
    assert added.id > newest.id > first.id
    assert [h.id for h in await holds.list()] == [first.id, added.id]


async def test_issue18_retention_expires_old_studies_through_the_trash(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    state = app.state
    sites = state.dicomweb.sites
    await sites.update_site(await sites.get_site("default"), retain_years=10)
    old, held, recent = uid(), uid(), uid()
    files = [
        to_part10(ct_dataset(old, uid(), uid(), study_date="19990101")),
        to_part10(ct_dataset(held, uid(), uid(), study_date="19980101", patient_id="KEEP")),
        to_part10(ct_dataset(recent, uid(), uid(), study_date="20991231")),
    ]
    assert (await _post(client, files)).status_code == 200
    await HoldService(state.backends.index).add(reason="audit", who="t", patient_id="KEEP")
    index = state.backends.index
    maintenance = Maintenance(index, index, state.dicomweb.delete, interval=0)
    report = await maintenance.run_once()
    assert report is not None and (report.expired, report.refused) == (1, 1)
    assert (await client.get(f"/studies/{old}")).status_code == 404
    for kept in (held, recent):
        assert (await client.get(f"/studies/{kept}/metadata")).status_code == 200
    trashed = await index.trashed_before(1e12, "default", 10)
    assert [t.key.study_instance_uid for t in trashed] == [old]
    # One process at a time: another holder does not get the lease while it is live.
    other = Maintenance(index, index, state.dicomweb.delete, interval=0)
    assert await other.run_once() is None
    assert await state.dicomweb.delete.restore("default", old) == 1


async def test_issue18_a_rejection_note_needs_the_delete_grant(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Storing a rejection note is a rejection: with `write` alone the note is refused and
    hides nothing (not even instances not stored yet), while the rest of the request is
    stored; with `delete` too it rejects, and the trash and the log name who did it."""
    from dicomweb_server.app import create_app
    from dicomweb_server.services.apikeys import ApiKeyService

    application = create_app(settings.replace(auth="apikey"))
    async with application.router.lifespan_context(application):
        keys = ApiKeyService(application.state.backends.index)
        owner = (await keys.create_api_key("owner", ["*:write", "*:read"])).key
        writer = (await keys.create_api_key("writer", ["default:write", "default:read"])).key
        rejecter = (await keys.create_api_key("rejecter", ["default:write", "default:delete"])).key

        def client_for(key: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application),
                base_url=BASE,
                headers={"Authorization": f"Bearer {key}"},
            )

        study, series, later = uid(), uid(), uid()
        sops = [uid(), uid()]
        files = [to_part10(ct_dataset(study, series, sop)) for sop in sops]
        async with client_for(owner) as http:
            assert (await _post(http, files)).status_code == 200
        note = _kos(study, [(series, sops[0]), (series, later)])
        other = to_part10(ct_dataset(uid(), uid(), uid()))
        async with client_for(writer) as http:
            refused = await _post(http, [note, other])
            assert refused.status_code == 202  # the other part is stored
            assert len(refused.json()["00081199"]["Value"]) == 1
            failed = refused.json()["00081198"]["Value"]
            assert [f["00081197"]["Value"] for f in failed] == [[0x0124]]
            warning = refused.headers["warning"]
            assert "needs the delete grant (writer has no default:delete grant)" in warning
            assert "nothing was rejected" in warning
            assert (await _post(http, [note])).status_code == 409
        async with client_for(owner) as http:
            listed = await http.get(f"/studies/{study}/series/{series}/instances")
            assert sorted(_sops(listed)) == sorted(sops)  # nothing hidden
            found = (await http.get("/studies", params={"StudyInstanceUID": study})).json()
            assert found[0]["00080061"]["Value"] == ["CT"]  # the note is not stored
            # Nothing is recorded as rejected: the owner's sends are stored.
            assert (await _post(http, files[:1])).status_code == 200
            assert (
                await _post(http, [to_part10(ct_dataset(study, series, later))])
            ).status_code == 200
        caplog.set_level(logging.INFO, "dicomweb_server.delete")
        async with client_for(rejecter) as http:
            assert (await _post(http, [note])).status_code == 200
        async with client_for(owner) as http:
            listed = await http.get(f"/studies/{study}/series/{series}/instances")
            assert _sops(listed) == [sops[1]]
        assert "(113001^DCM, by rejecter (rejection note" in caplog.text
        # The stored note sent again with `write` alone is refused, and the stored copy kept.
        async with client_for(writer) as http:
            assert (await _post(http, [note])).status_code == 409
        async with client_for(owner) as http:
            kept = await http.get(f"/studies/{study}", headers={"Accept": ALL})
            parts = parse_multipart(kept.content, kept.headers["content-type"])
            assert kept.status_code == 200 and len(parts) == 2
