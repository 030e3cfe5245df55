"""Which frame representations a request accepts, and what each one costs to produce.

PS3.18 8.7.3.5: a frame's media type and transfer syntax; the stored syntax where it is
acceptable, else a transcode the installed codecs can do (406 with reasons when none).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.codecs.media_types import FRAME_MEDIA_TYPES, OCTET_STREAM, media_type_of
from dicomweb_server.codecs.registry import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    LOSSY_SYNTAXES,
    NATIVE_SYNTAXES,
    can_encode,
)

__all__ = [
    "RANGED_NATIVE",
    "FrameFormat",
    "WantedFrames",
    "default_syntax",
    "frame_formats",
    "why_not",
]

# Little-endian native syntaxes whose frames are the stored bytes at the recorded offsets.
RANGED_NATIVE = frozenset(NATIVE_SYNTAXES - {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})


@dataclass(frozen=True, slots=True)
class WantedFrames:
    """An acceptable representation of frames or bulk data: a media type (or "*/*", "image/*")
    and a transfer syntax (None: the media type's default; "*": as stored)."""

    media_type: str
    transfer_syntax: str | None


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """What frame bytes are: the media type and the exact transfer syntax (PS3.18 8.7.3.5)."""

    media_type: str
    transfer_syntax: str
    as_stored: bool


def default_syntax(stored: str) -> str:
    """PS3.18 8.7.3.4: explicit VR little endian, except that lossy data stays as stored."""
    return stored if stored in LOSSY_SYNTAXES else EXPLICIT_VR_LITTLE_ENDIAN


def why_not(stored: str, target: str) -> str | None:
    """Why `stored` cannot become `target` with the codecs installed, or None."""
    if not can_encode(target):
        return "no installed codec encodes it"
    return None


def frame_formats(item: WantedFrames, stored: str, reasons: list[str]) -> list[FrameFormat]:
    """The concrete (media type, syntax) pairs an Accept entry allows, best first."""
    stored_type = media_type_of(stored)
    syntax = item.transfer_syntax
    if item.media_type in ("*/*", "image/*"):
        if syntax not in (None, "*"):
            media = media_type_of(syntax)
            if media is None or (item.media_type == "image/*" and media == OCTET_STREAM):
                reasons.append(f"{item.media_type}; transfer-syntax={syntax}: not a frame syntax")
                return []
            return frame_formats(WantedFrames(media, syntax), stored, reasons)
        if stored_type is not None and stored_type != OCTET_STREAM:
            return [FrameFormat(stored_type, stored, True)]  # compressed: cheapest as stored
        if item.media_type == "*/*":
            return [FrameFormat(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, False)]
        reasons.append("image/*: the frames are stored uncompressed")
        return []
    allowed = FRAME_MEDIA_TYPES[item.media_type]
    if item.media_type == OCTET_STREAM:
        if syntax == "*" and stored in RANGED_NATIVE:
            return [FrameFormat(OCTET_STREAM, stored, True)]
        if syntax == "*" and stored_type != OCTET_STREAM:
            return [FrameFormat(OCTET_STREAM, stored, True)]
        if syntax in (None, "*", *NATIVE_SYNTAXES):
            return [FrameFormat(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, False)]
        reasons.append(f"{OCTET_STREAM}; transfer-syntax={syntax}: octet-stream is native only")
        return []
    if syntax == "*" or (syntax is None and stored in allowed):
        if stored in allowed:
            return [FrameFormat(item.media_type, stored, True)]
        reasons.append(f"{item.media_type}; transfer-syntax=*: the frames are stored as {stored}")
        return []
    candidates = allowed if syntax is None else (syntax,)
    formats = []
    for uid in candidates:
        if uid not in allowed:
            reasons.append(f"{item.media_type} cannot carry transfer syntax {uid}")
        elif uid == stored:
            formats.append(FrameFormat(item.media_type, uid, True))
        elif (reason := why_not(stored, uid)) is not None:
            reasons.append(f"{item.media_type} {uid}: {reason}")
        else:
            formats.append(FrameFormat(item.media_type, uid, False))
    return formats
