"""QIDO-RS over HTTP on the embedded backends (PS3.18 10.6)."""

from __future__ import annotations

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

pytestmark = pytest.mark.asyncio

BASE = "http://testserver/dicomweb"  # as the `client` fixture's (tests/integration/conftest.py)


@pytest.fixture
async def corpus(client: httpx.AsyncClient) -> dict[str, str]:
    """Two patients, three studies, four series."""
    s1, s2, s3 = uid(), uid(), uid()
    se1, se2, se3, se4 = uid(), uid(), uid(), uid()
    datasets = [
        ct_dataset(
            s1,
            se1,
            patient_id="P1",
            patient_name="Smith^Anna",
            study_date="20240110",
            instance_number=1,
        ),
        ct_dataset(
            s1,
            se1,
            patient_id="P1",
            patient_name="Smith^Anna",
            study_date="20240110",
            instance_number=2,
        ),
        ct_dataset(
            s1,
            se2,
            patient_id="P1",
            patient_name="Smith^Anna",
            study_date="20240110",
            modality="MR",
        ),
        ct_dataset(
            s2,
            se3,
            patient_id="P1",
            patient_name="Smith^Anna",
            study_date="20240301",
            accession_number="A_2",
        ),
        ct_dataset(
            s3,
            se4,
            patient_id="P2",
            patient_name="Jones^Bob",
            study_date="20231231",
            accession_number="A%3",
        ),
    ]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    return {"s1": s1, "s2": s2, "s3": s3, "se1": se1, "se2": se2}


def _values(rows: list[dict], tag: str) -> list:  # type: ignore[type-arg]
    return sorted(row[tag]["Value"][0] for row in rows)


async def _search(
    client: httpx.AsyncClient, path: str, params: dict[str, str] | str = ""
) -> list[dict]:  # type: ignore[type-arg]
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    return response.json()  # type: ignore[no-any-return]


async def test_study_search_returns_required_and_computed_attributes(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(client, "/studies", {"StudyInstanceUID": corpus["s1"]})
    assert len(rows) == 1
    row = rows[0]
    assert row["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert row["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert row["00080061"]["Value"] == ["CT", "MR"]  # ModalitiesInStudy
    assert row["00100010"]["Value"] == [{"Alphabetic": "Smith^Anna"}]
    # At the enterprise root a result points into its site's root (PS3.18 10.6.3.3 RetrieveURL)
    assert row["00081190"]["Value"] == [
        f"http://testserver/dicomweb/sites/default/studies/{corpus['s1']}"
    ]
    assert row["00080056"]["Value"] == ["ONLINE"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientID": "P1"}, ["s1", "s2"]),
        ({"00100020": "P2"}, ["s3"]),  # tag number instead of keyword
        ({"PatientName": "Smith*"}, ["s1", "s2"]),
        ({"PatientName": "*ones*"}, ["s3"]),
        ({"PatientName": "Sm?th^Anna"}, ["s1", "s2"]),
        ({"StudyDate": "20240101-20240131"}, ["s1"]),
        ({"StudyDate": "20240201-"}, ["s2"]),
        ({"StudyDate": "-20231231"}, ["s3"]),
        ({"StudyDate": "20240301"}, ["s2"]),
        ({"ModalitiesInStudy": "MR"}, ["s1"]),
        ({"AccessionNumber": "A_2"}, ["s2"]),
        ({"AccessionNumber": "A%3"}, ["s3"]),  # % matches literally
        ({"AccessionNumber": "A_*"}, ["s2"]),  # _ matches literally inside a wildcard
        ({"PatientID": ""}, ["s1", "s2", "s3"]),  # universal matching
    ],
)
async def test_study_matching(client, corpus, params, expected) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(client, "/studies", params)
    assert _values(rows, "0020000D") == sorted(corpus[name] for name in expected)


async def test_uid_list_matching(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(client, "/studies", {"StudyInstanceUID": f"{corpus['s1']},{corpus['s3']}"})
    assert _values(rows, "0020000D") == sorted([corpus["s1"], corpus["s3"]])


async def test_series_and_instance_resources(client, corpus) -> None:  # type: ignore[no-untyped-def]
    assert len(await _search(client, "/series")) == 4
    nested = await _search(client, f"/studies/{corpus['s1']}/series")
    assert _values(nested, "0020000E") == sorted([corpus["se1"], corpus["se2"]])
    assert len(await _search(client, "/series", {"Modality": "MR"})) == 1
    assert len(await _search(client, "/instances")) == 5
    assert len(await _search(client, f"/studies/{corpus['s1']}/instances")) == 3
    in_series = await _search(client, f"/studies/{corpus['s1']}/series/{corpus['se1']}/instances")
    assert len(in_series) == 2
    series_rows = await _search(client, "/series", {"SeriesInstanceUID": corpus["se1"]})
    assert series_rows[0]["00201209"]["Value"] == [2]  # NumberOfSeriesRelatedInstances
    assert in_series[0]["00081190"]["Value"][0].endswith(in_series[0]["00080018"]["Value"][0])


async def test_limit_offset_page_without_repeats(client, corpus) -> None:  # type: ignore[no-untyped-def]
    seen = []
    for offset in range(0, 5, 2):
        response = await client.get("/instances", params={"limit": "2", "offset": str(offset)})
        rows = response.json()
        seen += [row["00080018"]["Value"][0] for row in rows]
        if offset + 2 < 5:
            assert "more results" in response.headers["warning"]
        else:
            assert "warning" not in response.headers
    assert len(seen) == len(set(seen)) == 5


async def test_includefield_adds_attributes(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(
        client, "/instances", {"includefield": "00280010,Columns", "PatientID": "P2"}
    )
    assert rows[0]["00280010"]["Value"] == [16]
    assert rows[0]["00280011"]["Value"] == [16]
    rows = await _search(client, "/instances", {"includefield": "00180050", "PatientID": "P2"})
    assert "00180050" not in rows[0]  # not in the data set: nothing to add


async def test_includefield_all_returns_instance_metadata(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(client, "/instances", {"includefield": "all", "PatientID": "P2"})
    assert rows[0]["00280100"]["Value"] == [16]  # BitsAllocated
    assert rows[0]["00280101"]["Value"] == [12]  # BitsStored, not a default key


async def test_empty_result_is_200_with_empty_array(client, corpus) -> None:  # type: ignore[no-untyped-def]
    assert await _search(client, "/studies", {"PatientID": "nobody"}) == []


@pytest.mark.parametrize(
    "query",
    [
        "StudyDate=2024-01-01",
        "StudyDate=20241301",
        "StudyDate=20240201-20240101",
        "limit=-1",
        "limit=abc",
        "limit=0",
        "offset=x",
        "StudyInstanceUID=1.2.abc",
        "fuzzymatching=maybe",
        "includefield=Nonsense",
    ],
)
async def test_invalid_queries_are_400_with_reason(client, corpus, query) -> None:  # type: ignore[no-untyped-def]
    response = await client.get(f"/studies?{query}")
    assert response.status_code == 400
    assert response.json()["reason"]


async def test_sql_looking_values_are_just_values(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(client, "/studies", {"PatientID": "P1' OR '1'='1"})
    assert rows == []
    assert len(await _search(client, "/studies")) == 3


async def test_percent_encoded_values_are_decoded_once(client, corpus) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies?PatientName=Smith%5EAnna")
    assert len(response.json()) == 2
    response = await client.get("/studies?AccessionNumber=A%253")  # literal "A%3"
    assert len(response.json()) == 1


async def test_unknown_parameters_are_ignored_ps3_18_8_3(client, corpus) -> None:  # type: ignore[no-untyped-def]
    # Weasis writes `?&includefield=...`; dcm4chee-arc's UI adds its own parameters.
    response = await client.get("/studies?&returnempty=false&emptyvaluematching=true")
    assert response.status_code == 200
    assert len(response.json()) == 3
    warnings = response.headers.get_list("warning")
    assert any("'returnempty' ignored" in w for w in warnings)
    assert any("Empty Value Matching has not been performed" in w for w in warnings)


async def test_unsupported_matching_key_warns(client, corpus) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies", params={"SOPInstanceUID": "1.2.3"})
    assert response.status_code == 200
    assert "not supported for matching" in response.headers["warning"]


async def test_limit_above_maximum_is_reduced_with_warning(client, corpus) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies", params={"limit": "999999"})
    assert response.status_code == 200
    assert "reduced to the server maximum" in response.headers["warning"]


async def _store(client: httpx.AsyncClient, datasets) -> None:  # type: ignore[no-untyped-def]
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    response = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


@pytest.fixture
async def names(client: httpx.AsyncClient) -> dict[str, str]:
    """Person names that exercise component-wise and fuzzy matching (PS3.4 C.2.2.2.1)."""
    people = {
        "doe": "Doe^Jane",
        "doe_john": "Doe^John^^^",
        "muller": "Müller^Jörg",
        "doering": "Doering^Ann",
    }
    studies = {}
    for key, name in people.items():
        ds = ct_dataset(patient_name=name, patient_id=f"N-{key}")
        studies[key] = ds.StudyInstanceUID
        await _store(client, [ds])
    return studies


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "Doe"}, ["doe", "doe_john"]),  # family name component
        ({"PatientName": "Doe^John"}, ["doe_john"]),  # trailing empty components ignored
        ({"PatientName": "Doe^John^^"}, ["doe_john"]),
        ({"PatientName": "doe"}, []),  # case-sensitive without fuzzymatching
        ({"PatientName": "doe", "fuzzymatching": "true"}, ["doe", "doe_john"]),
        ({"PatientName": "muller^jorg", "fuzzymatching": "true"}, ["muller"]),  # accents folded
        ({"PatientName": "MÜLLER", "fuzzymatching": "true"}, ["muller"]),
        ({"PatientName": "Müller"}, ["muller"]),
        ({"PatientName": "Doe*"}, ["doe", "doe_john", "doering"]),
        ({"PatientName": "doe*", "fuzzymatching": "true"}, ["doe", "doe_john", "doering"]),
    ],
)
async def test_person_name_matching(client, names, params, expected) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies", params=params)
    assert response.status_code == 200
    assert sorted(r["0020000D"]["Value"][0] for r in response.json()) == sorted(
        names[k] for k in expected
    )
    if params.get("fuzzymatching") == "true":
        assert "phonetic matching is not supported" in response.headers["warning"]


async def _studies_at(
    client: httpx.AsyncClient, patient: str, cases: dict[str, tuple[str, str]]
) -> dict[str, str]:
    """One study of `patient` per case at its (StudyDate, StudyTime); their UIDs by case."""
    uids = {}
    for key, (date, time) in cases.items():
        ds = ct_dataset(study_date=date, patient_id=patient)
        ds.StudyTime = time
        uids[key] = ds.StudyInstanceUID
        await _store(client, [ds])
    return uids


async def test_combined_date_time_range(client: httpx.AsyncClient) -> None:
    # PS3.4 C.2.2.2.5.1: 20060705-20060707 with 1000-1800 is 5 July 10:00 to 7 July 18:00.
    cases = {
        "early": ("20060705", "0900"),
        "in1": ("20060705", "1100"),
        "in2": ("20060706", "0300"),
        "in3": ("20060707", "1759"),
        "late": ("20060707", "1900"),
    }
    uids = await _studies_at(client, "DT", cases)
    response = await client.get(
        "/studies", params={"StudyDate": "20060705-20060707", "StudyTime": "1000-1800"}
    )
    assert sorted(r["0020000D"]["Value"][0] for r in response.json()) == sorted(
        uids[k] for k in ("in1", "in2", "in3")
    )


async def test_ps3_4_c_2_2_2_5_1_a_date_time_range_across_midnight(
    client: httpx.AsyncClient,
) -> None:
    # 1 March 23:00 to 2 March 01:00: the time range alone "ends before it starts".
    cases = {
        "before": ("20240301", "225959"),
        "in1": ("20240301", "233000"),
        "in2": ("20240302", "003000"),
        "in3": ("20240302", "0100"),
        "after": ("20240302", "010100"),
        "next_evening": ("20240302", "233000"),
    }
    uids = await _studies_at(client, "MIDNIGHT", cases)
    response = await client.get(
        "/studies", params={"StudyDate": "20240301-20240302", "StudyTime": "230000-010000"}
    )
    assert response.status_code == 200, response.text
    assert sorted(r["0020000D"]["Value"][0] for r in response.json()) == sorted(
        uids[k] for k in ("in1", "in2", "in3")
    )
    # Bounds of different precision: 12 takes in all of 12:xx.
    response = await client.get(
        "/studies", params={"PatientID": "MIDNIGHT", "StudyTime": "0030-00"}
    )
    assert response.status_code == 200, response.text
    assert [r["0020000D"]["Value"][0] for r in response.json()] == [uids["in2"]]
    refused = await client.get("/studies", params={"StudyTime": "2500"})
    assert refused.status_code == 400
    assert "not a time of day" in refused.text


async def test_sequence_matching_on_request_attributes(client: httpx.AsyncClient) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    tagged = ct_dataset(patient_id="SEQ")
    first, second = Dataset(), Dataset()
    first.RequestedProcedureID, first.ScheduledProcedureStepID = "RP_1", "SPS-1"
    second.RequestedProcedureID, second.ScheduledProcedureStepID = "RP-2", "SPS-2"
    tagged.RequestAttributesSequence = Sequence([first, second])
    await _store(client, [tagged, ct_dataset(patient_id="SEQ")])
    for params in (
        {"RequestAttributesSequence.RequestedProcedureID": "RP-2"},
        {"00400275.00401001": "RP_1"},
        {"00400275.00400009": "SPS-1"},
    ):
        rows = (await client.get("/series", params=params)).json()
        assert [r["0020000E"]["Value"][0] for r in rows] == [tagged.SeriesInstanceUID], params
        assert "00400275" in rows[0]
    assert (await client.get("/series", params={"00400275.00401001": "RP%1"})).json() == []
    assert (await client.get("/series", params={"00400275.00401001": "RP"})).json() == []


async def test_issue15_qido_wildcard_matches_one_request_attributes_item(
    client: httpx.AsyncClient,
) -> None:
    """Not the items' values as the column joins them: `RP-2*` matches the second item."""
    tagged = ct_dataset(patient_id="SEQ-W")
    first, second = Dataset(), Dataset()
    first.RequestedProcedureID, second.RequestedProcedureID = "RP_1", "RP-2"
    tagged.RequestAttributesSequence = Sequence([first, second])
    await _store(client, [tagged, ct_dataset(patient_id="SEQ-W")])
    for value in ("RP-2*", "*_1", "RP?2"):
        rows = (await client.get("/series", params={"00400275.00401001": value})).json()
        assert [r["0020000E"]["Value"][0] for r in rows] == [tagged.SeriesInstanceUID], value
    assert (await client.get("/series", params={"00400275.00401001": "*1\\RP*"})).json() == []


async def test_includefield_at_study_level_reads_a_representative_instance(client, corpus) -> None:  # type: ignore[no-untyped-def]
    rows = await _search(
        client, "/studies", {"StudyInstanceUID": corpus["s3"], "includefield": "00280101"}
    )
    assert rows[0]["00280101"]["Value"] == [12]  # BitsStored, from the study's instance
    rows = await _search(
        client, "/studies", {"StudyInstanceUID": corpus["s3"], "includefield": "all"}
    )
    assert "00280010" not in rows[0]  # Rows: an instance-level attribute is not the study's
    assert "7FE00010" not in rows[0]


async def test_paging_while_storing_never_repeats_or_skips(client: httpx.AsyncClient) -> None:
    await _store(client, [ct_dataset(patient_id="PAGE") for _ in range(6)])
    seen: list[str] = []
    offset = 0
    while True:
        rows = (
            await client.get(
                "/studies", params={"PatientID": "PAGE", "limit": "2", "offset": str(offset)}
            )
        ).json()
        if not rows:
            break
        seen += [r["0020000D"]["Value"][0] for r in rows]
        offset += len(rows)
        if offset <= 6:
            await _store(client, [ct_dataset(patient_id="PAGE")])  # a study arrives mid-paging
    assert len(seen) == len(set(seen))
    total = (await client.get("/studies", params={"PatientID": "PAGE"})).json()
    assert sorted(seen) == sorted(r["0020000D"]["Value"][0] for r in total)


# --- issue 15: QIDO on any attribute ---------------------------------------------------------


def _ai_dataset(
    study: str | None = None,
    series: str | None = None,
    *,
    body_part: str = "CHEST",
    manufacturer: str = "ACME Medical",
    model: str = "Scanner 9000",
    station: str = "CT01",
    institution: str = "General Hospital",
    protocol: str = "Chest routine",
    patient_age: str = "045Y",
    slice_thickness: str = "1.25",
    cohort: str = "cohort-A",
    code: str = "T-D3000",
    operator: str = "Operator^Olga",
    acquisition_date: str = "20240115",
    patient_id: str = "AI-1",
) -> Dataset:
    """A CT instance carrying what AI case selection filters on, indexed or not."""
    ds = ct_dataset(study, series, patient_id=patient_id)
    ds.BodyPartExamined = body_part
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.StationName = station
    ds.InstitutionName = institution
    ds.ProtocolName = protocol
    ds.PerformedProcedureStepStartDate = "20240115"
    ds.PatientAge = patient_age  # stored at study level, no column
    ds.PatientWeight = "70.5"
    ds.NameOfPhysiciansReadingStudy = "Müller^Jörg"
    ds.SeriesDate = acquisition_date  # stored at series level, no column
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # instance level, multi-valued
    ds.SliceThickness = slice_thickness  # no level stores it: instance metadata
    ds.OperatorsName = operator
    ds.AcquisitionDate = acquisition_date
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", cohort)
    procedure = Dataset()
    procedure.CodeValue, procedure.CodingSchemeDesignator = "P-1", "LOCAL"
    ds.ProcedureCodeSequence = Sequence([procedure])  # stored at study level
    other, region = Dataset(), Dataset()
    other.CodeValue, region.CodeValue = "T-00000", code
    ds.AnatomicRegionSequence = Sequence([other, region])  # any item matches
    protocol_code = Dataset()
    protocol_code.CodeValue = f"PC-{body_part}"
    request = Dataset()
    request.RequestedProcedureID = "RP-AI"
    request.ScheduledProtocolCodeSequence = Sequence([protocol_code])
    ds.RequestAttributesSequence = Sequence([request])  # two sequences deep below
    return ds


@pytest.fixture
async def ai_cases(client: httpx.AsyncClient) -> dict[str, str]:
    """Three studies that differ in every attribute AI case selection uses."""
    chest = _ai_dataset(patient_id="AI-1")
    head = _ai_dataset(
        body_part="HEAD",
        manufacturer="Other Corp",
        model="Model S",
        station="MR-7",
        institution="City Clinic",
        protocol="Brain_MRI",
        patient_age="070Y",
        slice_thickness="5",
        cohort="cohort-B",
        code="T-A0100",
        operator="Doe^John^^^",
        acquisition_date="20230601",
        patient_id="AI-2",
    )
    plain = ct_dataset(patient_id="AI-3")  # none of them
    await _store(client, [chest, head, plain])
    return {
        "chest": chest.StudyInstanceUID,
        "head": head.StudyInstanceUID,
        "plain": plain.StudyInstanceUID,
        "chest_series": chest.SeriesInstanceUID,
        "head_series": head.SeriesInstanceUID,
    }


async def _found(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[str]:
    """Study UIDs of a search's rows, checking no key was left unmatched."""
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert "not supported for matching" not in response.headers.get("warning", ""), response.headers
    return sorted(row["0020000D"]["Value"][0] for row in response.json())


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("BodyPartExamined", "HEAD", ["head"]),
        ("ProtocolName", "Chest*", ["chest"]),
        ("Manufacturer", "ACME Medical", ["chest"]),
        ("ManufacturerModelName", "Model ?", ["head"]),
        ("StationName", "CT01", ["chest"]),
        ("InstitutionName", "*Clinic", ["head"]),
        ("SeriesDescription", "Axial", ["chest", "head", "plain"]),
        ("PerformedProcedureStepStartDate", "20240101-20240131", ["chest", "head"]),
        ("00180015", "CHEST", ["chest"]),  # by tag
    ],
)
async def test_issue15_qido_matches_each_indexed_series_key(  # type: ignore[no-untyped-def]
    client, ai_cases, key, value, expected
) -> None:
    assert await _found(client, "/series", {key: value}) == sorted(ai_cases[k] for k in expected)
    # Series keys also match at the instance level (PS3.18 10.6.1.2: levels above).
    assert await _found(client, "/instances", {key: value}) == sorted(ai_cases[k] for k in expected)


async def test_issue15_qido_matches_body_part_examined(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    rows = (await client.get("/series", params={"BodyPartExamined": "CHEST"})).json()
    assert [r["0020000E"]["Value"][0] for r in rows] == [ai_cases["chest_series"]]
    assert rows[0]["00180015"]["Value"] == ["CHEST"]
    assert rows[0]["00081090"]["Value"] == ["Scanner 9000"]  # a returned series attribute now


async def test_issue15_qido_matches_referring_physician_name(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    found = await _found(client, "/studies", {"ReferringPhysicianName": "Who"})
    assert found == sorted(ai_cases[k] for k in ("chest", "head", "plain"))


@pytest.mark.parametrize(
    ("path", "key", "value", "expected"),
    [
        ("/studies", "PatientAge", "070Y", ["head"]),  # study attributes, AS
        ("/studies", "PatientWeight", "70.50", ["chest", "head"]),  # DS, by value
        ("/studies", "NameOfPhysiciansReadingStudy", "Müller", ["chest", "head"]),  # PN
        ("/studies", "NameOfPhysiciansReadingStudy", "M?ller^*", ["chest", "head"]),
        ("/series", "SeriesDate", "20240101-", ["chest"]),  # series attributes, DA range
        ("/series", "SeriesDate", "-20231231", ["head"]),
        ("/instances", "ImageType", "AXIAL", ["chest", "head"]),  # any of several values
        ("/instances", "ImageType", "ORIGINAL\\DERIVED", ["chest", "head"]),  # CS list
        ("/instances", "SliceThickness", "1.25", ["chest"]),  # in metadata only, DS
        ("/series", "SliceThickness", "5", ["head"]),  # a series with such an instance
        ("/studies", "SliceThickness", "5.0", ["head"]),
        ("/studies", "OperatorsName", "Doe^John", ["head"]),  # PN, trailing ^ ignored
        ("/studies", "OperatorsName", "Operator", ["chest"]),  # family name component
        ("/studies", "OperatorsName", "*John", ["head"]),
        ("/studies", "AcquisitionDate", "20230101-20231231", ["head"]),
        ("/studies", "AcquisitionDate", "20240115", ["chest"]),
    ],
)
async def test_issue15_qido_matches_unindexed_attributes(  # type: ignore[no-untyped-def]
    client, ai_cases, path, key, value, expected
) -> None:
    assert await _found(client, path, {key: value}) == sorted(ai_cases[k] for k in expected)


async def test_issue15_qido_unindexed_person_name_fuzzy(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    params = {"NameOfPhysiciansReadingStudy": "muller^jorg", "fuzzymatching": "true"}
    assert await _found(client, "/studies", params) == sorted([ai_cases["chest"], ai_cases["head"]])
    params = {"OperatorsName": "doe*", "fuzzymatching": "true"}
    assert await _found(client, "/studies", params) == [ai_cases["head"]]
    assert await _found(client, "/studies", {"OperatorsName": "doe*"}) == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("00091001", "cohort-B", ["head"]),
        ("00091001", "cohort-*", ["chest", "head"]),
        ("00090010", "ACME 1.0", ["chest", "head"]),  # its private creator, matched as LO
    ],
)
async def test_issue15_qido_matches_private_tag(client, ai_cases, key, value, expected) -> None:  # type: ignore[no-untyped-def]
    assert await _found(client, "/studies", {key: value}) == sorted(ai_cases[k] for k in expected)
    assert await _found(client, "/instances", {"00090010": "ACME 1.0", key: value}) == sorted(
        ai_cases[k] for k in expected
    )


@pytest.mark.parametrize(
    ("path", "key", "value", "expected"),
    [
        ("/studies", "ProcedureCodeSequence.CodeValue", "P-1", ["chest", "head"]),  # stored
        ("/studies", "00081032.00080100", "P-2", []),
        ("/series", "AnatomicRegionSequence.CodeValue", "T-A0100", ["head"]),  # second item
        ("/studies", "AnatomicRegionSequence.CodeValue", "T-D*", ["chest"]),
        ("/instances", "AnatomicRegionSequence.CodeValue", "T-00000", ["chest", "head"]),
        (
            "/series",
            "RequestAttributesSequence.ScheduledProtocolCodeSequence.CodeValue",
            "PC-HEAD",
            ["head"],
        ),
        ("/series", "RequestAttributesSequence.RequestedProcedureID", "RP-AI", ["chest", "head"]),
    ],
)
async def test_issue15_qido_matches_sequence_items(  # type: ignore[no-untyped-def]
    client, ai_cases, path, key, value, expected
) -> None:
    assert await _found(client, path, {key: value}) == sorted(ai_cases[k] for k in expected)


async def test_issue15_qido_combines_indexed_and_unindexed_keys(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    params = {"PatientID": "AI-*", "PatientAge": "045Y", "SliceThickness": "1.25"}
    assert await _found(client, "/studies", params) == [ai_cases["chest"]]
    params = {"BodyPartExamined": "HEAD", "00091001": "cohort-A"}
    assert await _found(client, "/series", params) == []
    # Keys no level stores hold for one and the same instance of the study.
    params = {"SliceThickness": "5", "00091001": "cohort-A"}
    assert await _found(client, "/studies", params) == []


async def test_issue15_qido_unindexed_matching_values_are_just_values(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    for value in ("x' OR '1'='1", '"}]', "%", "\\", "cohort_A"):
        assert await _found(client, "/studies", {"00091001": value}) == []
        assert await _found(client, "/studies", {"OperatorsName": value}) == []


async def test_issue15_qido_paging_with_unindexed_filters_is_stable(  # type: ignore[no-untyped-def]
    client,
) -> None:
    wanted = [_ai_dataset(patient_id="PG-U", patient_age="033Y") for _ in range(5)]
    others = [_ai_dataset(patient_id="PG-U", patient_age="034Y") for _ in range(4)]
    await _store(client, [ds for pair in zip(wanted, others, strict=False) for ds in pair])
    await _store(client, wanted[4:])
    seen: list[str] = []
    for offset in range(0, 6, 2):
        response = await client.get(
            "/studies",
            params={"PatientAge": "033Y", "limit": "2", "offset": str(offset)},
        )
        seen += [r["0020000D"]["Value"][0] for r in response.json()]
        assert ("more results" in response.headers.get("warning", "")) == (
            offset == 0 or offset == 2
        )
    assert sorted(seen) == sorted(ds.StudyInstanceUID for ds in wanted)
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("path", "query", "why"),
    [
        ("/studies", "Modality=CT", "a series attribute"),  # lower level: use /series
        ("/studies", "NumberOfStudyRelatedInstances=3", "computed"),
        ("/instances", "PixelData=1", "binary"),
        ("/studies", "00100000=1", "not an attribute"),  # a group length
        ("/series", "RequestAttributesSequence=x", "items"),
        (
            "/studies",
            "ReferencedStudySequence.ReferencedSeriesSequence.ReferencedImageSequence"
            ".ReferencedSOPInstanceUID=1.2",
            "nested more than 2 deep",
        ),
    ],
)
async def test_issue15_qido_warning_remains_for_what_is_not_matched(  # type: ignore[no-untyped-def]
    client, ai_cases, path, query, why
) -> None:
    response = await client.get(f"{path}?{query}")
    assert response.status_code == 200
    assert "not supported for matching" in response.headers["warning"]
    assert why in response.headers["warning"]


async def test_issue15_qido_key_through_a_non_sequence_is_400(client, ai_cases) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/studies?PatientName.PatientID=1")
    assert response.status_code == 400
    assert "not a sequence" in response.json()["reason"]


async def test_issue15_qido_unindexed_search_survives_nul_in_stored_json(client) -> None:  # type: ignore[no-untyped-def]
    broken = _ai_dataset(patient_id="NUL", station="A\x00B", cohort="x\x00y")
    escaped = _ai_dataset(patient_id="NUL", cohort="ends\\u0000")  # a backslash, not a NUL
    fine = _ai_dataset(patient_id="NUL", cohort="cohort-NUL")
    await _store(client, [broken, escaped, fine])
    assert await _found(client, "/studies", {"00091001": "cohort-NUL"}) == [fine.StudyInstanceUID]
    assert await _found(client, "/studies", {"PatientID": "NUL", "PatientAge": "045Y"}) != []


async def test_issue15_qido_scan_budget_is_a_413(settings: Settings) -> None:
    """A search that only unindexed keys can answer stops at DICOMWEB_QIDO_SCAN_TIMEOUT."""
    application = create_app(settings.replace(qido_scan_timeout=0.000001))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            # Enough instances, each with a long text value, that no scan of their metadata
            # ends before the first check of the budget (SQLite: 1,000 VM steps, PostgreSQL:
            # statement_timeout of 1 ms).
            bulky = []
            for n in range(120):
                ds = _ai_dataset(patient_id=f"BUDGET-{n}")
                ds.ImageComments = "lorem ipsum " * 400
                bulky.append(ds)
            await _store(http, bulky)
            response = await http.get("/studies", params={"SliceThickness": "99"})
            assert response.status_code == 413, response.text
            reason = response.json()["reason"]
            assert "SliceThickness" in reason and "DICOMWEB_QIDO_SCAN_TIMEOUT" in reason
            # Indexed keys are never held to the budget; the index still answers.
            response = await http.get("/studies", params={"PatientID": "BUDGET-3"})
            assert response.status_code == 200 and len(response.json()) == 1
