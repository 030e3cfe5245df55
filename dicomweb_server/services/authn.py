"""Authentication: an Authorization header value → the calling Principal, or a 401 reason.

DICOMWEB_AUTH picks what is accepted, always as `Authorization: Bearer <credential>`:

    none         no access control: every caller, with or without a header, is ANONYMOUS with
                 every grant (`*:read`, `*:write`, `*:delete`, `*:admin`); headers are not read.
                 Only for a server on loopback (`Settings.check_auth`).
    oidc         an OIDC access token from DICOMWEB_OIDC_ISSUER (services/oidc.py)
    apikey       an API key `dwk_...` (services/apikeys.py)
    oidc,apikey  either: a credential starting with `dwk_` is an API key, anything else a token

Every refusal is an UnauthorizedError (401) with RFC 6750's code: none when no credentials were
sent, `invalid_request` for a header that is not `Bearer <token68>` or is longer than
DICOMWEB_MAX_TOKEN_BYTES (refused before any parsing), `invalid_token` for a credential that does
not verify. Refusals are logged at debug level with their reason; a credential never is.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

from dicomweb_server.config import Settings
from dicomweb_server.errors import UnauthorizedError
from dicomweb_server.index.api_keys import ApiKeyStore
from dicomweb_server.services.apikeys import KEY_PREFIX, ApiKeyService
from dicomweb_server.services.oidc import OidcVerifier
from dicomweb_server.services.principal import ANONYMOUS, Principal, PrincipalKind

__all__ = ["ANONYMOUS", "Authenticator", "Principal", "PrincipalKind", "TokenVerifier"]

log = logging.getLogger("dicomweb_server.auth")

# RFC 6750's b64token: what a bearer credential may contain
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenVerifier(Protocol):
    """Turns one kind of bearer credential into a Principal, or raises UnauthorizedError."""

    async def verify(self, token: str) -> Principal:
        """The principal `token` proves; UnauthorizedError (or a 503 error) otherwise."""
        ...


class Authenticator:
    """Turns Authorization header values into Principals as DICOMWEB_AUTH says.

    With neither verifier, access control is off (DICOMWEB_AUTH=none): everyone is ANONYMOUS.
    """

    def __init__(
        self,
        *,
        oidc: TokenVerifier | None = None,
        api_keys: ApiKeyService | None = None,
        max_token_bytes: int = 8192,
    ) -> None:
        self._oidc = oidc
        self._api_keys = api_keys
        self._max_token_bytes = max_token_bytes

    @classmethod
    def from_settings(
        cls, settings: Settings, *, api_key_store: ApiKeyStore | None = None
    ) -> Authenticator:
        """The authenticator DICOMWEB_AUTH asks for; `apikey` needs the store of keys."""
        methods = settings.auth_methods
        api_keys = None
        if "apikey" in methods:
            if api_key_store is None:
                raise ValueError("DICOMWEB_AUTH=apikey needs an ApiKeyStore")
            api_keys = ApiKeyService(api_key_store)
        oidc = OidcVerifier.from_settings(settings) if "oidc" in methods else None
        return cls(oidc=oidc, api_keys=api_keys, max_token_bytes=settings.max_token_bytes)

    @property
    def required(self) -> bool:
        """False when access control is off (DICOMWEB_AUTH=none)."""
        return self._oidc is not None or self._api_keys is not None

    @property
    def api_keys(self) -> ApiKeyService | None:
        """The API key service: revoke through it and this process stops accepting the key at
        once (other processes within API_KEY_CACHE_SECONDS)."""
        return self._api_keys

    async def aclose(self) -> None:
        """Release the identity provider connection, if any."""
        if isinstance(self._oidc, OidcVerifier):
            await self._oidc.aclose()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by an Authorization header value (None: no header sent)."""
        if not self.required:
            return ANONYMOUS
        try:
            return await self._authenticate(authorization)
        except UnauthorizedError as exc:
            log.debug("authentication refused: %s", exc.reason)
            raise

    async def _authenticate(self, authorization: str | None) -> Principal:
        if authorization is None or not authorization.strip():
            raise UnauthorizedError(
                "authentication required: send Authorization: Bearer <token or API key>", None
            )
        # Checked before anything parses it (the scheme and spaces are allowed for on top)
        if len(authorization) > self._max_token_bytes + 32:
            raise _too_long(self._max_token_bytes)
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise UnauthorizedError("only Bearer credentials are accepted", "invalid_request")
        credential = credential.strip()
        if len(credential) > self._max_token_bytes:
            raise _too_long(self._max_token_bytes)
        if not _TOKEN68.fullmatch(credential):
            raise UnauthorizedError("the bearer credential is malformed", "invalid_request")
        if credential.startswith(KEY_PREFIX):
            if self._api_keys is None:
                raise UnauthorizedError("API keys are not accepted by this server")
            return await self._api_keys.verify(credential)
        if self._oidc is None:
            raise UnauthorizedError(f"only API keys ({KEY_PREFIX}...) are accepted by this server")
        return await self._oidc.verify(credential)


def _too_long(limit: int) -> UnauthorizedError:
    return UnauthorizedError(
        f"the bearer credential is longer than {limit} bytes (DICOMWEB_MAX_TOKEN_BYTES)",
        "invalid_request",
    )
