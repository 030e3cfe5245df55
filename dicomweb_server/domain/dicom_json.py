"""DICOM JSON model helpers: absolute BulkDataURIs and the response arrays we stream."""

from __future__ import annotations

__all__ = ["absolute_bulk_uris"]

_RELATIVE = b'"BulkDataURI":"/'


def absolute_bulk_uris(metadata: bytes, root_url: str) -> bytes:
    """Stored metadata keeps BulkDataURIs relative to the root; prefix the public root URL."""
    return metadata.replace(_RELATIVE, b'"BulkDataURI":"' + root_url.encode() + b"/")
