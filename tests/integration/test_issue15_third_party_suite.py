"""Issue 15: what two third-party DICOMweb suites send for single-part (and multipart) STOW,
replayed against the real app, checked against what each suite asserts.

Sources (requests and assertions ported; no code copied):

- DD: datadoc1/dicomweb-conformance-tests @ 2cd6761 (2025-11-11), `dicomweb_tests/stow_tests.py`
  (`STOWTest._test_*`). A Python suite; it was also run as it is against `dicomweb-server serve`
  (see the h/conf report). Its STOW bodies are `b"DICM"` plus zeros, not Part 10 files.
- MS: microsoft/dicom-server @ eeefbe4 (2024-12), `test/Microsoft.Health.Dicom.Web.Tests.E2E/
  Rest/StoreTransactionTests.cs` and `StoreTransactionTestsLatest.cs` (`Given..._When..._Then...`).
  C# (no .NET here); `Samples.CreateRandomInstanceDataset` is rebuilt with pydicom below.

Where we answer differently from what a suite asserts, the test pins our answer and says why
(PS3.18 section, and whether Microsoft's service accepts what we refuse). Only one case was a
refusal of something Microsoft stores: a part without Content-Type under
`type="application/dicom"`, fixed in web/store.py.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from dicomfiles import ct_dataset, to_part10, uid
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on deliberately bad values

DICOM_JSON = "application/dicom+json"
SINGLE = {"Content-Type": "application/dicom", "Accept": DICOM_JSON}
DD_STORED_OR_CONFLICT = {200, 201, 204, 409}  # what DD's STOW tests count as handled
FAILED_SOP, REFERENCED_SOP, RETRIEVE_URL, FAILURE_REASON = (
    "00081198",
    "00081199",
    "00081190",
    "00081197",
)
VALIDATION_FAILED = 0xA900  # MS ValidationHelpers.ValidationFailedFailureCode (43264)
CANNOT_UNDERSTAND = 0xC000


def _ms_dataset(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str | None = None,
) -> Dataset:
    """MS Samples.CreateRandomInstanceDataset: random UIDs (the SOP Class too), 8 bits,
    MONOCHROME2, random PatientID and PatientName; Explicit VR Little Endian."""
    ds = Dataset()
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = series or uid()
    ds.SOPInstanceUID = sop or uid()
    ds.SOPClassUID = uid()
    ds.BitsAllocated = 8
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PatientID = patient_id if patient_id is not None else uid()
    ds.PatientName = uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _with_pixels(ds: Dataset, rows: int, columns: int) -> Dataset:
    """MS Samples.AppendRandomPixelData: one 8-bit unsigned monochrome frame."""
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 0, 8, 7
    ds.PixelData = np.random.default_rng(15).integers(0, 256, rows * columns, np.uint8).tobytes()
    return ds


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str) -> bytes:
    """As .NET's MultipartContent writes it: CRLF before every delimiter after the first."""
    out = b""
    for index, (headers, body) in enumerate(parts):
        out += (b"\r\n" if index else b"") + f"--{boundary}\r\n".encode()
        out += b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        out += b"\r\n" + body
    return out + f"\r\n--{boundary}--\r\n".encode()


def _related(boundary: str) -> dict[str, str]:
    return {
        "Content-Type": f'multipart/related; boundary="{boundary}"; type="application/dicom"',
        "Accept": DICOM_JSON,
    }


def _dicom_part(data: bytes) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/dicom"}, data


def _reasons(body: dict[str, Any]) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body[FAILED_SOP]["Value"]]


# --- DD: datadoc1/dicomweb-conformance-tests, dicomweb_tests/stow_tests.py ---------------------

DD_SYNTHETIC = b"DICM" + b"\0" * 1024  # STOWTest._create_test_dicom()
DD_LARGE = b"DICM" + b"\0" * (10 * 1024)  # STOWTest._create_large_test_dicom()


@pytest.mark.parametrize("body", [DD_SYNTHETIC, DD_LARGE], ids=["basic", "large"])
async def test_issue15_dd_single_part_store_is_answered(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """DD _test_basic_store, _store_with_auth, _store_response_validation, _store_large_dicom,
    _store_different_modalities, _store_multiple_objects, _concurrent_uploads,
    _store_with_patient_info: all POST this body as application/dicom and pass on 200, 201,
    204 or 409. It is no Part 10 file (no preamble), so it is one failed instance: 409 with a
    FailedSOPSequence, as Microsoft answers a part it cannot read."""
    response = await client.post("/studies", content=body, headers=SINGLE)
    assert response.status_code in DD_STORED_OR_CONFLICT
    assert response.status_code == 409
    assert response.headers["content-type"] == DICOM_JSON
    assert _reasons(response.json()) == [CANNOT_UNDERSTAND]


async def test_issue15_dd_custom_content_types(client: httpx.AsyncClient) -> None:
    """DD _test_store_custom_content_type: passes when at least one of the three is handled."""
    statuses = {}
    for content_type in ("application/octet-stream", "multipart/related", "application/dicom"):
        response = await client.post(
            "/studies",
            content=DD_SYNTHETIC,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        statuses[content_type] = response.status_code
    assert set(statuses.values()) & DD_STORED_OR_CONFLICT
    # octet-stream is no STOW media type (PS3.18 10.5.1.2); multipart/related without a
    # boundary is malformed (RFC 2046 5.1.1).
    assert statuses == {
        "application/octet-stream": 415,
        "multipart/related": 400,
        "application/dicom": 409,
    }


@pytest.mark.parametrize(
    "body",
    [b"This is not a valid DICOM file", b"DICM\x00\x00\x00\x00" + b"corrupted_data_here" * 100],
    ids=["invalid", "corrupted"],
)
async def test_issue15_dd_invalid_single_part_is_a_failed_instance(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """DD _test_store_invalid_dicom and _test_store_corrupted_dicom want 400, 415 or 422; the
    same suite passes DD_SYNTHETIC (just as unreadable) on 409, so no answer passes both. We
    answer a single-part body as a one-part multipart request (issue 15 item 2): an unreadable
    instance is a FailedSOPSequence entry, 409 when nothing was stored (PS3.18 10.5.3), and
    Microsoft answers 409 too (MS GivenAMultipartRequestWithEmptyContent...). Not a refusal
    of anything Microsoft or Google stores."""
    response = await client.post("/studies", content=body, headers=SINGLE)
    assert response.status_code == 409
    assert _reasons(response.json()) == [CANNOT_UNDERSTAND]


async def test_issue15_dd_empty_payload(client: httpx.AsyncClient) -> None:
    """DD _test_store_empty_payload: 400, 411 or 422. (MS GivenEmptyContent_WhenStoring_
    TheServerShouldReturnConflict wants 409 for the same request; an empty body is bad syntax,
    PS3.18 10.5.3's 400, and both refuse it.)"""
    response = await client.post("/studies", content=b"", headers=SINGLE)
    assert response.status_code == 400


async def test_issue15_dd_unsupported_format(client: httpx.AsyncClient) -> None:
    """DD _test_store_unsupported_format: text/plain is 400, 415 or 422."""
    response = await client.post(
        "/studies",
        content=b"This is just plain text, not DICOM",
        headers={"Content-Type": "text/plain", "Accept": DICOM_JSON},
    )
    assert response.status_code == 415


async def test_issue15_dd_metadata_json_body_is_not_a_stow_payload(
    client: httpx.AsyncClient,
) -> None:
    """DD _test_store_with_metadata POSTs one JSON object (three UIDs, no SOP Class, no bulk
    data) as application/dicom+json and wants 200, 201, 204 or 409. PS3.18 10.5.1.2 carries
    metadata only as multipart/related; type="application/dicom+json" with bulk data parts;
    Microsoft's service takes neither (415). We refuse it with 415 as well."""
    metadata = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3.4.5.6.7.8.9.10.11.12.13.14.15"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3.4.5.6.7.8.9.10.11.12.13.14.16"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.4.5.6.7.8.9.10.11.12.13.14.17"]},
    }
    response = await client.post(
        "/studies", json=metadata, headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}
    )
    assert response.status_code == 415


async def test_issue15_dd_store_to_a_series_url(client: httpx.AsyncClient) -> None:
    """DD _test_store_specific_study_series and _test_store_dicom_directory POST to
    studies/{study}/series/{series} and accept 200, 201, 204, 409, 400 or 404. PS3.18 10.5.1
    defines STOW only on /studies and /studies/{study}; that URL is a WADO resource, so the
    answer is 405 with Allow (RFC 9110 15.5.6), which the suite does not list."""
    study, series = "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.16"
    response = await client.post(
        f"/studies/{study}/series/{series}", content=DD_SYNTHETIC, headers=SINGLE
    )
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


# --- MS: microsoft/dicom-server, test/Microsoft.Health.Dicom.Web.Tests.E2E/Rest/ -----------------


async def test_issue15_ms_single_part_request_returns_ok(client: httpx.AsyncClient) -> None:
    """MS GivenSinglePartRequest_WhenStoring_ThenServerShouldReturnOK."""
    response = await client.post("/studies", content=_part10(_ms_dataset()), headers=SINGLE)
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON


async def test_issue15_ms_single_part_request_with_study_uid(client: httpx.AsyncClient) -> None:
    """MS GivenSinglePartRequest_WhenStoringWithStudyUid_ThenServerShouldReturnOK (to the
    study's URL, as its older versions did)."""
    study = uid()
    response = await client.post(
        f"/studies/{study}", content=_part10(_ms_dataset(study)), headers=SINGLE
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    assert response.json()[RETRIEVE_URL]["Value"][0].endswith(f"studies/{study}")


async def test_issue15_ms_single_part_request_retrieves_equivalent_bytes(
    client: httpx.AsyncClient,
) -> None:
    """MS GivenSinglePartRequest_WhenStoring_ThenShouldRetrieveEquivalentBytes: 7240 x 7240
    8-bit pixels (about 50 MB), stored single-part, retrieved in Explicit VR Little Endian,
    byte for byte. MS asks with Accept: application/dicom and reads a bare Part 10 body, which
    is what we answer to that Accept."""
    ds = _with_pixels(_ms_dataset(), 7240, 7240)
    sent = _part10(ds)
    stow = await client.post("/studies", content=sent, headers=SINGLE)
    assert stow.status_code == 200
    wado = await client.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"},
    )
    assert wado.status_code == 200
    assert wado.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert len(sent) > 7240 * 7240
    assert wado.content == sent


@pytest.mark.parametrize("study", ["abc.123", "11|"])
async def test_issue15_ms_dataset_with_invalid_uid_is_a_conflict(
    client: httpx.AsyncClient, study: str
) -> None:
    """MS GivenDatasetWithInvalidUid_WhenStoring_TheServerShouldReturnConflict: 409, no
    ReferencedSOPSequence, the failure's reason ValidationFailed (0xA900)."""
    response = await client.post("/studies", content=_part10(_ms_dataset(study)), headers=SINGLE)
    assert response.status_code == 409
    body = response.json()
    assert REFERENCED_SOP not in body
    assert _reasons(body) == [VALIDATION_FAILED]


def _multiple_values(ds: Dataset) -> None:
    ds.StudyDescription = ["Value1", "Value2"]


def _modality_too_long(ds: Dataset) -> None:
    ds.Modality = "123456789ABCDEFGHIJK"


def _modality_with_nul(ds: Dataset) -> None:
    ds.Modality = "X\0X"


def _modality_nul_padded(ds: Dataset) -> None:
    ds.Modality = "X\0"


def _patient_id_nul_padded(ds: Dataset) -> None:
    ds.PatientID = "123\0"


def _patient_id_empty(ds: Dataset) -> None:
    ds.PatientID = None


def _patient_id_nul_inside(ds: Dataset) -> None:
    ds.PatientID = "\0123\0"


@pytest.mark.parametrize(
    "change",
    [
        _multiple_values,  # GivenDicomTagWithMultipleValues_WhenStoring_ThenShouldSucceedWithWarning
        _modality_too_long,  # (Latest) GivenDatasetWithInvalidVrValue_..._ShouldReturnAccepted
        _modality_with_nul,  # (Latest) GivenInstanceWithIndexableTagWithNullAsInvalidChar_...
        _modality_nul_padded,  # (Latest) GivenInstanceWithIndexableTagWithNullPadding_...
        _patient_id_nul_padded,  # (Latest) GivenInstanceWithPatientIdValidWithNullPadding_...
        _patient_id_empty,  # (Latest) GivenStoringMultipleInstanceInStudy_WhenInitial...Null...
        _patient_id_nul_inside,  # (Latest) GivenInstanceWithPatientIdInvalidWithNullPadding_...
    ],
)
async def test_issue15_ms_invalid_values_are_stored(client: httpx.AsyncClient, change: Any) -> None:
    """Microsoft stores these (200, or 202 with a FailedAttributesSequence warning) and so do
    we (200; PS3.18 10.5.3 leaves attribute validation to the origin server). The last one
    Microsoft refuses (409) and we store: not a refusal of ours."""
    ds = _ms_dataset()
    change(ds)
    response = await client.post("/studies", content=_part10(ds), headers=SINGLE)
    assert response.status_code == 200
    assert len(response.json()[REFERENCED_SOP]["Value"]) == 1


async def test_issue15_ms_study_uid_with_nul_padding_to_the_study_url(
    client: httpx.AsyncClient,
) -> None:
    """MS (Latest) GivenInstanceWithStudyUIDValidWithNullPadding_WhenStoreInstanceWith
    PartialValidation_ThenExpectOkAndNoWarnings: NUL-padded UID, POSTed to the bare UID's URL,
    200, and its metadata found under the bare UID."""
    valid = uid()
    ds = _ms_dataset(valid + "\0")
    response = await client.post(f"/studies/{valid}", content=_part10(ds), headers=SINGLE)
    assert response.status_code == 200
    metadata = await client.get(
        f"/studies/{valid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
    )
    assert metadata.status_code == 200
    assert len(metadata.json()) == 1


async def test_issue15_ms_existing_dataset_stored_again(client: httpx.AsyncClient) -> None:
    """MS GivenExistingDataset_WhenStoring_TheServerShouldReturnConflict wants 200 then 409
    (SOP instance already exists). We answer the identical instance sent again 200 (it is
    stored, once), as a retried STOW must be safe; different content under the same SOP
    Instance UID is our 409 (0x0111). Microsoft refuses where we store: no refusal of ours."""
    data = _part10(_ms_dataset())
    first = await client.post("/studies", content=data, headers=SINGLE)
    again = await client.post("/studies", content=data, headers=SINGLE)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()[REFERENCED_SOP] == first.json()[REFERENCED_SOP]


async def test_issue15_ms_padded_study_uid(client: httpx.AsyncClient) -> None:
    """MS GivenInstanceWithPaddedStudyInstanceUIDAlreadyStored_WhenStoreInstanceWithMore
    PaddedId_ThenExpectConflict: a study UID with a trailing space is stored; MS then
    retrieves at the padded UID and gets 409 for more padding. We store the UID without its
    padding (PS3.5 9.1: the space is no part of it), so the instance is at the bare UID, the
    padded URL is not a UID (400), and the more-padded copy is the same instance (200)."""
    bare = uid()
    ds = _ms_dataset(bare + " ")
    first = await client.post("/studies", content=_part10(ds), headers=SINGLE)
    assert first.status_code == 200
    path = f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    assert (await client.get(f"/studies/{bare}{path}", headers=accept)).status_code == 200
    assert (await client.get(f"/studies/{bare}%20{path}", headers=accept)).status_code == 400
    ds.StudyInstanceUID = bare + "      "
    again = await client.post("/studies", content=_part10(ds), headers=SINGLE)
    assert again.status_code in (200, 409)


@pytest.mark.parametrize("accept", ["application/dicom", "application/data"])
async def test_issue15_ms_incorrect_accept_header(client: httpx.AsyncClient, accept: str) -> None:
    """MS GivenAnIncorrectAcceptHeader_WhenStoring_TheServerShouldReturnNotAcceptable: a POST
    with no body and that Accept is 406 there. We refuse it too, with 415: the missing
    Content-Type is checked first, and a stored instance is answered in DICOM JSON whatever
    the Accept (RFC 9110 12.5.1 lets a server disregard it)."""
    response = await client.post("/studies", headers={"Accept": accept})
    assert response.status_code == 415


async def test_issue15_ms_non_multipart_request(client: httpx.AsyncClient) -> None:
    """MS GivenAnNonMultipartRequest_WhenStoring_TheServerShouldReturnUnsupportedMediaType."""
    boundary = uuid.uuid4().hex
    response = await client.post(
        "/studies",
        content=f"--{boundary}\r\n\r\n--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/form; type="application/dicom"; boundary="{boundary}"',
            "Accept": DICOM_JSON,
        },
    )
    assert response.status_code == 415


async def test_issue15_ms_multipart_request_with_no_content(client: httpx.AsyncClient) -> None:
    """MS GivenAMultipartRequestWithNoContent_WhenStoring_TheServerShouldReturnNoContent:
    .NET's empty MultipartContent writes `--b CRLF CRLF --b-- CRLF` and Microsoft answers 204.
    We read no complete part there (the close delimiter lacks its own CRLF, RFC 2046 5.1.1)
    and answer 400; nothing is stored either way."""
    boundary = uuid.uuid4().hex
    response = await client.post(
        "/studies",
        content=f"--{boundary}\r\n\r\n--{boundary}--\r\n".encode(),
        headers=_related(boundary),
    )
    assert response.status_code == 400


async def test_issue15_ms_multipart_request_with_empty_content(client: httpx.AsyncClient) -> None:
    """MS GivenAMultipartRequestWithEmptyContent_WhenStoring_TheServerShouldReturnConflict."""
    boundary = uuid.uuid4().hex
    body = _multipart([_dicom_part(b"")], boundary)
    response = await client.post("/studies", content=body, headers=_related(boundary))
    assert response.status_code == 409


async def test_issue15_ms_multipart_request_with_an_invalid_section(
    client: httpx.AsyncClient,
) -> None:
    """MS GivenAMultipartRequestWithAnInvalidMultipartSection_..._ShouldReturnAccepted."""
    boundary = uuid.uuid4().hex
    ds = _ms_dataset()
    body = _multipart([_dicom_part(b""), _dicom_part(_part10(ds))], boundary)
    response = await client.post("/studies", content=body, headers=_related(boundary))
    assert response.status_code == 202
    [referenced] = response.json()[REFERENCED_SOP]["Value"]
    assert referenced["00081155"]["Value"] == [ds.SOPInstanceUID]


async def test_issue15_part_without_content_type_takes_the_type_parameter(
    client: httpx.AsyncClient,
) -> None:
    """MS GivenAMultipartRequestWithTypeParameterAndFirstSectionWithoutContentType_WhenStoring_
    TheServerShouldReturnOK. We answered 409 ("a part has no Content-Type"): a refusal of what
    Microsoft stores. RFC 2387 3.1: `type` is the media type of the root part, and a STOW
    request's `type="application/dicom"` says what its parts are (PS3.18 10.5.1.2)."""
    boundary = uuid.uuid4().hex
    ds = _ms_dataset()
    body = _multipart([({}, _part10(ds))], boundary)
    response = await client.post("/studies", content=body, headers=_related(boundary))
    assert response.status_code == 200
    [referenced] = response.json()[REFERENCED_SOP]["Value"]
    assert referenced["00081155"]["Value"] == [ds.SOPInstanceUID]


async def test_issue15_ms_all_different_study_uids(client: httpx.AsyncClient) -> None:
    """MS GivenAllDifferentStudyInstanceUIDs_WhenStoringWithProvidedStudyInstanceUID_
    TheServerShouldReturnConflict: 409, the response data set holds only the
    FailedSOPSequence, each entry ValidationFailed (0xA900)."""
    boundary = uuid.uuid4().hex
    parts = [_dicom_part(_part10(_ms_dataset())) for _ in range(2)]
    response = await client.post(
        f"/studies/{uid()}", content=_multipart(parts, boundary), headers=_related(boundary)
    )
    assert response.status_code == 409
    body = response.json()
    assert list(body) == [FAILED_SOP]
    assert _reasons(body) == [VALIDATION_FAILED, VALIDATION_FAILED]


async def test_issue15_ms_one_different_study_uid(client: httpx.AsyncClient) -> None:
    """MS GivenOneDifferentStudyInstanceUID_WhenStoringWithProvidedStudyInstanceUID_
    TheServerShouldReturnAccepted: 202, three attributes, RetrieveURL ends with the study, the
    other instance not found."""
    boundary = uuid.uuid4().hex
    study = uid()
    good, other = _ms_dataset(study), _ms_dataset(uid())
    parts = [_dicom_part(_part10(good)), _dicom_part(_part10(other))]
    response = await client.post(
        f"/studies/{study}", content=_multipart(parts, boundary), headers=_related(boundary)
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {RETRIEVE_URL, FAILED_SOP, REFERENCED_SOP}
    assert body[RETRIEVE_URL]["Value"][0].endswith(f"studies/{study}")
    assert _reasons(body) == [VALIDATION_FAILED]
    missing = await client.get(
        f"/studies/{other.StudyInstanceUID}/series/{other.SeriesInstanceUID}"
        f"/instances/{other.SOPInstanceUID}/metadata"
    )
    assert missing.status_code == 404


async def test_issue15_ms_invalid_study_uid_in_the_url(client: httpx.AsyncClient) -> None:
    """MS GivenARequestWithInvalidStudyInstanceUID_WhenStoring_TheServerShouldReturnBadRequest."""
    boundary = uuid.uuid4().hex
    body = _multipart([_dicom_part(b"")], boundary)
    response = await client.post(f"/studies/{'b' * 65}", content=body, headers=_related(boundary))
    assert response.status_code == 400


async def test_issue15_single_part_is_found_and_retrieved(client: httpx.AsyncClient) -> None:
    """DD's QIDO and WADO tests run after a single-part STOW: found by QIDO, metadata and the
    instance retrieved at their PS3.18 URLs (DD asks for /instances/{uid} and
    /series/{uid}/metadata at the root, which PS3.18 10.4.1 does not define: 404)."""
    ds = ct_dataset(frames=4, rows=32, columns=32, patient_id="ISSUE15-DD")
    stored = await client.post("/studies", content=to_part10(ds), headers=SINGLE)
    assert stored.status_code == 200
    found = await client.get("/instances", params={"PatientID": "ISSUE15-DD", "limit": 1})
    assert found.status_code == 200
    assert found.headers["content-type"].startswith(DICOM_JSON)
    [row] = found.json()
    assert row["00080018"]["Value"] == [ds.SOPInstanceUID]
    instance = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for accept in ("application/dicom+json", "*/*"):  # DD _test_content_type_validation
        metadata = await client.get(f"{instance}/metadata", headers={"Accept": accept})
        assert metadata.status_code == 200
        assert metadata.headers["content-type"].startswith(DICOM_JSON)
    retrieved = await client.get(instance, headers={"Accept": "application/dicom"})
    assert retrieved.status_code == 200  # DD _test_image_retrieval (needs 200 and a body)
    assert retrieved.content
    frame = await client.get(f"{instance}/frames/1")  # DD _test_frame_retrieval, default Accept
    assert frame.status_code == 200
    assert (await client.get(f"/instances/{ds.SOPInstanceUID}/metadata")).status_code == 404


async def test_issue15_nul_inside_an_indexed_value_is_stored(client: httpx.AsyncClient) -> None:
    """MS (Latest) GivenInstanceWithIndexableTagWithNullAsInvalidChar: Microsoft stores it (202).
    PostgreSQL text cannot hold NUL, so the production index answered 503 (22021); the match
    value drops the NUL (PS3.5 6.1.2: no text VR has it), the stored object keeps it."""
    ds = _ms_dataset()
    ds.Modality = "X\0X"
    ds.PatientName = "Doe\0^Jane"
    response = await client.post("/studies", content=_part10(ds), headers=SINGLE)
    assert response.status_code == 200
    found = await client.get("/series", params={"StudyInstanceUID": ds.StudyInstanceUID})
    assert found.status_code == 200
    assert len(found.json()) == 1
