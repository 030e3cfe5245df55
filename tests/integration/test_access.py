"""Access control over HTTP (issue 17): API keys and OIDC tokens against the real app, grants
per site, 401/403 with WWW-Authenticate, capabilities and preflights open, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from dicomfiles import ct_dataset, multipart_body, to_part10
from starlette.applications import Starlette
from test_authn import AUDIENCE, Idp

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.services.apikeys import ApiKeyService

BASE = "http://testserver/dicomweb"


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[Idp]:
    """A local identity provider (test_authn.py's) on a loopback port."""
    provider = Idp()
    server = TestServer(provider.app(), host="127.0.0.1")
    await server.start_server()
    provider.server = server
    provider.issuer = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()


@pytest_asyncio.fixture
async def secured(settings: Settings, idp: Idp) -> AsyncIterator[Starlette]:
    application = create_app(
        settings.replace(
            auth="oidc,apikey",
            oidc_issuer=idp.issuer,
            oidc_audience=AUDIENCE,
            oidc_grants_claim="realm_access.roles",
            oidc_grant_prefix="dicomweb:",
        )
    )
    async with application.router.lifespan_context(application):
        await application.state.dicomweb.sites.add_site("hospital-a")
        await application.state.dicomweb.sites.add_site("hospital-b")
        yield application


async def _key(app: Starlette, name: str, *grants: str) -> str:
    issued = await ApiKeyService(app.state.backends.index).create_api_key(name, grants)
    return issued.key


def _client(app: Starlette, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


async def _stow(client: httpx.AsyncClient, path: str = "") -> httpx.Response:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    return await client.post(
        f"{path}/studies", content=body, headers={"Content-Type": content_type}
    )


async def test_issue17_no_or_bad_credentials_are_401_with_a_challenge(secured: Starlette) -> None:
    async with _client(secured) as anonymous:
        response = await anonymous.get("/studies")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["reason"]
    async with _client(secured, "x") as bogus:
        response = await bogus.get("/sites/hospital-a/studies")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_issue17_capabilities_and_preflights_need_no_credentials(secured: Starlette) -> None:
    async with _client(secured) as anonymous:
        assert (await anonymous.options("")).status_code == 200
        assert (await anonymous.options("/sites/hospital-a/studies")).status_code == 200
        preflight = await anonymous.options(
            "/studies",
            headers={
                "Origin": "https://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in preflight.headers  # never with "*"
        refused = await anonymous.get("/studies", headers={"Origin": "https://viewer.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "*"  # the viewer can read it


async def test_issue17_api_key_grants_are_per_site_and_role(secured: Starlette) -> None:
    reader = await _key(secured, "reader-a", "hospital-a:read")
    writer = await _key(secured, "writer-a", "hospital-a:write")
    async with _client(secured, writer) as client:
        assert (await _stow(client, "/sites/hospital-a")).status_code == 200
        denied = await client.get("/sites/hospital-a/studies")
        assert denied.status_code == 403
        assert "hospital-a:read" in denied.json()["reason"]
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        assert (await _stow(client, "/sites/hospital-b")).status_code == 403
        assert (await _stow(client)).status_code == 403  # the root stores into default
    async with _client(secured, reader) as client:
        found = await client.get("/sites/hospital-a/studies")
        assert found.status_code == 200 and len(found.json()) == 1
        study = found.json()[0]["0020000D"]["Value"][0]
        wado = await client.get(f"/sites/hospital-a/studies/{study}/metadata")
        assert wado.status_code == 200
        assert (await client.get(f"/studies/{study}/metadata")).status_code == 200  # via root
        assert (await client.get("/sites/hospital-b/studies")).status_code == 403
        assert (await _stow(client, "/sites/hospital-a")).status_code == 403


async def test_issue17_revoked_and_expired_keys_are_401(secured: Starlette) -> None:
    service = ApiKeyService(secured.state.backends.index)
    issued = await service.create_api_key("soon-gone", ["*:read"])
    async with _client(secured, issued.key) as client:
        assert (await client.get("/sites/hospital-a/studies")).status_code == 200
    await service.revoke_api_key("soon-gone")
    secured.state.dicomweb.authenticator.api_keys._cache.clear()  # other processes: within 5 s
    async with _client(secured, issued.key) as client:
        response = await client.get("/sites/hospital-a/studies")
        assert response.status_code == 401
        assert "revoked" in response.json()["reason"]


async def test_issue17_keycloak_style_token_roles_are_grants(secured: Starlette, idp: Idp) -> None:
    token = idp.mint(
        claims={
            "realm_access": {
                "roles": ["offline_access", "dicomweb:hospital-a:read", "dicomweb:*:write"]
            }
        }
    )
    async with _client(secured, token) as client:
        assert (await _stow(client, "/sites/hospital-b")).status_code == 200
        assert (await client.get("/sites/hospital-a/studies")).status_code == 200
        assert (await client.get("/sites/hospital-b/studies")).status_code == 403
    expired = idp.mint(claims={"exp": 1000, "realm_access": {"roles": ["dicomweb:*:read"]}})
    async with _client(secured, expired) as client:
        assert (await client.get("/sites/hospital-a/studies")).status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_issue17_no_auth_is_refused_off_loopback_unless_insecure(host: str) -> None:
    from dicomweb_server.config import SettingsError

    with pytest.raises(SettingsError, match="--insecure-no-auth"):
        Settings(host=host).check()
    Settings(host=host, insecure_no_auth=True).check()
    Settings(host="127.0.0.1").check()
    Settings(host=host, auth="apikey").check()


async def test_issue17_the_audit_trail_needs_admin(secured: Starlette) -> None:
    site_admin = await _key(secured, "admin-a", "hospital-a:admin")
    everywhere = await _key(secured, "admin-all", "*:admin")
    reader = await _key(secured, "reader-all", "*:read")
    async with _client(secured, site_admin) as client:
        assert (await client.get("/sites/hospital-a/audit")).status_code == 200
        assert (await client.get("/sites/hospital-b/audit")).status_code == 403
        assert (await client.get("/audit")).status_code == 403  # every site's trail
    async with _client(secured, everywhere) as client:
        response = await client.get("/audit")
        assert response.status_code == 200
        assert response.json()["resourceType"] == "Bundle"
    async with _client(secured, reader) as client:
        assert (await client.get("/sites/hospital-a/audit")).status_code == 403


async def test_issue17_enterprise_root_search_covers_only_readable_sites(
    secured: Starlette,
) -> None:
    """At the root a search covers the sites the caller may read, never a 403 for the
    others; a caller who may read no site at all gets the 403 naming the grant."""
    admin = await _key(secured, "loader", "hospital-a:write", "hospital-b:write", "default:write")
    async with _client(secured, admin) as client:
        for path in ("/sites/hospital-a", "/sites/hospital-b", ""):
            assert (await _stow(client, path)).status_code == 200
    reader_a = await _key(secured, "reader-a-root", "hospital-a:read")
    reader_ab = await _key(secured, "reader-ab-root", "hospital-a:read", "hospital-b:read")
    writer = await _key(secured, "writer-only", "hospital-a:write")
    async with _client(secured, reader_a) as client:
        rows = (await client.get("/studies")).json()
        assert [row["00081190"]["Value"][0].split("/studies/")[0] for row in rows] == [
            f"{BASE}/sites/hospital-a"
        ]
    async with _client(secured, reader_ab) as client:
        rows = (await client.get("/studies")).json()
        assert sorted(row["00081190"]["Value"][0].split("/studies/")[0] for row in rows) == [
            f"{BASE}/sites/hospital-a",
            f"{BASE}/sites/hospital-b",
        ]
    async with _client(secured, writer) as client:
        denied = await client.get("/studies")
        assert denied.status_code == 403 and "default:read" in denied.json()["reason"]


async def test_issue20_change_feed_shows_only_readable_sites(secured: Starlette) -> None:
    loader = await _key(secured, "feed-loader", "hospital-a:write", "hospital-b:write")
    async with _client(secured, loader) as client:
        for path in ("/sites/hospital-a", "/sites/hospital-b"):
            assert (await _stow(client, path)).status_code == 200
    reader_a = await _key(secured, "feed-reader-a", "hospital-a:read")
    async with _client(secured, reader_a) as client:
        entries = (await client.get("/changefeed")).json()
        assert [entry["Site"] for entry in entries] == ["hospital-a"]
        uri = entries[0]["Metadata"]["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"{BASE}/sites/hospital-a/studies/")
        assert (await client.get("/changefeed/latest")).json()["Site"] == "hospital-a"
        assert (await client.get("/sites/hospital-b/changefeed")).status_code == 403
    async with _client(secured, loader) as client:
        denied = await client.get("/changefeed")  # may read no site at all
        assert denied.status_code == 403
