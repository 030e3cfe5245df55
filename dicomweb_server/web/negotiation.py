"""Accept header → the media type and transfer syntax a response will use (PS3.18 8.7)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.errors import NotAcceptableError

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "MediaRange",
    "accept_frames",
    "accept_instances",
    "accept_json",
    "parse_accept",
]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header."""

    type: str
    params: dict[str, str]
    q: float


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


def parse_accept(header: str | None) -> list[MediaRange]:
    """Entries by descending q (stable); an absent or empty header means */*."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
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
    return sorted(ranges, key=lambda r: -r.q)


def _matches(offered: str, wanted: str) -> bool:
    if wanted in ("*/*", offered):
        return True
    return wanted.endswith("/*") and offered.startswith(wanted[:-1])


def accept_instances(header: str | None, stored_syntax: str | None) -> str | None:
    """The transfer syntax for multipart application/dicom: None means as stored.

    PS3.18 8.7.3.4: `transfer-syntax=*` asks for the stored bytes. Until transcoding lands,
    a request without the parameter is also served as stored (each part's Content-Type names
    its syntax), and an explicit syntax other than the stored one is a 406 that says so.
    """
    reasons = []
    for media in parse_accept(header):
        if media.type == "multipart/related":
            part_type = media.params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                reasons.append(f"type={part_type}")
                continue
        elif not _matches("application/dicom", media.type):
            reasons.append(media.type)
            continue
        syntax = media.params.get("transfer-syntax")
        if syntax in (None, "*") or syntax == stored_syntax:
            return None
        reasons.append(f"transfer-syntax={syntax}")
    raise NotAcceptableError(
        "cannot produce any of the accepted representations ("
        + ", ".join(reasons[:5])
        + '); instances are served as multipart/related; type="application/dicom"'
        " in their stored transfer syntax (transfer-syntax=*)"
    )


def accept_frames(header: str | None) -> None:
    """Frames are served as native multipart application/octet-stream (PS3.18 8.7.3.5.2)."""
    for media in parse_accept(header):
        if media.type == "multipart/related":
            part_type = media.params.get("type", "application/octet-stream").lower()
            syntax = media.params.get("transfer-syntax")
            if part_type == "application/octet-stream" and syntax in (
                None,
                "*",
                EXPLICIT_VR_LITTLE_ENDIAN,
            ):
                return
        elif _matches("application/octet-stream", media.type):
            return
    raise NotAcceptableError(
        'frames are available as multipart/related; type="application/octet-stream"'
        f" (transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN})"
    )


def accept_json(header: str | None) -> None:
    """QIDO and metadata answer application/dicom+json (or application/json)."""
    for media in parse_accept(header):
        if _matches("application/dicom+json", media.type) or _matches(
            "application/json", media.type
        ):
            return
    raise NotAcceptableError("this resource is available as application/dicom+json only")
