"""Accept header → the media type and transfer syntax a response will use (PS3.18 8.7)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.codecs.media_types import FRAME_MEDIA_TYPES, canonical_media_type
from dicomweb_server.errors import BadRequestError, NotAcceptableError
from dicomweb_server.services.frame_formats import WantedFrames

__all__ = [
    "DICOM_JSON",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "JSON",
    "MAX_ACCEPT_LENGTH",
    "MAX_ACCEPT_RANGES",
    "ZIP",
    "MediaRange",
    "WantedFrames",
    "WantedMedia",
    "accept_frames",
    "accept_instances",
    "accept_json",
    "accept_media",
    "accept_zip",
    "parse_accept",
]

DICOM_JSON = "application/dicom+json"
JSON = "application/json"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MAX_ACCEPT_LENGTH = 8192  # characters of an Accept header (or the `accept` parameter)
MAX_ACCEPT_RANGES = 64  # media ranges in one Accept header
ZIP = "application/zip"


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header."""

    type: str
    params: dict[str, str]
    q: float


@dataclass(frozen=True, slots=True)
class WantedMedia:
    """An acceptable single body (video, a document): a media type (or `type/*`, `*/*`), sent
    alone or as the one part of multipart/related; a transfer syntax when one is named."""

    media_type: str
    multipart: bool
    transfer_syntax: str | None


def _split(header: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


_ANY = (MediaRange("*/*", {}, 1.0),)
_PARSED_KEPT = 256  # distinct Accept headers kept parsed (clients send a handful each)
_parsed: dict[str, tuple[MediaRange, ...]] = {}


def parse_accept(header: str | None) -> tuple[MediaRange, ...]:
    """Entries by descending q (stable); an absent or empty header means */*. The result is
    shared between requests with the same header: read it, never change it.

    A header longer than MAX_ACCEPT_LENGTH, or with more than MAX_ACCEPT_RANGES entries, is a
    400: no client needs more, and parsing is per character (a 20 MiB header held a worker).
    """
    if not header:
        return _ANY
    parsed = _parsed.get(header)
    if parsed is None:
        parsed = _parse_accept(header)
        if len(_parsed) >= _PARSED_KEPT:
            _parsed.clear()
        _parsed[header] = parsed
    return parsed


def _parse_accept(header: str) -> tuple[MediaRange, ...]:
    if not header.strip():
        return _ANY
    if len(header) > MAX_ACCEPT_LENGTH:
        raise BadRequestError(f"the Accept header is longer than {MAX_ACCEPT_LENGTH} characters")
    if header.count(",") >= MAX_ACCEPT_RANGES:
        raise BadRequestError(f"the Accept header has more than {MAX_ACCEPT_RANGES} entries")
    ranges = []
    for entry in _split(header, ","):
        pieces = _split(entry, ";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return tuple(sorted(ranges, key=lambda r: -r.q))


def _matches(offered: str, wanted: str) -> bool:
    if wanted in ("*/*", offered):
        return True
    return wanted.endswith("/*") and offered.startswith(wanted[:-1])


def _refused_for_instances(media: MediaRange) -> str | None:
    """Why `media` is no multipart application/dicom answer, or None when it is one."""
    if media.type == "multipart/related":
        part_type = media.params.get("type", "application/dicom").lower()
        return None if _matches("application/dicom", part_type) else f"type={part_type}"
    return None if _matches("application/dicom", media.type) else media.type


def _as_stored_zip(media: MediaRange) -> bool:
    return media.type == ZIP and media.params.get("transfer-syntax", "*") == "*"


def accept_instances(header: str | None) -> list[str | None]:
    """Transfer syntaxes acceptable for multipart application/dicom, most preferred first.

    Each item is an explicit UID, "*" (as stored, PS3.18 8.7.3.4) or None (the default:
    explicit VR little endian, or as stored when that is lossy; see the retrieve service).
    """
    wanted: list[str | None] = []
    reasons = []
    for media in parse_accept(header):
        refused = _refused_for_instances(media)
        if refused is not None:
            reasons.append(refused)
            continue
        syntax = media.params.get("transfer-syntax")
        if syntax not in wanted:
            wanted.append(syntax)
    if not wanted:
        raise NotAcceptableError(
            "cannot produce any of the accepted representations ("
            + ", ".join(reasons[:5])
            + '); instances are served as multipart/related; type="application/dicom", and'
            " studies, series and instances as application/zip"
        )
    return wanted


def accept_single_part(header: str | None) -> bool:
    """True when bare `application/dicom` (one Part 10 body, no multipart) is the most preferred
    acceptable answer for one instance. PS3.18 defines multipart for the Studies Service;
    Microsoft's and Google's services answer a bare file to this Accept, and their clients
    expect it: a multipart answer would be one the client did not accept."""
    for media in parse_accept(header):
        if _refused_for_instances(media) is None or _as_stored_zip(media):
            return media.type == "application/dicom"
    return False


def accept_zip(header: str | None) -> bool:
    """True when a zip of the stored Part 10 files is preferred to multipart application/dicom
    (dcm4chee-arc's `application/zip`, for a download in one click). Wildcards mean multipart:
    only a client that names the zip gets one. A zip in another transfer syntax is not made."""
    for media in parse_accept(header):
        if _as_stored_zip(media):
            return True
        if _refused_for_instances(media) is None:
            return False
    return False


def accept_frames(header: str | None) -> list[WantedFrames]:
    """Acceptable frame or bulk data representations, most preferred first (PS3.18 8.7.3.5)."""
    wanted: list[WantedFrames] = []
    reasons = []
    for media in parse_accept(header):
        part_type = media.type
        if media.type == "multipart/related":
            part_type = media.params.get("type", "application/octet-stream").lower()
        part_type = canonical_media_type(part_type)
        if part_type not in FRAME_MEDIA_TYPES and part_type not in ("*/*", "image/*"):
            reasons.append(part_type)
            continue
        item = WantedFrames(part_type, media.params.get("transfer-syntax"))
        if item not in wanted:
            wanted.append(item)
    if not wanted:
        raise NotAcceptableError(
            "cannot produce any of the accepted representations ("
            + ", ".join(reasons[:5])
            + "); frames and bulk data are served as multipart/related with type "
            + ", ".join(FRAME_MEDIA_TYPES)
        )
    return wanted


def accept_json(header: str | None) -> str:
    """The JSON type QIDO and metadata answer: application/dicom+json, or application/json
    when that is what the most preferred acceptable entry names (the same body either way)."""
    for media in parse_accept(header):
        if _matches(DICOM_JSON, media.type):
            return DICOM_JSON
        if media.type == JSON:
            return JSON
    raise NotAcceptableError(f"this resource is available as {DICOM_JSON} or {JSON}")


def accept_media(header: str | None, default_part: str) -> list[WantedMedia]:
    """Accept entries for a single body, most preferred first (PS3.18 8.7.3.3.2, 8.7.4).

    `multipart/related` without a type means `default_part` (octet-stream for bulk data).
    """
    wanted: list[WantedMedia] = []
    for media in parse_accept(header):
        if media.type == "multipart/related":
            part = media.params.get("type", default_part).lower()
            item = WantedMedia(part, True, media.params.get("transfer-syntax"))
        else:
            item = WantedMedia(media.type, False, media.params.get("transfer-syntax"))
        if item not in wanted:
            wanted.append(item)
    return wanted
