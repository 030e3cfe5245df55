"""The error tree: every error we raise carries its HTTP status.

    DicomwebError (500)
    ├── BadRequestError (400)
    │   ├── InvalidIdentifierError (400)     malformed UID in a path or query
    │   ├── InvalidQueryError (400)          unknown key, bad date range, bad limit
    │   ├── InvalidNameError (400)           a site name, grant or API key name breaking its rule
    │   └── MalformedRequestError (400)      broken multipart, empty body
    ├── UnauthorizedError (401)              no, malformed, expired, revoked or unknown credentials
    ├── ForbiddenError (403)                 authenticated, but no grant for this site and role
    ├── NotFoundError (404)
    ├── NotAcceptableError (406)             nothing in Accept can be produced
    ├── RequestTimeoutError (408)            a request body that stalls or crawls
    ├── ConflictError (409)
    ├── PayloadTooLargeError (413)           a configured limit was exceeded
    ├── UnsupportedMediaTypeError (415)
    └── BackendUnavailableError (503)        a backend down or timing out
        ├── IndexUnavailableError (503)      the index database
        └── StoreUnavailableError (503)      the object store

Adapters wrap driver exceptions into these; no driver type crosses a Protocol.
401 and 403 also carry an RFC 6750 `error` code; `challenge` is their WWW-Authenticate value.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BadRequestError",
    "ConflictError",
    "DicomwebError",
    "ForbiddenError",
    "IndexUnavailableError",
    "InvalidIdentifierError",
    "InvalidNameError",
    "InvalidQueryError",
    "MalformedRequestError",
    "NotAcceptableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "RequestTimeoutError",
    "StoreUnavailableError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]


class DicomwebError(Exception):
    """Base of every error we raise on purpose; `status` is the HTTP status it maps to."""

    status: int = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def public_reason(self) -> str:
        """What the HTTP client is told (the reason, unless it holds backend detail)."""
        return self.reason


class BadRequestError(DicomwebError):
    """The request cannot be understood as sent."""

    status = 400


class InvalidIdentifierError(BadRequestError):
    """A UID that is not digits and dots, or longer than 64 characters."""


class InvalidQueryError(BadRequestError):
    """A QIDO parameter that is unknown or malformed."""


class InvalidNameError(BadRequestError):
    """A site name, `SITE:ROLE` grant or API key name that breaks its naming rule."""


class MalformedRequestError(BadRequestError):
    """A body that does not follow its declared media type."""


class UnauthorizedError(DicomwebError):
    """The caller is not authenticated: credentials missing, malformed or not valid.

    `error` is RFC 6750's code: None when no credentials were sent (the challenge then names
    only the scheme), `invalid_request` for a malformed Authorization header, `invalid_token`
    for a token or API key that does not verify. `reason` never quotes the credential.
    """

    status = 401

    def __init__(self, reason: str, error: str | None = "invalid_token") -> None:
        super().__init__(reason)
        self.error = error

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value: `Bearer error="...", error_description="..."`."""
        return _bearer_challenge(self.error, self.reason)


class ForbiddenError(DicomwebError):
    """The caller is authenticated but holds no grant for this site and role."""

    status = 403
    error = "insufficient_scope"

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value: `Bearer error="insufficient_scope", ...`."""
        return _bearer_challenge(self.error, self.reason)


def _bearer_challenge(error: str | None, description: str) -> str:
    """An RFC 6750 challenge; the description keeps only the characters its grammar allows."""
    if error is None:
        return "Bearer"
    # error-description: %x20-21 / %x23-5B / %x5D-7E (printable ASCII without '"' and '\\')
    safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in description)
    return f'Bearer error="{error}", error_description="{safe}"'


class NotFoundError(DicomwebError):
    """The target resource does not exist."""

    status = 404


class NotAcceptableError(DicomwebError):
    """No media type or transfer syntax in Accept can be produced."""

    status = 406


class RequestTimeoutError(DicomwebError):
    """The client did not send its request body in time (RFC 9110 15.5.9)."""

    status = 408


class ConflictError(DicomwebError):
    """The request conflicts with what is stored."""

    status = 409


class PreconditionFailedError(DicomwebError):
    """A precondition of the request (If-Match) does not hold (RFC 9110 13.1.1)."""

    status = 412


class PayloadTooLargeError(DicomwebError):
    """A configured size or count limit was exceeded."""

    status = 413


class UnsupportedMediaTypeError(DicomwebError):
    """The request body's media type is not one this resource accepts."""

    status = 415


class BackendUnavailableError(DicomwebError):
    """The index or blob store is down or did not answer in time.

    `reason` is for the log and operators (it can name hosts, buckets and keys);
    `public_reason` is what an HTTP client is told.
    """

    status = 503
    component = "a backend"

    @property
    def public_reason(self) -> str:
        return f"{self.component} is unavailable or did not answer in time; try again later"


class IndexUnavailableError(BackendUnavailableError):
    """The index database is down or did not answer in time."""

    component = "the index"


class StoreUnavailableError(BackendUnavailableError):
    """The object store is down or did not answer in time."""

    component = "the object store"
