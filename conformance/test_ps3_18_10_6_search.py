"""PS3.18 10.6 Search Transaction (QIDO-RS); matching per PS3.4 C.2.2.2."""

from __future__ import annotations

from typing import Any

import httpx
from dicomdata import DICOM_JSON, StoredStudy, uid

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, MODALITY, STUDY_DATE = "00100020", "00080060", "00080020"


def _search(http: httpx.Client, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    response = http.get(path, params=params, headers={"Accept": DICOM_JSON})
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204 or not response.content:
        return []
    assert response.headers["content-type"].startswith(DICOM_JSON)
    rows: list[dict[str, Any]] = response.json()
    return rows


def _values(rows: list[dict[str, Any]], tag: str) -> set[str]:
    return {row[tag]["Value"][0] for row in rows if row.get(tag, {}).get("Value")}


def test_10_6_search_for_studies_by_uid(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.2: single value matching on Study Instance UID."""
    rows = _search(http, "studies", {"StudyInstanceUID": study.study})
    assert _values(rows, STUDY_UID) == {study.study}


def test_10_6_search_by_tag_number(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.2 / 8.3.4: an attributeID may be a tag as eight hex digits."""
    rows = _search(http, "studies", {"0020000D": study.study})
    assert _values(rows, STUDY_UID) == {study.study}


def test_10_6_search_by_patient_id(http: httpx.Client, study: StoredStudy) -> None:
    """PS3.4 C.2.2.2.1: single value matching on Patient ID."""
    patient = study.datasets[0].PatientID
    rows = _search(http, "studies", {"PatientID": patient})
    assert _values(rows, STUDY_UID) == {study.study}


def test_10_6_wildcard_matching(http: httpx.Client, study: StoredStudy) -> None:
    """PS3.4 C.2.2.2.4: `*` matches any sequence of characters."""
    patient = study.datasets[0].PatientID
    rows = _search(http, "studies", {"PatientID": patient[:-3] + "*"})
    assert study.study in _values(rows, STUDY_UID)


def test_10_6_date_range_matching(http: httpx.Client, study: StoredStudy) -> None:
    """PS3.4 C.2.2.2.5: a date range includes its bounds."""
    params = {"PatientID": study.datasets[0].PatientID}
    assert _search(http, "studies", {**params, "StudyDate": "20240101-20240131"})
    assert not _search(http, "studies", {**params, "StudyDate": "20230101-20231231"})


def test_10_6_uid_list_matching(http: httpx.Client, study: StoredStudy) -> None:
    """PS3.4 C.2.2.2.2: a list of UIDs matches any of them."""
    rows = _search(http, "studies", {"StudyInstanceUID": f"{study.study},{uid()}"})
    assert _values(rows, STUDY_UID) == {study.study}


def test_10_6_no_match_is_an_empty_result(http: httpx.Client) -> None:
    """10.6.3: a search matching nothing is a success with no results."""
    assert _search(http, "studies", {"StudyInstanceUID": uid()}) == []


def test_10_6_search_for_study_series(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.1: /studies/{study}/series lists that study's series."""
    rows = _search(http, f"studies/{study.study}/series", {})
    assert _values(rows, SERIES_UID) == set(study.series)


def test_10_6_search_for_series_by_modality(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.2: series-level key Modality."""
    rows = _search(http, f"studies/{study.study}/series", {"Modality": "MR"})
    assert _values(rows, SERIES_UID) == {study.series[1]}


def test_10_6_search_for_all_series(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.1: /series searches every study; study keys scope it."""
    rows = _search(http, "series", {"StudyInstanceUID": study.study})
    assert _values(rows, SERIES_UID) == set(study.series)


def test_10_6_search_for_series_instances(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.1: /studies/{study}/series/{series}/instances."""
    rows = _search(http, f"studies/{study.study}/series/{study.series[0]}/instances", {})
    assert _values(rows, SOP_UID) == {ds.SOPInstanceUID for ds in study.datasets[:2]}


def test_10_6_search_for_study_instances(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.1: /studies/{study}/instances."""
    rows = _search(http, f"studies/{study.study}/instances", {})
    assert _values(rows, SOP_UID) == {ds.SOPInstanceUID for ds in study.datasets}


def test_10_6_search_for_all_instances(http: httpx.Client, study: StoredStudy) -> None:
    """10.6.1.1: /instances with a SOP Instance UID key."""
    sop = study.datasets[2].SOPInstanceUID
    rows = _search(http, "instances", {"SOPInstanceUID": sop})
    assert _values(rows, SOP_UID) == {sop}


def test_10_6_limit_and_offset_page_the_results(http: httpx.Client, study: StoredStudy) -> None:
    """8.3.4.4: limit and offset return consecutive, non-overlapping pages."""
    path = f"studies/{study.study}/instances"
    first = _values(_search(http, path, {"limit": "2"}), SOP_UID)
    rest = _values(_search(http, path, {"limit": "2", "offset": "2"}), SOP_UID)
    assert len(first) == 2 and len(rest) == 1
    assert first | rest == {ds.SOPInstanceUID for ds in study.datasets}


def test_10_6_includefield_returns_the_named_attribute(
    http: httpx.Client, study: StoredStudy
) -> None:
    """8.3.4.3: includefield adds attributes to the results."""
    rows = _search(http, "studies", {"StudyInstanceUID": study.study, "includefield": "PatientSex"})
    assert rows and rows[0].get("00100040", {}).get("Value") == ["O"]


def test_10_6_3_study_results_carry_required_attributes(
    http: httpx.Client, study: StoredStudy
) -> None:
    """10.6.3.3.1 Table 10.6.3-3: study results include these attributes."""
    (row,) = _search(http, "studies", {"StudyInstanceUID": study.study})
    for tag in (STUDY_DATE, PATIENT_ID, STUDY_UID, "00201206", "00201208"):
        assert tag in row, tag
    assert row["00201208"]["Value"] == [3]
