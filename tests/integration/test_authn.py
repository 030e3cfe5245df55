"""Authentication (issue 17): OIDC tokens against a local IdP, API keys, and every refusal a 401.

The identity provider is ours: an aiohttp server on a loopback port serving a discovery document
and a JWKS of keys minted here (RSA, EC P-256, RSA for PSS). No outside IdP is contacted.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dicomweb_server.config import Settings, SettingsError
from dicomweb_server.domain.grants import ALL_SITES, EVERY_GRANT, Grant, Role
from dicomweb_server.errors import (
    BackendUnavailableError,
    ConflictError,
    ForbiddenError,
    InvalidNameError,
    NotFoundError,
    UnauthorizedError,
)
from dicomweb_server.index.api_keys import ApiKeyRecord, ApiKeyStore
from dicomweb_server.services import apikeys as apikeys_module
from dicomweb_server.services.apikeys import ApiKeyService, hash_api_key
from dicomweb_server.services.authn import ANONYMOUS, Authenticator
from dicomweb_server.services.oidc import OidcVerifier

AUDIENCE = "dicomweb"
REFRESH = 30.0  # the verifiers' minimum interval between JWKS fetches in these tests


# --- keys and the local identity provider ------------------------------------------------------


@cache
def _rsa(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    """An RSA key, the same for the same arguments (`n` tells keys of one size apart)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def _ec(curve_name: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[curve_name]
    return ec.generate_private_key(curve)


def _jwk(private: Any, kid: str, alg: str | None) -> dict[str, Any]:
    public = private.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    jwk.update(kid=kid, use="sig")
    if alg:
        jwk["alg"] = alg
    return jwk


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Idp:
    """A local identity provider: discovery, a JWKS we can change, and token minting."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "rsa-1": _rsa(2048, 1),
            "ec-1": _ec("P-256"),
            "pss-1": _rsa(2048, 2),
            "ec-2": _ec("P-384"),
        }
        # PS256's key is published without an alg to exercise keys that name none
        self.published = [_jwk(self.private["rsa-1"], "rsa-1", "RS256"),
                          _jwk(self.private["ec-1"], "ec-1", "ES256"),
                          _jwk(self.private["pss-1"], "pss-1", None),
                          _jwk(self.private["ec-2"], "ec-2", None)]  # fmt: skip
        self.jwks_hits = 0
        self.discovery_hits = 0
        self.discovery_issuer: str | None = None  # None: the real one
        self.jwks_uri: str | None = None  # None: the real one
        self.server: TestServer | None = None
        self.issuer = ""

    def publish(self, private: Any, kid: str, alg: str | None) -> None:
        self.private[kid] = private
        self.published.append(_jwk(private, kid, alg))

    def withdraw(self, kid: str) -> None:
        self.published = [jwk for jwk in self.published if jwk["kid"] != kid]

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        return web.json_response(
            {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.jwks_uri or f"{self.issuer}/protocol/openid-connect/certs",
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": self.published})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/protocol/openid-connect/certs", self._jwks)
        return app

    def mint(
        self,
        kid: str | None = "rsa-1",
        alg: str = "RS256",
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        key: Any = None,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "preferred_username": "alice",
            "dicomweb_grants": ["hospital-a:read", "*:write"],
        }
        payload.update(claims or {})
        for name in drop:
            del payload[name]
        signing_key = key if key is not None else self.private[kid or "rsa-1"]
        headers = {"kid": kid} if kid is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns when asked to sign with a short key
            return jwt.encode(payload, signing_key, algorithm=alg, headers=headers)


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = Idp()
    server = TestServer(provider.app(), host="127.0.0.1")
    await server.start_server()
    provider.server = server
    provider.issuer = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def verifier(idp: Idp, clock: Clock) -> AsyncIterator[OidcVerifier]:
    oidc = OidcVerifier(
        issuer=idp.issuer, audience=AUDIENCE, min_refresh_seconds=REFRESH, clock=clock
    )
    yield oidc
    await oidc.aclose()


@pytest_asyncio.fixture
async def authenticator(verifier: OidcVerifier, store: MemoryApiKeyStore) -> Authenticator:
    return Authenticator(oidc=verifier, api_keys=ApiKeyService(store), max_token_bytes=8192)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    return head + "." + _b64(signature)


async def _refused(authenticator: Authenticator, header: str | None) -> UnauthorizedError:
    with pytest.raises(UnauthorizedError) as caught:
        await authenticator.authenticate(header)
    assert caught.value.status == 401
    return caught.value


# --- OIDC: accepted tokens ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "alg"), [("rsa-1", "RS256"), ("ec-1", "ES256"), ("pss-1", "PS256")]
)
async def test_issue17_rs256_es256_ps256_tokens_are_accepted(
    idp: Idp, authenticator: Authenticator, kid: str, alg: str
) -> None:
    principal = await authenticator.authenticate("Bearer " + idp.mint(kid, alg))
    assert principal.kind == "oidc"
    assert principal.subject == "user-1"
    assert principal.display_name == "alice"
    assert principal.grants == {Grant("hospital-a", Role.READ), Grant(ALL_SITES, Role.WRITE)}
    assert principal.allows("hospital-a", Role.READ)
    assert not principal.allows("hospital-b", Role.READ)
    assert principal.allows("hospital-b", Role.WRITE)


async def test_issue17_discovery_and_jwks_are_fetched_once(
    idp: Idp, authenticator: Authenticator
) -> None:
    for kid, alg in [("rsa-1", "RS256"), ("ec-1", "ES256"), ("rsa-1", "RS256")]:
        await authenticator.authenticate("Bearer " + idp.mint(kid, alg))
    assert (idp.discovery_hits, idp.jwks_hits) == (1, 1)


async def test_issue17_configured_jwks_url_skips_discovery(idp: Idp, clock: Clock) -> None:
    oidc = OidcVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        jwks_url=f"{idp.issuer}/protocol/openid-connect/certs",
        clock=clock,
    )
    try:
        assert (await oidc.verify(idp.mint())).subject == "user-1"
    finally:
        await oidc.aclose()
    assert (idp.discovery_hits, idp.jwks_hits) == (0, 1)


async def test_issue17_leeway_tolerates_small_clock_skew(
    idp: Idp, authenticator: Authenticator
) -> None:
    now = int(time.time())
    skewed = idp.mint(claims={"exp": now - 30, "nbf": now + 30, "iat": now + 30})
    assert (await authenticator.authenticate("Bearer " + skewed)).subject == "user-1"


async def test_issue17_audience_may_be_a_list(idp: Idp, authenticator: Authenticator) -> None:
    token = idp.mint(claims={"aud": ["account", AUDIENCE]})
    assert (await authenticator.authenticate("Bearer " + token)).subject == "user-1"


async def test_issue17_token_without_kid_uses_the_only_key(idp: Idp, clock: Clock) -> None:
    idp.published = idp.published[:1]
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, clock=clock)
    try:
        assert (await oidc.verify(idp.mint(kid=None))).subject == "user-1"
    finally:
        await oidc.aclose()


# --- OIDC: every bad token is a 401 with its reason ---------------------------------------------


def _now() -> int:
    return int(time.time())


BAD_TOKENS: list[tuple[str, Callable[[Idp], str], str]] = [
    ("malformed", lambda idp: "not-a-jwt", "malformed"),
    ("malformed_parts", lambda idp: "a.b.c", "malformed"),
    ("expired", lambda idp: idp.mint(claims={"exp": _now() - 120}), "expired"),
    ("not_yet_valid", lambda idp: idp.mint(claims={"nbf": _now() + 300}), "not valid yet"),
    ("issued_in_future", lambda idp: idp.mint(claims={"iat": _now() + 300}), "not valid yet"),
    ("wrong_issuer", lambda idp: idp.mint(claims={"iss": "https://evil.example"}), "issuer"),
    ("issuer_substring", lambda idp: idp.mint(claims={"iss": idp.issuer[7:]}), "issuer"),
    ("issuer_with_slash", lambda idp: idp.mint(claims={"iss": idp.issuer + "/"}), "issuer"),
    ("wrong_audience", lambda idp: idp.mint(claims={"aud": "other-app"}), "aud"),
    ("audience_substring", lambda idp: idp.mint(claims={"aud": AUDIENCE[:-1]}), "aud"),
    ("no_audience", lambda idp: idp.mint(drop=("aud",)), "no aud claim"),
    ("no_expiry", lambda idp: idp.mint(drop=("exp",)), "no exp claim"),
    ("no_subject", lambda idp: idp.mint(drop=("sub",)), "no sub claim"),
    ("empty_subject", lambda idp: idp.mint(claims={"sub": ""}), "sub"),
    ("unknown_kid", lambda idp: idp.mint(kid="nobody", key=_rsa(2048, 1)), "kid"),
    ("kid_not_a_string", lambda idp: _unsigned({"alg": "RS256", "kid": 7}, {"sub": "x"}, b"sig"), "malformed"),
    ("no_kid_among_several", lambda idp: idp.mint(kid=None), "no kid"),
    ("rs256_claiming_an_es256_key", lambda idp: idp.mint(kid="ec-1", key=_rsa(2048, 1)), "not the one its key is for"),
    ("rs256_claiming_an_ec_key", lambda idp: idp.mint(kid="ec-2", key=_rsa(2048, 1)), "does not fit"),
    ("es256_claiming_an_rsa_key", lambda idp: idp.mint(kid="pss-1", alg="ES256", key=_ec()), "does not fit"),
    ("es256_claiming_a_p384_key", lambda idp: idp.mint(kid="ec-2", alg="ES256", key=_ec()), "does not fit"),
    ("es256_on_p384", lambda idp: idp.mint(kid="rsa-1", alg="ES384", key=_ec("P-384")), "not accepted"),
    ("ps256_on_an_rs256_key", lambda idp: idp.mint(kid="rsa-1", alg="PS256"), "not the one its key is for"),
    ("signed_by_another_key", lambda idp: idp.mint(kid="rsa-1", key=_rsa(2048, 2)), "signature"),
    ("alg_none", lambda idp: _unsigned({"alg": "none", "kid": "rsa-1"}, {"sub": "x"}), "'none' is not accepted"),
    ("alg_missing", lambda idp: _unsigned({"kid": "rsa-1"}, {"sub": "x"}), "algorithm"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in BAD_TOKENS], ids=[c[0] for c in BAD_TOKENS]
)
async def test_issue17_bad_tokens_are_refused_with_a_reason(
    idp: Idp, authenticator: Authenticator, make: Callable[[Idp], str], reason: str
) -> None:
    error = await _refused(authenticator, "Bearer " + make(idp))
    assert reason in error.reason
    assert error.error == "invalid_token"
    assert error.challenge.startswith('Bearer error="invalid_token", error_description="')


async def test_issue17_alg_none_is_refused(idp: Idp, authenticator: Authenticator) -> None:
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "mallory", "exp": _now() + 300}
    for alg in ("none", "None", "NONE"):
        error = await _refused(authenticator, "Bearer " + _unsigned({"alg": alg}, claims))
        assert "is not accepted" in error.reason


async def test_issue17_hs256_signed_with_the_public_key_is_refused(
    idp: Idp, authenticator: Authenticator
) -> None:
    """Algorithm confusion: the IdP's public key (PEM or JWK) used as an HMAC secret."""
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "mallory", "exp": _now() + 300}
    public = idp.private["rsa-1"].public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(idp.published[0]).encode()):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            unsigned = _unsigned({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, claims)
            head = unsigned.rsplit(".", 1)[0]
            token = head + "." + _b64(hmac.new(secret, head.encode(), digest).digest())
            error = await _refused(authenticator, "Bearer " + token)
            assert f"'{alg}' is not accepted" in error.reason
    assert idp.jwks_hits == 0  # refused before any key was looked at


async def test_issue17_tampered_payload_is_refused(idp: Idp, authenticator: Authenticator) -> None:
    head, payload, signature = idp.mint().split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["dicomweb_grants"] = ["*:admin"]
    token = f"{head}.{_b64(json.dumps(forged).encode())}.{signature}"
    error = await _refused(authenticator, "Bearer " + token)
    assert "signature does not verify" in error.reason


async def test_issue17_short_rsa_key_is_refused(idp: Idp, authenticator: Authenticator) -> None:
    idp.publish(_rsa(1024), "short-1", "RS256")
    error = await _refused(authenticator, "Bearer " + idp.mint("short-1"))
    assert "shorter than 2048 bits" in error.reason


async def test_issue17_algorithms_setting_narrows_what_is_accepted(idp: Idp, clock: Clock) -> None:
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, algorithms=["ES256"], clock=clock)
    try:
        assert (await oidc.verify(idp.mint("ec-1", "ES256"))).subject == "user-1"
        with pytest.raises(UnauthorizedError, match="'RS256' is not accepted"):
            await oidc.verify(idp.mint())
    finally:
        await oidc.aclose()


async def test_issue17_es384_when_configured(idp: Idp, clock: Clock) -> None:
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, algorithms=["ES384"], clock=clock)
    try:
        assert (await oidc.verify(idp.mint("ec-2", "ES384"))).subject == "user-1"
        with pytest.raises(UnauthorizedError, match="'ES256' is not accepted"):
            await oidc.verify(idp.mint("ec-1", "ES256"))
    finally:
        await oidc.aclose()


def test_issue17_symmetric_algorithms_cannot_be_configured() -> None:
    for algorithms in (["HS256"], ["RS256", "none"], []):
        with pytest.raises(ValueError, match="asymmetric"):
            OidcVerifier(issuer="https://idp", audience=AUDIENCE, algorithms=algorithms)
    with pytest.raises(ValueError, match="issuer and an audience"):
        OidcVerifier(issuer="", audience=AUDIENCE)
    for value in ("HS256", "RS256,HS384", "none", ""):
        with pytest.raises(SettingsError, match="DICOMWEB_OIDC_ALGORITHMS"):
            Settings.from_env(oidc_algorithms=value)


# --- malformed Authorization headers and the size limit ----------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Basic dXNlcjpwYXNz", "only Bearer"),
        ("Bearer", "malformed"),
        ("Bearer ", "malformed"),
        ("Bearer a b", "malformed"),
        ('Bearer ab"c', "malformed"),
        ("Bearer tökén", "malformed"),
        ("Token abc", "only Bearer"),
    ],
)
async def test_issue17_malformed_header_is_invalid_request(
    authenticator: Authenticator, header: str, reason: str
) -> None:
    error = await _refused(authenticator, header)
    assert reason in error.reason
    assert error.error == "invalid_request"


async def test_issue17_no_credentials_is_a_bare_challenge(authenticator: Authenticator) -> None:
    for header in (None, "", "   "):
        error = await _refused(authenticator, header)
        assert error.error is None
        assert error.challenge == "Bearer"
        assert "authentication required" in error.reason


async def test_issue17_16kb_token_is_refused_unread(idp: Idp, authenticator: Authenticator) -> None:
    token = idp.mint(claims={"padding": "x" * 16_000})
    assert len(token) > 16_000
    error = await _refused(authenticator, "Bearer " + token)
    assert "longer than 8192 bytes" in error.reason
    assert error.error == "invalid_request"
    just_over = await _refused(authenticator, "Bearer " + "a" * 8193)
    assert "longer than 8192 bytes" in just_over.reason
    huge = await _refused(authenticator, "Bearer " + "a" * 1_000_000)
    assert "longer than 8192 bytes" in huge.reason
    assert idp.jwks_hits == 0
    # Under the limit, a large token is read as usual
    await authenticator.authenticate("Bearer " + idp.mint(claims={"pad": "x" * 5000}))


async def test_issue17_scheme_is_case_insensitive(idp: Idp, authenticator: Authenticator) -> None:
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert (await authenticator.authenticate(f"{scheme} {idp.mint()}")).kind == "oidc"


# --- JWKS: rotation, refresh rate limit, age, outages ------------------------------------------


async def test_issue17_key_rotation_refreshes_once(
    idp: Idp, authenticator: Authenticator, clock: Clock
) -> None:
    await authenticator.authenticate("Bearer " + idp.mint())
    assert idp.jwks_hits == 1
    clock.now += REFRESH  # the last fetch is old enough to allow another
    idp.publish(_rsa(2048, 3), "rsa-2", "RS256")
    idp.withdraw("rsa-1")
    tokens = [idp.mint("rsa-2") for _ in range(20)]
    principals = await asyncio.gather(*(authenticator.authenticate("Bearer " + t) for t in tokens))
    assert {p.subject for p in principals} == {"user-1"}
    assert idp.jwks_hits == 2  # twenty concurrent callers, one refresh


async def test_issue17_unknown_kid_flood_refreshes_at_most_once_per_interval(
    idp: Idp, authenticator: Authenticator, clock: Clock
) -> None:
    await authenticator.authenticate("Bearer " + idp.mint())
    clock.now += REFRESH
    forged = [idp.mint(kid=secrets.token_hex(8), key=_rsa(2048, 1)) for _ in range(200)]
    results = await asyncio.gather(
        *(authenticator.authenticate("Bearer " + t) for t in forged), return_exceptions=True
    )
    assert all(isinstance(r, UnauthorizedError) and "kid" in r.reason for r in results)
    assert idp.jwks_hits == 2
    clock.now += REFRESH / 2
    for token in forged[:50]:
        await _refused(authenticator, "Bearer " + token)
    assert idp.jwks_hits == 2
    clock.now += REFRESH / 2
    for token in forged[:50]:
        await _refused(authenticator, "Bearer " + token)
    assert idp.jwks_hits == 3


async def test_issue17_old_key_set_is_refetched_and_withdrawn_keys_stop_working(
    idp: Idp, clock: Clock
) -> None:
    oidc = OidcVerifier(
        issuer=idp.issuer, audience=AUDIENCE, max_age_seconds=600, min_refresh_seconds=REFRESH,
        clock=clock,
    )  # fmt: skip
    try:
        await oidc.verify(idp.mint())
        idp.withdraw("rsa-1")
        clock.now += 599
        await oidc.verify(idp.mint())  # still cached
        clock.now += 1
        with pytest.raises(UnauthorizedError, match="kid"):
            await oidc.verify(idp.mint())
        assert idp.jwks_hits == 2
    finally:
        await oidc.aclose()


async def test_issue17_cached_keys_survive_an_idp_outage(
    idp: Idp, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, max_age_seconds=60, clock=clock)
    try:
        token = idp.mint()
        await oidc.verify(token)
        assert idp.server is not None
        await idp.server.close()
        clock.now += 120
        with caplog.at_level(logging.WARNING, "dicomweb_server.auth"):
            assert (await oidc.verify(token)).subject == "user-1"
        assert "identity provider keys not fetched" in caplog.text
    finally:
        await oidc.aclose()


async def test_issue17_unreachable_idp_is_503_not_500(clock: Clock) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    issuer = f"http://127.0.0.1:{closed.getsockname()[1]}"
    oidc = OidcVerifier(issuer=issuer, audience=AUDIENCE, fetch_timeout_seconds=2, clock=clock)
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            await oidc.verify(jwt.encode({"sub": "x"}, _rsa(2048, 1), "RS256", {"kid": "k"}))
        assert caught.value.status == 503
        assert oidc.fetches == 1
        with pytest.raises(BackendUnavailableError):  # within the interval: not tried again
            await oidc.verify(jwt.encode({"sub": "x"}, _rsa(2048, 1), "RS256", {"kid": "k"}))
        assert oidc.fetches == 1
    finally:
        await oidc.aclose()
        closed.close()


@pytest.mark.parametrize(
    "trouble",
    [
        "wrong_issuer",
        "no_jwks_uri",
        "jwks_not_json",
        "jwks_without_keys",
        "jwks_404",
        "jwks_too_big",
    ],
)
async def test_issue17_bad_idp_documents_are_503(idp: Idp, clock: Clock, trouble: str) -> None:
    jwks_url = f"{idp.issuer}/protocol/openid-connect/certs"
    app = web.Application()
    bodies = {
        "jwks_not_json": web.Response(text="<html>"),
        "jwks_without_keys": web.json_response({"keys": "none"}),
        "jwks_404": web.Response(status=404),
        "jwks_too_big": web.Response(body=b"[" + b"0," * (1 << 20) + b"0]"),
    }
    discovery = trouble in ("wrong_issuer", "no_jwks_uri")
    if trouble == "wrong_issuer":
        idp.discovery_issuer = "https://elsewhere.example"
    elif trouble == "no_jwks_uri":
        idp.jwks_uri = "file:///etc/passwd"
    else:

        async def answer(request: web.Request) -> web.Response:
            return bodies[trouble]

        app.router.add_get("/jwks", answer)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        jwks_url = str(server.make_url("/jwks"))
    oidc = OidcVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        jwks_url="" if discovery else jwks_url,
        clock=clock,
    )
    try:
        with pytest.raises(BackendUnavailableError):
            await oidc.verify(idp.mint())
    finally:
        await oidc.aclose()
        if not discovery:
            await server.close()
    assert idp.jwks_hits == 0


async def test_issue17_unusable_jwks_entries_are_skipped(idp: Idp, clock: Clock) -> None:
    idp.published = [
        "not an object",
        {"kty": "oct", "kid": "secret", "k": _b64(b"0" * 32)},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {"kty": "RSA", "kid": 5},
        {**_jwk(idp.private["rsa-1"], "enc-1", None), "use": "enc"},
        *idp.published,
    ]
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, clock=clock)
    try:
        assert (await oidc.verify(idp.mint())).subject == "user-1"
        with pytest.raises(UnauthorizedError, match="kid"):
            await oidc.verify(idp.mint(kid="enc-1", key=idp.private["rsa-1"]))
    finally:
        await oidc.aclose()


# --- grants from claims (Keycloak) -------------------------------------------------------------


async def _grants(
    idp: Idp, clock: Clock, claims: dict[str, Any], **options: Any
) -> frozenset[Grant]:
    oidc = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, clock=clock, **options)
    try:
        return (await oidc.verify(idp.mint(claims=claims, drop=("dicomweb_grants",)))).grants
    finally:
        await oidc.aclose()


async def test_issue17_keycloak_realm_roles_with_a_prefix(idp: Idp, clock: Clock) -> None:
    claims = {
        "realm_access": {
            "roles": [
                "offline_access",
                "uma_authorization",
                "default-roles-hospital",
                "dicomweb:hospital-a:read",
                "dicomweb:hospital-a:write",
                "dicomweb:*:admin",
                "dicomweb:not-a-grant",
                "hospital-b:read",
                {"nested": "ignored"},
            ]
        }
    }
    grants = await _grants(
        idp, clock, claims, grants_claim="realm_access.roles", grant_prefix="dicomweb:"
    )
    assert grants == {
        Grant("hospital-a", Role.READ),
        Grant("hospital-a", Role.WRITE),
        Grant(ALL_SITES, Role.ADMIN),
    }


async def test_issue17_keycloak_client_roles_path(idp: Idp, clock: Clock) -> None:
    claims = {"resource_access": {"dicomweb": {"roles": ["hospital-a:delete", "manage"]}}}
    grants = await _grants(idp, clock, claims, grants_claim="resource_access.dicomweb.roles")
    assert grants == {Grant("hospital-a", Role.DELETE)}


async def test_issue17_grants_as_a_space_separated_string(idp: Idp, clock: Clock) -> None:
    claims = {"scope": "openid profile dicomweb:a:read dicomweb:b:write"}
    grants = await _grants(idp, clock, claims, grants_claim="scope", grant_prefix="dicomweb:")
    assert grants == {Grant("a", Role.READ), Grant("b", Role.WRITE)}


async def test_issue17_dotted_top_level_claim_names_work(idp: Idp, clock: Clock) -> None:
    claims = {"https://dicomweb.example/grants": ["a:read"]}
    grants = await _grants(idp, clock, claims, grants_claim="https://dicomweb.example/grants")
    assert grants == {Grant("a", Role.READ)}


@pytest.mark.parametrize(
    "claims",
    [{}, {"dicomweb_grants": 5}, {"dicomweb_grants": {"a": "read"}}, {"realm_access": "roles"}],
)
async def test_issue17_missing_or_odd_grants_claim_means_no_grants(
    idp: Idp, clock: Clock, claims: dict[str, Any]
) -> None:
    assert await _grants(idp, clock, claims) == frozenset()
    assert await _grants(idp, clock, claims, grants_claim="realm_access.roles") == frozenset()


async def test_issue17_display_name_falls_back_to_sub(
    idp: Idp, authenticator: Authenticator
) -> None:
    token = idp.mint(claims={"client_id": "router"}, drop=("preferred_username",))
    assert (await authenticator.authenticate("Bearer " + token)).display_name == "router"
    token = idp.mint(drop=("preferred_username",))
    assert (await authenticator.authenticate("Bearer " + token)).display_name == "user-1"


# --- API keys ----------------------------------------------------------------------------------


class MemoryApiKeyStore:
    """An ApiKeyStore in a dict, for these tests only (the index backends hold the real ones)."""

    def __init__(self) -> None:
        self.records: dict[str, ApiKeyRecord] = {}
        self.gets = 0

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        if any(r.name == record.name or r.key_id == record.key_id for r in self.records.values()):
            raise ConflictError(f"an API key is already named {record.name!r}")
        self.records[record.key_id] = record

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.gets += 1
        return self.records.get(key_id)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)

    async def revoke_api_key(self, name: str, when: datetime) -> ApiKeyRecord | None:
        for record in self.records.values():
            if record.name == name:
                if record.revoked is None:
                    record = dataclasses.replace(record, revoked=when)
                    self.records[record.key_id] = record
                return record
        return None


@pytest.fixture
def store() -> MemoryApiKeyStore:
    return MemoryApiKeyStore()


def test_memory_store_follows_the_protocol(store: MemoryApiKeyStore) -> None:
    typed: ApiKeyStore = store
    assert typed is store


async def test_issue17_apikey_create_verify_and_list(store: MemoryApiKeyStore) -> None:
    service = ApiKeyService(store)
    issued = await service.create_api_key("pacs-router", ["hospital-a:write", "hospital-a:read"])
    assert issued.key.startswith("dwk_")
    assert len(issued.key) == 4 + 16 + 1 + 43
    record = issued.record
    assert (
        record.secret_hash
        == hash_api_key(issued.key)
        == "sha256:" + hashlib.sha256(issued.key.encode()).hexdigest()
    )
    assert issued.key not in repr(issued)
    stored = store.records[record.key_id]
    assert issued.key.split("_", 2)[2] not in repr(stored)  # the secret is nowhere in the record
    assert stored.expires is None and stored.revoked is None
    principal = await service.verify(issued.key)
    assert (principal.subject, principal.kind, principal.display_name) == (
        "pacs-router",
        "apikey",
        "pacs-router",
    )
    assert principal.grants == {Grant("hospital-a", Role.WRITE), Grant("hospital-a", Role.READ)}
    assert principal.allows("hospital-a", Role.WRITE)
    assert not principal.allows("hospital-a", Role.DELETE)
    await service.create_api_key("backup", [Grant(ALL_SITES, Role.READ)], expires_days=30)
    assert [r.name for r in await service.list_api_keys()] == ["backup", "pacs-router"]


async def test_issue17_apikey_via_authenticator(store: MemoryApiKeyStore) -> None:
    service = ApiKeyService(store)
    authenticator = Authenticator(api_keys=service)
    issued = await service.create_api_key("viewer", ["*:read"])
    principal = await authenticator.authenticate(f"Bearer {issued.key}")
    assert principal.kind == "apikey"
    assert authenticator.api_keys is service
    error = await _refused(authenticator, "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    assert "only API keys" in error.reason


async def test_issue17_apikey_wrong_secret_and_unknown_id_look_alike(
    store: MemoryApiKeyStore,
) -> None:
    service = ApiKeyService(store)
    issued = await service.create_api_key("router", ["a:write"])
    wrong_secret = issued.key[:-4] + ("AAAA" if not issued.key.endswith("AAAA") else "BBBB")
    unknown_id = "dwk_" + "0" * 16 + issued.key[20:]
    for key in (wrong_secret, unknown_id):
        with pytest.raises(UnauthorizedError, match="the API key is not known") as caught:
            await service.verify(key)
        assert caught.value.error == "invalid_token"


@pytest.mark.parametrize(
    "key",
    ["dwk_", "dwk_abc", "dwk_" + "g" * 16 + "_" + "a" * 43, "dwk_" + "0" * 16 + "_" + "a" * 42,
     "dwk_" + "0" * 16 + "-" + "a" * 43, "dwk_" + "0" * 16 + "_" + "a" * 44],
)  # fmt: skip
async def test_issue17_malformed_apikey_is_refused(store: MemoryApiKeyStore, key: str) -> None:
    with pytest.raises(UnauthorizedError, match="malformed"):
        await ApiKeyService(store).verify(key)
    assert store.gets == 0


async def test_issue17_apikey_compared_in_constant_time(
    store: MemoryApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []

    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(apikeys_module.hmac, "compare_digest", spy)
    service = ApiKeyService(store)
    issued = await service.create_api_key("router", ["a:write"])
    await service.verify(issued.key)
    with pytest.raises(UnauthorizedError):
        await service.verify(issued.key[:-1] + ("x" if issued.key[-1] != "x" else "y"))
    assert len(calls) == 2
    assert calls[0][0] == issued.record.secret_hash.encode()


async def test_issue17_expired_apikey_is_refused(store: MemoryApiKeyStore) -> None:
    today = datetime(2030, 1, 1, tzinfo=UTC)
    now = [today]
    service = ApiKeyService(store, now=lambda: now[0])
    issued = await service.create_api_key("temp", ["a:read"], expires_days=2)
    assert issued.record.expires == today + timedelta(days=2)
    now[0] = today + timedelta(days=2) - timedelta(seconds=1)
    await service.verify(issued.key)
    now[0] = today + timedelta(days=2)
    with pytest.raises(UnauthorizedError, match="expired"):
        await service.verify(issued.key)  # checked even though the record is cached


async def test_issue17_revoked_apikey_is_refused_at_once_here(store: MemoryApiKeyStore) -> None:
    service = ApiKeyService(store)
    issued = await service.create_api_key("router", ["a:write"])
    await service.verify(issued.key)
    revoked = await service.revoke_api_key("router")
    assert revoked.revoked is not None
    with pytest.raises(UnauthorizedError, match="revoked"):
        await service.verify(issued.key)
    # Revoking again keeps the first time; an unknown name is a 404
    assert (await service.revoke_api_key("router")).revoked == revoked.revoked
    with pytest.raises(NotFoundError):
        await service.revoke_api_key("nobody")


async def test_issue17_revocation_elsewhere_applies_within_the_cache_ttl(
    store: MemoryApiKeyStore, clock: Clock
) -> None:
    server = ApiKeyService(store, clock=clock)  # a serving worker
    cli = ApiKeyService(store)  # another process: `dicomweb-server apikey revoke`
    issued = await cli.create_api_key("router", ["a:write"])
    for _ in range(100):
        await server.verify(issued.key)
    assert store.gets == 1  # a busy client costs one index lookup per TTL
    await cli.revoke_api_key("router")
    clock.now += 4.9
    await server.verify(issued.key)  # still cached: the documented lag
    clock.now += 0.1
    with pytest.raises(UnauthorizedError, match="revoked"):
        await server.verify(issued.key)
    assert store.gets == 2


async def test_issue17_apikey_cache_is_bounded(
    store: MemoryApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apikeys_module, "API_KEY_CACHE_ENTRIES", 3)
    service = ApiKeyService(store)
    keys = [(await service.create_api_key(f"k{i}", ["a:read"])).key for i in range(5)]
    for key in keys:
        await service.verify(key)
    assert len(service._cache) == 3
    await service.verify(keys[-1])
    assert store.gets == 5
    await service.verify(keys[0])
    assert store.gets == 6


@pytest.mark.parametrize(
    ("name", "grants", "days", "message"),
    [
        ("", ["a:read"], None, "API key name"),
        ("-x", ["a:read"], None, "API key name"),
        ("has space", ["a:read"], None, "API key name"),
        ("x" * 64, ["a:read"], None, "API key name"),
        ("ok", [], None, "at least one"),
        ("ok", ["a:rwx"], None, "no role"),
        ("ok", ["Bad:read"], None, "site name"),
        ("ok", ["a:read"], 0, "1 to"),
        ("ok", ["a:read"], 10**6, "1 to"),
    ],
)
async def test_issue17_apikey_create_checks_its_input(
    store: MemoryApiKeyStore, name: str, grants: list[str], days: int | None, message: str
) -> None:
    with pytest.raises(InvalidNameError, match=message):
        await ApiKeyService(store).create_api_key(name, grants, days)
    assert store.records == {}


async def test_issue17_apikey_names_are_unique(store: MemoryApiKeyStore) -> None:
    service = ApiKeyService(store)
    await service.create_api_key("router", ["a:write"])
    await service.revoke_api_key("router")
    with pytest.raises(ConflictError):
        await service.create_api_key("router", ["a:write"])


# --- modes, settings, challenges ---------------------------------------------------------------


async def test_issue17_none_mode_is_anonymous_with_every_grant() -> None:
    authenticator = Authenticator.from_settings(Settings())
    assert not authenticator.required
    for header in (None, "", "Basic xyz", "Bearer garbage", "Bearer " + "a" * 100_000):
        principal = await authenticator.authenticate(header)
        assert principal is ANONYMOUS
    assert ANONYMOUS.grants == EVERY_GRANT
    assert all(ANONYMOUS.allows("any-site", role) for role in Role)
    await authenticator.aclose()


async def test_issue17_oidc_only_refuses_api_keys(verifier: OidcVerifier) -> None:
    authenticator = Authenticator(oidc=verifier)
    error = await _refused(authenticator, "Bearer dwk_" + "0" * 16 + "_" + "a" * 43)
    assert "API keys are not accepted" in error.reason


async def test_issue17_from_settings_builds_both_methods(
    idp: Idp, store: MemoryApiKeyStore
) -> None:
    settings = Settings(
        auth="apikey,oidc",
        oidc_issuer=idp.issuer,
        oidc_audience=AUDIENCE,
        oidc_grants_claim="realm_access.roles",
        oidc_grant_prefix="dicomweb:",
        max_token_bytes=4096,
    )
    assert settings.auth == "oidc,apikey"
    assert settings.auth_methods == {"oidc", "apikey"}
    authenticator = Authenticator.from_settings(settings, api_key_store=store)
    try:
        assert authenticator.required
        token = idp.mint(claims={"realm_access": {"roles": ["dicomweb:a:read"]}})
        assert (await authenticator.authenticate("Bearer " + token)).grants == {
            Grant("a", Role.READ)
        }
        assert authenticator.api_keys is not None
        issued = await authenticator.api_keys.create_api_key("router", ["a:write"])
        assert (await authenticator.authenticate("Bearer " + issued.key)).subject == "router"
        error = await _refused(authenticator, "Bearer " + "a" * 5000)
        assert "longer than 4096" in error.reason
    finally:
        await authenticator.aclose()
    with pytest.raises(ValueError, match="ApiKeyStore"):
        Authenticator.from_settings(Settings(auth="apikey"))


@pytest.mark.parametrize(
    ("value", "canonical"),
    [("none", "none"), ("NONE", "none"), ("oidc", "oidc"), (" apikey ", "apikey"),
     ("apikey,oidc", "oidc,apikey"), ("oidc, apikey", "oidc,apikey")],
)  # fmt: skip
def test_issue17_auth_setting_values(value: str, canonical: str) -> None:
    assert Settings.from_env(auth=value).auth == canonical


@pytest.mark.parametrize("value", ["", "basic", "none,oidc", "oidc,saml", ","])
def test_issue17_auth_setting_refuses_other_values(value: str) -> None:
    with pytest.raises(
        SettingsError, match="DICOMWEB_AUTH must be none, oidc, apikey or oidc,apikey"
    ):
        Settings.from_env(auth=value)


def test_issue17_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMWEB_AUTH", "oidc")
    monkeypatch.setenv("DICOMWEB_OIDC_ISSUER", "https://idp.example/realms/h")
    monkeypatch.setenv("DICOMWEB_OIDC_AUDIENCE", "dicomweb")
    monkeypatch.setenv("DICOMWEB_OIDC_LEEWAY_SECONDS", "5")
    monkeypatch.setenv("DICOMWEB_OIDC_ALGORITHMS", "es256, rs256")
    monkeypatch.setenv("DICOMWEB_MAX_TOKEN_BYTES", "4096")
    settings = Settings.from_env()
    assert (settings.auth, settings.oidc_leeway_seconds, settings.max_token_bytes) == (
        "oidc",
        5,
        4096,
    )
    assert settings.oidc_algorithms == "ES256,RS256"
    assert (settings.oidc_grants_claim, settings.oidc_grant_prefix, settings.oidc_jwks_url) == (
        "dicomweb_grants",
        "",
        "",
    )
    settings.check_auth()


def test_issue17_check_auth_combinations() -> None:
    with pytest.raises(SettingsError, match="needs DICOMWEB_OIDC_ISSUER"):
        Settings(auth="oidc", oidc_audience="x").check_auth()
    with pytest.raises(SettingsError, match="needs DICOMWEB_OIDC_AUDIENCE"):
        Settings(auth="oidc,apikey", oidc_issuer="https://idp").check_auth()
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "example.org"):
        with pytest.raises(SettingsError, match="loopback"):
            Settings(host=host).check_auth()
        Settings(host=host, auth="apikey").check_auth()
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        Settings(host=host).check_auth()


def test_issue17_challenges() -> None:
    error = UnauthorizedError('bad "token" \\ é\n', "invalid_token")
    assert error.challenge == 'Bearer error="invalid_token", error_description="bad ?token? ? ??"'
    assert UnauthorizedError("x", None).challenge == "Bearer"
    forbidden = ForbiddenError("no read grant on hospital-a")
    assert forbidden.status == 403
    assert forbidden.challenge == (
        'Bearer error="insufficient_scope", error_description="no read grant on hospital-a"'
    )


# --- nothing secret is logged ------------------------------------------------------------------


async def test_issue17_no_credential_is_logged(
    idp: Idp,
    authenticator: Authenticator,
    store: MemoryApiKeyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert authenticator.api_keys is not None
    revoked = await authenticator.api_keys.create_api_key("old", ["a:read"])
    await authenticator.api_keys.revoke_api_key("old")
    live = await authenticator.api_keys.create_api_key("live", ["a:read"])
    credentials = [
        idp.mint(claims={"exp": _now() - 600}),
        idp.mint(claims={"aud": "other"}),
        idp.mint(kid="nobody", key=_rsa(2048, 1)),
        idp.mint(kid="rsa-1", key=_rsa(2048, 2)),
        idp.mint(claims={"padding": "x" * 9000}),
        revoked.key,
        live.key[:-2] + "zz",
        "dwk_" + "0" * 16 + "_" + "s" * 43,
    ]
    with caplog.at_level(logging.DEBUG):
        for credential in credentials:
            await _refused(authenticator, "Bearer " + credential)
        await _refused(authenticator, "Basic " + base64.b64encode(b"user:hunter2").decode())
    assert "authentication refused" in caplog.text
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for credential in credentials:
        for part in credential.split(".") + credential.split("_"):
            if len(part) >= 20:
                assert part not in logged
    assert "dXNlcjpodW50ZXIy" not in logged
