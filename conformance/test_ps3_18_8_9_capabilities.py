"""PS3.18 8.9 Retrieve Capabilities and Annex H Capabilities Description."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx

WADL_NS = "{http://wadl.dev.java.net/2009/02}"


def test_8_9_options_on_the_base_uri_returns_wadl(http: httpx.Client, base_url: str) -> None:
    """8.9.1.1: the target is the base URI; Annex H: a WADL document is the default."""
    response = http.options(base_url, headers={"Accept": "application/vnd.sun.wadl+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    root = ET.fromstring(response.content)
    assert root.tag == f"{WADL_NS}application"


def test_annex_h_one_resources_element_with_the_base_url(http: httpx.Client, base_url: str) -> None:
    """Annex H: one "resources" element whose "base" is the service's base URL."""
    root = ET.fromstring(http.options(base_url).content)
    resources = root.findall(f"{WADL_NS}resources")
    assert len(resources) == 1
    assert resources[0].get("base", "").rstrip("/").endswith(base_url.split("://", 1)[1])


def test_annex_h_studies_resource_has_search_and_store(http: httpx.Client, base_url: str) -> None:
    """Annex H Table H-1: `studies` carries Search for Studies (GET) and Store (POST)."""
    root = ET.fromstring(http.options(base_url).content)
    studies = root.find(f"{WADL_NS}resources/{WADL_NS}resource[@path='studies']")
    assert studies is not None
    methods = {m.get("name") for m in studies.findall(f"{WADL_NS}method")}
    assert {"GET", "POST"} <= methods


def test_8_9_options_on_a_resource_lists_its_methods(http: httpx.Client) -> None:
    """8.9 and RFC 9110 9.3.7: OPTIONS on a resource names the methods it allows."""
    response = http.options("studies")
    assert response.status_code == 200
    allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
    assert {"GET", "POST"} <= allowed
