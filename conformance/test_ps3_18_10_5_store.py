"""PS3.18 10.5 Store Transaction (STOW-RS)."""

from __future__ import annotations

import httpx
from dicomdata import DICOM_JSON, ct, multipart, part10, store, uid

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
RETRIEVE_URL = "00081190"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


def test_10_5_store_returns_the_store_instances_response_module(http: httpx.Client) -> None:
    """10.5.3: 200 with a Referenced SOP Sequence naming each stored instance."""
    datasets = [ct(uid(), uid(), number=n) for n in (1, 2)]
    response = store(http, datasets)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_JSON)
    referenced = response.json()[REFERENCED_SOP_SEQUENCE]["Value"]
    uids = {item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in referenced}
    assert uids == {ds.SOPInstanceUID for ds in datasets}


def test_10_5_3_referenced_instances_carry_a_retrieve_url(http: httpx.Client) -> None:
    """10.5.3 Table 10.5.3-1: each Referenced SOP item has a Retrieve URL (0008,1190)."""
    ds = ct(uid(), uid())
    item = store(http, [ds]).json()[REFERENCED_SOP_SEQUENCE]["Value"][0]
    assert ds.SOPInstanceUID in item[RETRIEVE_URL]["Value"][0]


def test_10_5_store_to_a_study_resource(http: httpx.Client) -> None:
    """10.5.1.1: POST to /studies/{study} stores instances of that study."""
    study = uid()
    response = store(http, [ct(study, uid())], f"studies/{study}")
    assert response.status_code == 200


def test_10_5_instance_of_another_study_fails_on_a_study_resource(http: httpx.Client) -> None:
    """10.5.3: an instance whose Study Instance UID differs from the target fails (409/202)."""
    study = uid()
    response = store(http, [ct(uid(), uid())], f"studies/{study}")
    assert response.status_code in (400, 409)
    if response.status_code == 409:
        assert response.json()[FAILED_SOP_SEQUENCE]["Value"][0][FAILURE_REASON]["Value"]


def test_10_5_3_partial_success_is_202(http: httpx.Client) -> None:
    """10.5.3.1: some instances stored and some failed → 202 with both sequences."""
    study = uid()
    good, other = ct(study, uid()), ct(uid(), uid())
    response = store(http, [good, other], f"studies/{study}")
    assert response.status_code == 202
    result = response.json()
    assert len(result[REFERENCED_SOP_SEQUENCE]["Value"]) == 1
    assert len(result[FAILED_SOP_SEQUENCE]["Value"]) == 1


def test_10_5_unparseable_instance_is_a_failure_not_a_crash(http: httpx.Client) -> None:
    """10.5.3: a part that is not DICOM fails with a Failure Reason; nothing is stored."""
    body, content_type = multipart([b"not a DICOM file at all"])
    response = http.post("studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code in (400, 409)


def test_10_5_1_2_unsupported_media_type_is_415(http: httpx.Client) -> None:
    """10.5.1.2 and 8.4: a payload media type the server does not accept is a 415."""
    response = http.post(
        "studies",
        content=part10(ct(uid(), uid())),
        headers={"Content-Type": "application/x-not-dicom"},
    )
    assert response.status_code == 415


def test_10_5_same_instance_twice_is_not_an_error(http: httpx.Client) -> None:
    """10.5.3: storing an identical instance again succeeds (it is already stored)."""
    ds = ct(uid(), uid())
    assert store(http, [ds]).status_code == 200
    assert store(http, [ds]).status_code in (200, 202)
