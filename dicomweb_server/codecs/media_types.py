"""Bulk data and frame media types and the transfer syntaxes each may carry (PS3.18 8.7.3.5)."""

from __future__ import annotations

from dicomweb_server.codecs.registry import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
)

__all__ = ["FRAME_MEDIA_TYPES", "OCTET_STREAM", "canonical_media_type", "media_type_of"]

OCTET_STREAM = "application/octet-stream"
# PS3.18 Table 8.7.3-5 (Transfer Syntax UID and Media Type for bulk data), default first.
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    OCTET_STREAM: (EXPLICIT_VR_LITTLE_ENDIAN,),
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}
_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


def canonical_media_type(media_type: str) -> str:
    """The registered name of a media type we know under an older `x-` name."""
    return _ALIASES.get(media_type, media_type)


def media_type_of(uid: str) -> str | None:
    """The media type that carries frames of `uid`; native syntaxes are octet-stream."""
    if uid in NATIVE_SYNTAXES:
        return OCTET_STREAM
    for media_type, syntaxes in FRAME_MEDIA_TYPES.items():
        if uid in syntaxes:
            return media_type
    return None
