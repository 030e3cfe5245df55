"""The error tree: every error we raise carries its HTTP status.

    DicomwebError (500)
    ├── BadRequestError (400)
    │   ├── InvalidIdentifierError (400)     malformed UID in a path or query
    │   ├── InvalidQueryError (400)          unknown key, bad date range, bad limit
    │   └── MalformedRequestError (400)      broken multipart, empty body
    ├── NotFoundError (404)
    ├── NotAcceptableError (406)             nothing in Accept can be produced
    ├── RequestTimeoutError (408)            a request body that stalls or crawls
    ├── ConflictError (409)
    ├── PayloadTooLargeError (413)           a configured limit was exceeded
    ├── UnsupportedMediaTypeError (415)
    └── BackendUnavailableError (503)        index or blob store down or timing out

Adapters wrap driver exceptions into these; no driver type crosses a Protocol.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BadRequestError",
    "ConflictError",
    "DicomwebError",
    "InvalidIdentifierError",
    "InvalidQueryError",
    "MalformedRequestError",
    "NotAcceptableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "UnsupportedMediaTypeError",
]


class DicomwebError(Exception):
    """Base of every error we raise on purpose; `status` is the HTTP status it maps to."""

    status: int = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequestError(DicomwebError):
    """The request cannot be understood as sent."""

    status = 400


class InvalidIdentifierError(BadRequestError):
    """A UID that is not digits and dots, or longer than 64 characters."""


class InvalidQueryError(BadRequestError):
    """A QIDO parameter that is unknown or malformed."""


class MalformedRequestError(BadRequestError):
    """A body that does not follow its declared media type."""


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


class PayloadTooLargeError(DicomwebError):
    """A configured size or count limit was exceeded."""

    status = 413


class UnsupportedMediaTypeError(DicomwebError):
    """The request body's media type is not one this resource accepts."""

    status = 415


class BackendUnavailableError(DicomwebError):
    """The index or blob store is down or did not answer in time."""

    status = 503
