"""Retrieve Capabilities (PS3.18 8.9, Annex H) and conformance/STATEMENT.md agreeing with it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from dicomweb_server.config import Settings
from dicomweb_server.web.capabilities import WADL, describe, describe_routes
from dicomweb_server.web.routes import ROUTES

STATEMENT = Path(__file__).parents[2] / "conformance" / "STATEMENT.md"
WADL_NS = "{http://wadl.dev.java.net/2009/02}"


@pytest.fixture
def backend() -> str:
    """The description comes from the routes, not the backends: the embedded pair suffices."""
    return "embedded"


def _table(name: str) -> list[list[str]]:
    """The rows of the Markdown table that follows `<!-- table: name -->` in the statement."""
    lines = STATEMENT.read_text().splitlines()
    start = lines.index(f"<!-- table: {name} -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows[2:]  # header and separator


def _document() -> dict:  # type: ignore[type-arg]
    return describe(describe_routes(ROUTES), Settings())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def test_statement_lists_exactly_the_routed_transactions() -> None:
    expected = {
        (m["name"], r["path"], m["transaction"], m["section"])
        for r in _document()["resources"]
        for m in r["methods"]
    }
    stated = {(row[0], row[1], row[2], row[3]) for row in _table("resources")}
    assert stated == expected


def test_statement_lists_the_media_types_of_each_resource() -> None:
    """Issue 15: video and document media types are stated where the server produces them."""
    expected = {
        (m["name"], r["path"], ", ".join(m["produces"]))
        for r in _document()["resources"]
        for m in r["methods"]
    }
    stated = {
        (row[0], row[1], "" if row[5] == "-" else row[5].replace("`", ""))
        for row in _table("resources")
    }
    assert stated == expected


def test_statement_lists_the_status_codes_of_each_transaction() -> None:
    expected = {
        (m["transaction"], ", ".join(str(s) for s in m["statuses"]))
        for r in _document()["resources"]
        for m in r["methods"]
    }
    assert {(row[0], row[1]) for row in _table("statuses")} == expected


def test_statement_transfer_syntaxes_match_the_codec_registry() -> None:
    expected = {
        (
            s["uid"],
            _yes(s["store"]),
            _yes(s["retrieveAsStored"]),
            _yes(s["decodeFrames"]),
            _yes(s["transcodeTo"]),
        )
        for s in _document()["transferSyntaxes"]
    }
    stated = {(row[0], row[2], row[3], row[4], row[5]) for row in _table("transfer-syntaxes")}
    assert stated == expected


def test_statement_query_keys_match_the_query_parser() -> None:
    expected = {
        (
            k["keyword"],
            k["tag"],
            k["level"],
            k["vr"],
            ", ".join(k["matching"]),
            _yes(k["indexed"]),
        )
        for k in _document()["queryKeys"]
    }
    assert {tuple(row[:6]) for row in _table("query-keys")} == expected


def test_issue15_capabilities_say_any_attribute_is_matched_unindexed() -> None:
    document = describe(describe_routes(ROUTES), Settings(qido_scan_timeout=2.5))
    indexed = {k["keyword"] for k in document["queryKeys"] if k["indexed"]}
    assert {"BodyPartExamined", "Manufacturer", "StationName", "InstitutionName"} <= indexed
    assert {"ManufacturerModelName", "ProtocolName", "ReferringPhysicianName"} <= indexed
    assert {"PatientAge", "SeriesDate"} <= {
        k["keyword"] for k in document["queryKeys"] if not k["indexed"]
    }
    anything = document["anyAttribute"]
    assert (anything["matched"], anything["indexed"], anything["scanTimeout"]) == (
        True,
        False,
        2.5,
    )
    assert anything["maxSequenceDepth"] == 2 and anything["scanTimeoutStatus"] == 413
    search = next(r for r in document["resources"] if r["path"] == "/studies")
    (get,) = (m for m in search["methods"] if m["name"] == "GET")
    assert 413 in get["statuses"]


async def test_issue15_wadl_describes_matching_keys_where_query_parameters_are(
    client: httpx.AsyncClient,
) -> None:
    root = ET.fromstring((await client.options("/studies")).content)
    params = root.findall(f".//{WADL_NS}param[@name='{{attributeID}}']")
    assert params
    text = params[0].findtext(f"{WADL_NS}doc") or ""
    assert "BodyPartExamined" in text and "matched unindexed" in text
    ours = "{urn:dicomweb-server:capabilities}"
    assert root.find(f".//{ours}anyAttribute") is not None
    key = root.find(f".//{ours}queryKey[@keyword='PatientAge']")
    assert key is not None and key.get("indexed") == "false"


def test_statement_limits_match_the_settings_defaults() -> None:
    expected = {(name, str(value)) for name, value in _document()["limits"].items()}
    assert {(row[0], row[1].replace(",", "")) for row in _table("limits")} == expected


def test_every_route_handler_is_described() -> None:
    resources = describe_routes(ROUTES)
    routed = {(r.path, m) for r in resources for m in r.operations}
    assert ("/studies", "POST") in routed and ("/studies", "GET") in routed
    assert len(routed) == 33  # 24 PS3.18, DELETE and reject (18), audit (17), change feed (20)


async def test_options_on_the_root_is_wadl_by_default(client: httpx.AsyncClient) -> None:
    """PS3.18 8.9: OPTIONS on the base URI; Annex H: one application, one resources."""
    response = await client.options("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == WADL
    root = ET.fromstring(response.content)
    assert root.tag == f"{WADL_NS}application"
    resources = root.findall(f"{WADL_NS}resources")
    assert len(resources) == 1
    assert resources[0].get("base") == "http://testserver/dicomweb/"
    studies = resources[0].find(f"{WADL_NS}resource[@path='studies']")
    assert studies is not None
    assert {m.get("name") for m in studies.findall(f"{WADL_NS}method")} == {"GET", "POST"}


async def test_options_without_the_trailing_slash_is_answered_not_redirected(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options("http://testserver/dicomweb")
    assert response.status_code == 200
    assert response.headers["content-type"] == WADL


async def test_options_json_form_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.options("/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["base"] == "http://testserver/dicomweb"
    assert any(s["uid"] == "1.2.840.10008.1.2.1" for s in document["transferSyntaxes"])


async def test_options_on_a_resource_describes_it_and_its_children(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options(
        "/studies/1.2.3/series/4.5/instances/6.7", headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    assert response.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"  # DELETE: issue 18
    paths = {r["path"] for r in response.json()["resources"]}
    assert "/studies/{study}/series/{series}/instances/{instance}/metadata" in paths
    assert "/studies" not in paths


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/studies", "GET, HEAD, OPTIONS, POST"),
        ("/studies/1.2", "DELETE, GET, HEAD, OPTIONS, POST"),
        ("/series", "GET, HEAD, OPTIONS"),
        ("/studies/1.2/series/3.4/instances/5.6/frames/1", "GET, HEAD, OPTIONS"),
        ("/studies/1.2/series/3.4/instances/5.6/bulkdata/00091010/0", "GET, HEAD, OPTIONS"),
    ],
)
async def test_every_resource_has_an_allow_header(
    client: httpx.AsyncClient, path: str, allow: str
) -> None:
    options = await client.options(path)
    assert options.status_code == 200
    assert options.headers["allow"] == allow
    refused = await client.request("PUT", path)  # DELETE is routed now (issue 18)
    assert refused.status_code == 405
    assert refused.headers["allow"] == allow
    assert refused.json()["reason"]


async def test_options_with_an_unproducible_accept_is_406(client: httpx.AsyncClient) -> None:
    response = await client.options("/", headers={"Accept": "image/png"})
    assert response.status_code == 406


def test_wadl_matches_the_pattern_of_the_statement() -> None:
    text = STATEMENT.read_text()
    assert re.search(r"application/vnd\.sun\.wadl\+xml", text)


async def test_8_9_frames_and_bulk_data_list_every_media_type_they_serve(
    client: httpx.AsyncClient,
) -> None:
    """What a client is told it may ask for is what it gets: every frame media type the codec
    registry can produce, and bulk data's stored compressed types (issue: only octet-stream
    was listed while image/jpeg, image/jls, image/jp2 and image/dicom-rle were served)."""
    from dicomfiles import ct_dataset, parse_multipart, to_part10, uid
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from test_wado import _store

    from dicomweb_server.codecs.media_types import FRAME_MEDIA_TYPES
    from dicomweb_server.codecs.registry import can_encode

    ds = ct_dataset(uid(), uid(), instance_number=1, seed=1, frames=1)
    rle_path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    rle = dcmread(rle_path)
    with open(rle_path, "rb") as handle:
        await _store(client, [to_part10(ds), handle.read()])
    document = (await client.options("/", headers={"Accept": "application/json"})).json()
    wadl = ET.fromstring((await client.options("/")).content)

    def listed(suffix: str) -> set[str]:
        (resource,) = (r for r in document["resources"] if r["path"].endswith(suffix))
        (get,) = (m for m in resource["methods"] if m["name"] == "GET")
        options = {
            o.get("value")
            for r in wadl.iter(f"{WADL_NS}resource")
            if r.get("path") == suffix.rsplit("/", 1)[-1]
            for o in r.findall(f"{WADL_NS}method/{WADL_NS}request/{WADL_NS}param/{WADL_NS}option")
        }
        assert set(get["produces"]) <= options, suffix
        return set(get["produces"])

    frames = listed("/frames/{frames}")
    served = set()
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for media, syntaxes in FRAME_MEDIA_TYPES.items():
        for syntax in filter(can_encode, syntaxes):
            accept = f'multipart/related; type="{media}"; transfer-syntax={syntax}'
            response = await client.get(f"{url}/frames/1", headers={"Accept": accept})
            if response.status_code == 200:  # a codec may refuse 16-bit CT: that is a 406
                served.add(f'multipart/related; type="{media}"')
    assert {'multipart/related; type="image/jpeg"', 'multipart/related; type="image/jp2"'} <= served
    assert served <= frames
    bulk = await client.get(
        f"/studies/{rle.StudyInstanceUID}/series/{rle.SeriesInstanceUID}"
        f"/instances/{rle.SOPInstanceUID}/bulkdata/7FE00010"
    )
    (part, _), *_ = parse_multipart(bulk.content, bulk.headers["content-type"])
    part_type = part["content-type"].split(";")[0]
    assert f'multipart/related; type="{part_type}"' in listed("/bulkdata/{path}")
