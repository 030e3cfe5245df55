"""Encapsulated documents and video timing, read from an instance's stored DICOM JSON.

An Encapsulated Document (PS3.3 C.24.2: PDF, CDA, STL, OBJ, MTL) holds its file in
EncapsulatedDocument (0042,0011), typed by MIMETypeOfEncapsulatedDocument (0042,0012); PS3.18
serves that value as bulk data, and as the rendered resource, in the document's own media
type. Video needs its frame rate to time an elementary stream that carries none (PS3.3
C.7.6.5 Cine: FrameTime (0018,1063), CineRate (0018,0040)).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = [
    "DOCUMENT_CLASSES",
    "DOCUMENT_MEDIA_TYPES",
    "ENCAPSULATED_DOCUMENT",
    "EncapsulatedDocument",
    "VideoTiming",
    "document_media_types",
    "encapsulated_document",
    "video_timing",
]

ENCAPSULATED_DOCUMENT = "00420011"
# The Encapsulated Document storage SOP classes (PS3.4 B.5) and a short name for each.
DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "MTL",
}
# The media types those documents are served as (PS3.3 C.24.2.1, PS3.18 Table 8.7.4-1).
DOCUMENT_MEDIA_TYPES = ("application/pdf", "text/xml", "model/stl", "model/obj", "model/mtl")
_MIME_TYPE = "00420012"
_DOCUMENT_LENGTH = "00420015"
_BULKDATA = "/bulkdata/"
# Names a document type is also known by; the first is the registered one (STL was
# application/sla before model/stl was registered, PS3.3 C.24.2.1).
_ALIASES: tuple[tuple[str, ...], ...] = (("model/stl", "application/sla"),)
# Frame rates a DICOM Frame Time rounds (PS3.5 Table 8-4 gives 33.33 ms for 30 Hz).
_COMMON_RATES = tuple(
    Fraction(n, d)
    for n, d in (
        (24000, 1001),
        (24, 1),
        (25, 1),
        (30000, 1001),
        (30, 1),
        (50, 1),
        (60000, 1001),
        (60, 1),
    )
)


@dataclass(frozen=True, slots=True)
class EncapsulatedDocument:
    """Where an instance's document lives and what it is.

    `bulk_path` is the value's path under the instance's `bulkdata/` resource ("00420011")
    when the metadata holds a BulkDataURI; `inline` the bytes when the value was small enough
    to be stored in the metadata (InlineBinary). `declared_length` is EncapsulatedDocumentLength
    (0042,0015), the length without the pad byte an odd-length document gets.
    """

    mime_type: str
    bulk_path: str | None
    inline: bytes | None
    declared_length: int | None

    def content_length(self, stored_length: int) -> int:
        """Bytes of the document itself in a stored value of `stored_length`: the declared
        length when it accounts for the value less at most one pad byte, else all of it."""
        declared = self.declared_length
        if declared is not None and stored_length - 1 <= declared <= stored_length:
            return declared
        return stored_length

    def content(self) -> bytes | None:
        """The inline document without its pad byte; None when it is bulk data."""
        if self.inline is None:
            return None
        return self.inline[: self.content_length(len(self.inline))]


def encapsulated_document(model: dict[str, Any]) -> EncapsulatedDocument | None:
    """The document of an instance's DICOM JSON, or None when it encapsulates none."""
    element = model.get(ENCAPSULATED_DOCUMENT)
    if not isinstance(element, dict):
        return None
    bulk_path = None
    inline = None
    uri = element.get("BulkDataURI")
    if isinstance(uri, str) and _BULKDATA in uri:
        bulk_path = uri.rsplit(_BULKDATA, 1)[1]
    elif isinstance(element.get("InlineBinary"), str):
        try:
            inline = base64.b64decode(element["InlineBinary"], validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        return None
    mime_type = _first(model, _MIME_TYPE)
    length = _first(model, _DOCUMENT_LENGTH)
    return EncapsulatedDocument(
        mime_type=mime_type.strip().lower() if isinstance(mime_type, str) else "",
        bulk_path=bulk_path,
        inline=inline,
        declared_length=length if isinstance(length, int) and length >= 0 else None,
    )


def document_media_types(mime_type: str) -> tuple[str, ...]:
    """The media types a document of `mime_type` is served as: its own, then its aliases."""
    for names in _ALIASES:
        if mime_type in names:
            return (mime_type, *(name for name in names if name != mime_type))
    return (mime_type,) if mime_type else ()


@dataclass(frozen=True, slots=True)
class VideoTiming:
    """A multi-frame instance's timing: frames per second when known, and the frame count."""

    frame_rate: Fraction | None
    number_of_frames: int

    @property
    def duration(self) -> float | None:
        """Seconds of video the attributes declare, when the frame rate is known."""
        if self.frame_rate is None:
            return None
        return float(self.number_of_frames / self.frame_rate)


def video_timing(model: dict[str, Any]) -> VideoTiming:
    """Frame rate from FrameTime (ms per frame) or else CineRate (frames per second).

    A rate within 0.05% of a broadcast rate is that rate: 33.33 ms is 30 Hz, 33.3667 ms 29.97.
    """
    frames = _first(model, "00280008")
    frame_time = _first(model, "00181063")
    cine_rate = _first(model, "00180040")
    rate: Fraction | None = None
    if _positive(frame_time):
        rate = _broadcast_rate(Fraction(1000) / Fraction(frame_time))
    elif _positive(cine_rate):
        rate = _broadcast_rate(Fraction(cine_rate))
    return VideoTiming(rate, frames if isinstance(frames, int) and frames > 0 else 1)


def _broadcast_rate(rate: Fraction) -> Fraction:
    nearest = min(_COMMON_RATES, key=lambda common: abs(rate - common))
    return nearest if abs(rate - nearest) <= nearest / 2000 else rate.limit_denominator(1001)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e9


def _first(model: dict[str, Any], tag: str) -> Any:
    element = model.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None
