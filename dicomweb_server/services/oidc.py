"""OIDC bearer tokens: the signature checked against the identity provider's JWKS, then claims.

Keys: the JWKS at DICOMWEB_OIDC_JWKS_URL, else the `jwks_uri` of the discovery document at
`{issuer}/.well-known/openid-configuration` (fetched once; its `issuer` must equal ours). The key
set is cached. A token naming an unknown `kid` refetches it (key rotation), but at most once every
`min_refresh_seconds` (JWKS_MIN_REFRESH_SECONDS) however many unknown kids arrive, so a flood of
random kids cannot hammer the IdP; a set older than JWKS_MAX_AGE_SECONDS is refetched as well, so
keys withdrawn at the IdP stop working. While the IdP is unreachable the cached set keeps
serving; with no set yet, verification is a 503 (BackendUnavailableError), not a 401.

Tokens: `alg` must be one of DICOMWEB_OIDC_ALGORITHMS (asymmetric only), checked before any key
is looked at, so `none` and HS* are refused and the IdP's public key can never serve as an HMAC
secret (algorithm confusion). The key must fit the alg: RSA of at least 2048 bits for RS*/PS*,
the alg's own curve for ES*, and the JWK's own `alg` and `use` when it names them. `iss`, `aud`,
`exp` and `sub` are required; `exp`, `nbf` and `iat` are checked with
DICOMWEB_OIDC_LEEWAY_SECONDS of clock skew (PyJWT refuses an `iat` in the future).

Subject: `sub`, required. OIDC Core and RFC 9068 make it the stable, unique id within the
issuer; a token without one is refused rather than falling back to `preferred_username` (which
users may change and which need not be unique) or `client_id`. The display name, for people and
audit only, is the first of preferred_username, name, email and client_id.

Grants: the claim DICOMWEB_OIDC_GRANTS_CLAIM. A name that is a top-level claim is used as is (so
Auth0-style `https://example.com/grants` works); otherwise it is a dotted path through nested
objects: `realm_access.roles` for Keycloak realm roles, `resource_access.dicomweb.roles` for the
roles of client `dicomweb`. The claim holds a list of strings or one space-separated string (as
`scope` does). An entry is a grant when it starts with DICOMWEB_OIDC_GRANT_PREFIX and the rest is
`SITE:ROLE`; other entries are ignored (`domain.grants.find_grants`): with the prefix
`dicomweb:`, the Keycloak role `dicomweb:hospital-a:read` grants read on hospital-a and
`offline_access` is skipped. A missing claim means no grants: authenticated, allowed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dicomweb_server.config import Settings
from dicomweb_server.domain.grants import find_grants
from dicomweb_server.errors import BackendUnavailableError, UnauthorizedError
from dicomweb_server.services.principal import Principal

__all__ = [
    "FETCH_TIMEOUT_SECONDS",
    "JWKS_MAX_AGE_SECONDS",
    "JWKS_MIN_REFRESH_SECONDS",
    "MAX_DOCUMENT_BYTES",
    "OidcVerifier",
]

log = logging.getLogger("dicomweb_server.auth")

JWKS_MIN_REFRESH_SECONDS = 30.0  # at most one JWKS fetch (or discovery) per this interval
JWKS_MAX_AGE_SECONDS = 3600.0  # a key set this old is refetched before it is used again
FETCH_TIMEOUT_SECONDS = 10.0  # a whole discovery or JWKS request, connect to last byte
MAX_DOCUMENT_BYTES = 1 << 20  # a discovery document or JWKS larger than this is refused
MAX_JWKS_KEYS = 100  # keys read from one JWKS; the rest are ignored
MIN_RSA_BITS = 2048
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_ACCEPTABLE = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", *_CURVES})
_DISPLAY_CLAIMS = ("preferred_username", "name", "email", "client_id")

# PyJWT's errors, most specific first (InvalidSignatureError is a DecodeError), as 401 reasons
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired (exp)"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat)"),
    (jwt.InvalidAudienceError, "the token is not meant for this server (aud)"),
    (jwt.InvalidIssuerError, "the token comes from another issuer (iss)"),
    (jwt.InvalidIssuedAtError, "the token's iat is not a time"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm does not fit its key"),
    (jwt.InvalidKeyError, "the token's algorithm does not fit its key"),
    (jwt.DecodeError, "the token is malformed"),
)


class _FetchError(Exception):
    """A discovery document or JWKS that could not be fetched or read (never leaves here)."""


@dataclass(frozen=True, slots=True)
class _SigningKey:
    """A usable public key of the JWKS with the constraints its JWK states."""

    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    alg: str | None  # the JWK's own `alg`, if it names one


class OidcVerifier:
    """Verifies OIDC bearer tokens (JWS) against one issuer's JWKS; see the module docstring."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str = "",
        algorithms: Sequence[str] = ("RS256", "ES256", "PS256"),
        leeway_seconds: float = 60,
        grants_claim: str = "dicomweb_grants",
        grant_prefix: str = "",
        min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
        max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
        fetch_timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("OIDC needs an issuer and an audience")
        refused = set(algorithms) - _ACCEPTABLE
        if refused or not algorithms:
            raise ValueError(f"OIDC algorithms must be asymmetric ones, not {sorted(refused)}")
        self._issuer = issuer
        self._audience = audience
        self._jwks_url = jwks_url
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway_seconds
        self._grants_claim = grants_claim
        self._grant_prefix = grant_prefix
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._timeout = fetch_timeout_seconds
        self._clock = clock
        self._keys: dict[str | None, _SigningKey] | None = None
        self._fetched_at = -math.inf  # last successful JWKS fetch
        self._attempted_at = -math.inf  # last fetch attempt, failed or not
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # JWKS fetches attempted, for tests and metrics

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OidcVerifier:
        """A verifier configured by the DICOMWEB_OIDC_* settings (overrides: constructor args)."""
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            algorithms=settings.oidc_algorithms.split(","),
            leeway_seconds=settings.oidc_leeway_seconds,
            grants_claim=settings.oidc_grants_claim,
            grant_prefix=settings.oidc_grant_prefix,
            **overrides,
        )

    async def aclose(self) -> None:
        """Close the HTTP session used to reach the identity provider."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names; UnauthorizedError with the reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid("the token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            accepted = ", ".join(sorted(self._algorithms))
            raise _invalid(f"the token's algorithm {str(alg)[:20]!r} is not accepted ({accepted})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("the token's kid is not a string")
        key = await self._signing_key(kid)
        _check_fit(key, alg)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token has no {exc.claim} claim") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid(_reason(exc)) from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("the token's sub is empty or not a string")
        entries = _entries(_claim(claims, self._grants_claim))
        display = next(
            (v for v in map(claims.get, _DISPLAY_CLAIMS) if isinstance(v, str) and v), subject
        )
        return Principal(subject, "oidc", find_grants(entries, self._grant_prefix), display)

    async def _signing_key(self, kid: str | None) -> _SigningKey:
        """The key named by `kid`, refreshing the set when it is stale or lacks that kid."""
        if self._keys is None or self._clock() - self._fetched_at >= self._max_age:
            await self._refresh()
        assert self._keys is not None  # _refresh raises when it has none
        key = self._keys.get(kid)
        # A refresh in flight (lock held) may bring the kid: wait for it rather than refuse.
        if key is None and kid is not None and (self._may_fetch() or self._lock.locked()):
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            if kid is None:
                raise _invalid("the token names no kid and the issuer has several keys")
            raise _invalid("no key of the issuer matches the token's kid")
        return key

    def _may_fetch(self) -> bool:
        return self._clock() - self._attempted_at >= self._min_refresh

    async def _refresh(self) -> None:
        """Refetch the key set unless one was fetched (or tried) within the refresh interval."""
        async with self._lock:
            # Callers queued behind one refresh share its result instead of fetching again.
            if self._may_fetch():
                self._attempted_at = self._clock()
                self.fetches += 1
                try:
                    self._keys = _signing_keys(await self._get_json(await self._jwks_location()))
                    self._fetched_at = self._clock()
                except _FetchError as exc:
                    log.warning("identity provider keys not fetched: %s", exc)
        if self._keys is None:
            raise BackendUnavailableError("the identity provider's signing keys are unavailable")

    async def _jwks_location(self) -> str:
        """The JWKS URL: configured, or from the discovery document (read once)."""
        if self._jwks_url:
            return self._jwks_url
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise _FetchError(f"{url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise _FetchError(f"{url} has no jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri

    async def _get_json(self, url: str) -> Any:
        """GET a JSON document of at most MAX_DOCUMENT_BYTES, within the fetch timeout."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as answer:
                if answer.status != 200:
                    raise _FetchError(f"{url} answered {answer.status}")
                body = bytearray()
                async for chunk in answer.content.iter_chunked(64 << 10):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _FetchError(f"{url}: {type(exc).__name__} {exc}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _FetchError(f"{url} did not answer JSON") from None


def _signing_keys(jwks: Any) -> dict[str | None, _SigningKey]:
    """The usable signature keys of a JWKS by kid (and under None when there is just one)."""
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        raise _FetchError("the JWKS has no keys list")
    keys: dict[str | None, _SigningKey] = {}
    for jwk in entries[:MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC") or not isinstance(jwk.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # a key we cannot read (or of an algorithm PyJWT lacks) signs nothing here
        if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            alg = jwk.get("alg")
            keys[jwk["kid"]] = _SigningKey(key, alg if isinstance(alg, str) else None)
    if len(keys) == 1:
        keys[None] = next(iter(keys.values()))
    return keys


def _check_fit(key: _SigningKey, alg: str) -> None:
    """UnauthorizedError unless `key` may verify an `alg` signature."""
    if key.alg is not None and key.alg != alg:
        raise _invalid("the token's algorithm is not the one its key is for")
    if alg.startswith(("RS", "PS")):
        if not isinstance(key.key, rsa.RSAPublicKey):
            raise _invalid("the token's algorithm does not fit its key")
        if key.key.key_size < MIN_RSA_BITS:
            raise _invalid(f"the token's RSA key is shorter than {MIN_RSA_BITS} bits")
    elif not isinstance(key.key, ec.EllipticCurvePublicKey) or key.key.curve.name != _CURVES[alg]:
        raise _invalid("the token's algorithm does not fit its key")


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A top-level claim called `name`, else the value at the dotted path `name`."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _entries(value: Any) -> list[str]:
    """A claim's strings: a list of strings, or one space-separated string."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [entry for entry in value if isinstance(entry, str)]
    return []


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "the token is not valid"


def _invalid(reason: str) -> UnauthorizedError:
    return UnauthorizedError(reason, "invalid_token")
