"""Orthanc as a DICOMweb client of our server: STOW-RS, QIDO-RS and WADO-RS through its plugin.

Two synthetic studies go into Orthanc over its REST API, then Orthanc's DICOMweb plugin stores
them to us (`/dicom-web/servers/ours/stow`), finds them (`.../qido`, `.../get`), and, once
they are deleted from Orthanc, retrieves them back (`.../retrieve`). Every file Orthanc ends up
with must be the file it started with, byte for byte.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pydicom
import pytest
from studies import Instance, Study, build_studies

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, PATIENT_NAME = "00100020", "00100010"


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


@pytest.fixture(scope="module")
def studies() -> list[Study]:
    return build_studies()


@pytest.fixture(scope="module")
def loaded(orthanc: httpx.Client, studies: list[Study]) -> dict[str, dict[str, str]]:
    """Every file stored in Orthanc over its REST API; SOP Instance UID → Orthanc's answer (its
    instance ID and the IDs of its parents)."""
    answers = {}
    for study in studies:
        for instance in study.instances:
            response = orthanc.post("/instances", content=instance.data)
            assert response.status_code == 200, response.text
            assert response.json()["Status"] == "Success", response.text
            answers[instance.sop] = response.json()
    return answers


@pytest.fixture(scope="module")
def orthanc_studies(loaded: dict[str, dict[str, str]], studies: list[Study]) -> dict[str, str]:
    """Study Instance UID → Orthanc's study ID."""
    return {study.uid: loaded[study.instances[0].sop]["ParentStudy"] for study in studies}


@pytest.fixture(scope="module")
def stowed(
    orthanc: httpx.Client, plugin: str, orthanc_studies: dict[str, str], studies: list[Study]
) -> dict[str, Any]:
    """Both studies sent to us by Orthanc's STOW-RS client (one request; Orthanc checks our
    answer's ReferencedSOPSequence and FailedSOPSequence itself)."""
    response = orthanc.post(f"{plugin}/stow", json={"Resources": list(orthanc_studies.values())})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["InstancesCount"] == str(sum(len(study.instances) for study in studies))
    return answer


def test_orthanc_stows_every_instance_to_us(
    stowed: dict[str, Any], ours: str, studies: list[Study]
) -> None:
    for study in studies:
        response = httpx.get(f"{ours}/studies/{study.uid}/instances", timeout=30)
        assert response.status_code == 200, response.text
        found = {_values(item, SOP_UID)[0] for item in response.json()}
        assert found == {instance.sop for instance in study.instances}


def test_orthanc_finds_both_studies_with_qido(
    stowed: dict[str, Any], orthanc: httpx.Client, plugin: str, studies: list[Study]
) -> None:
    # `.../qido` answers in Orthanc's own reduced form: each element's first value as a string
    # under "Value" (plugin 1.7 drops numbers, so counts are checked through `.../get` below).
    query = {"Uri": "/studies", "Arguments": {"PatientID": "INTEROP-*"}}
    response = orthanc.post(f"{plugin}/qido", json=query)
    assert response.status_code == 200, response.text
    found = {item[STUDY_UID]["Value"]: item for item in response.json()}
    assert set(found) == {study.uid for study in studies}
    for study in studies:
        assert found[study.uid][PATIENT_ID]["Value"] == study.patient_id
        assert found[study.uid][PATIENT_NAME]["Value"] == study.patient_name  # UTF-8 intact
        series = orthanc.post(f"{plugin}/qido", json={"Uri": f"/studies/{study.uid}/series"})
        assert series.status_code == 200, series.text
        assert {item[SERIES_UID]["Value"] for item in series.json()} == set(study.series)
        for series_uid, instances in study.series.items():
            uri = f"/studies/{study.uid}/series/{series_uid}/instances"
            listed = orthanc.post(f"{plugin}/qido", json={"Uri": uri})
            assert listed.status_code == 200, listed.text
            assert {item[SOP_UID]["Value"] for item in listed.json()} == {i.sop for i in instances}
    # `.../get` hands back our DICOM JSON as it came.
    response = orthanc.post(f"{plugin}/get", json=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    raw = {_values(item, STUDY_UID)[0]: item for item in response.json()}
    for study in studies:
        assert _values(raw[study.uid], "00201206") == [len(study.series)]  # series in study
        assert _values(raw[study.uid], "00201208") == [len(study.instances)]  # instances
        modalities = sorted({instance.modality for instance in study.instances})
        assert sorted(_values(raw[study.uid], "00080061")) == modalities  # ModalitiesInStudy


def test_orthanc_reads_our_metadata(
    stowed: dict[str, Any], orthanc: httpx.Client, plugin: str, studies: list[Study]
) -> None:
    for study in studies:
        response = orthanc.post(f"{plugin}/get", json={"Uri": f"/studies/{study.uid}/metadata"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/dicom+json")
        metadata = {_values(item, SOP_UID)[0]: item for item in response.json()}
        assert set(metadata) == {instance.sop for instance in study.instances}
        for item in metadata.values():
            assert _values(item, PATIENT_NAME) == [{"Alphabetic": study.patient_name}]


def test_orthanc_retrieves_every_file_back_unchanged(
    stowed: dict[str, Any],
    orthanc: httpx.Client,
    plugin: str,
    orthanc_studies: dict[str, str],
    loaded: dict[str, dict[str, str]],
    studies: list[Study],
) -> None:
    for orthanc_id in orthanc_studies.values():
        assert orthanc.delete(f"/studies/{orthanc_id}").status_code == 200
    assert orthanc.get("/instances").json() == []
    response = orthanc.post(
        f"{plugin}/retrieve", json={"Resources": [{"Study": study.uid} for study in studies]}
    )
    assert response.status_code == 200, response.text
    assert sorted(orthanc.get("/instances").json()) == sorted(a["ID"] for a in loaded.values())
    for study in studies:
        for instance in study.instances:
            returned = orthanc.get(f"/instances/{loaded[instance.sop]['ID']}/file")
            assert returned.status_code == 200, returned.text
            _assert_same_file(instance, returned.content)


def _assert_same_file(instance: Instance, returned: bytes) -> None:
    """Byte for byte; on a mismatch, name the elements that differ."""
    if returned == instance.data:
        return
    before = pydicom.dcmread(io.BytesIO(instance.data))
    after = pydicom.dcmread(io.BytesIO(returned))
    differences = []
    for label, a, b in (
        ("file meta", before.file_meta, after.file_meta),
        ("data set", before, after),
    ):
        for tag in sorted(set(a.keys()) | set(b.keys())):
            left, right = a.get(tag), b.get(tag)
            if left is None or right is None or left.value != right.value or left.VR != right.VR:
                differences.append(f"{label} {tag}: {left!r} -> {right!r}")
    if before.preamble != after.preamble:
        differences.append("preamble differs")
    detail = "\n".join(differences) or "(same elements: the encoding differs)"
    pytest.fail(
        f"{instance.modality} {instance.sop} ({instance.transfer_syntax}) came back"
        f" {len(returned)} bytes, not {len(instance.data)}:\n{detail}"
    )
