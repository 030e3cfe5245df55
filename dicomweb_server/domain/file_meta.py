"""The File Meta Information group (PS3.10 7.1) of a received instance: checked, and rewritten
when it is wrong, so no object is ever served with a header we know to be wrong.

A sender's meta group is kept byte for byte when it is right. When it is not (a group length
that does not measure the group, a missing or wrong version, Media Storage UIDs that differ
from the data set's, no Implementation Class UID), the group is written anew from what was
parsed, with our Implementation Class UID and version name (PS3.10 7.1: they name the
implementation that last wrote the file) and the sender's Source, Sending and Receiving AE
titles and private information kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "FileMeta",
    "build_file_meta",
    "meta_problems",
    "read_file_meta",
]

# A UUID-derived UID (PS3.5 B.2) naming this implementation, and its version (SH, 16 chars).
IMPLEMENTATION_CLASS_UID = "2.25.297358470372658117290383434458106548719"
IMPLEMENTATION_VERSION_NAME = "DICOMWEBSRV_0_1"

_META_START = 132  # after the 128-byte preamble and "DICM"
_LONG = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
_MAX_ELEMENTS = 64
_MAX_VALUE = 1 << 16
# Elements of the sender's group written again as they came.
_KEPT = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


@dataclass(frozen=True, slots=True)
class FileMeta:
    """The meta group as received: its elements (tag → (VR, value)) and where it ends."""

    elements: dict[int, tuple[bytes, bytes]]
    end: int

    def text(self, tag: int) -> str:
        """A string element's value, trailing padding removed ("" when absent)."""
        found = self.elements.get(tag)
        return "" if found is None else found[1].rstrip(b"\0 ").decode("latin_1")


def read_file_meta(head: bytes) -> FileMeta:
    """The explicit-VR group 2 elements from byte 132 of `head` (which holds the whole group;
    a group longer than `head` ends where `head` does)."""
    elements: dict[int, tuple[bytes, bytes]] = {}
    position = _META_START
    for _ in range(_MAX_ELEMENTS):
        if len(head) < position + 8:
            break
        group, element = struct.unpack_from("<HH", head, position)
        if group != 0x0002:
            break
        vr = head[position + 4 : position + 6]
        if vr in _LONG:
            if len(head) < position + 12:
                break
            (length,) = struct.unpack_from("<I", head, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", head, position + 6)
            start = position + 8
        if length > _MAX_VALUE or start + length > len(head):
            break
        elements[group << 16 | element] = (vr, head[start : start + length])
        position = start + length
    return FileMeta(elements, position)


def meta_problems(meta: FileMeta, sop_class_uid: str, sop_instance_uid: str) -> list[str]:
    """What is wrong with the group for this data set (empty when nothing is)."""
    problems = []
    length = meta.elements.get(0x00020000)
    measured = meta.end - _META_START - 12  # the group after its own 12-byte length element
    if length is None or len(length[1]) != 4:
        problems.append("no File Meta Information Group Length")
    elif struct.unpack("<I", length[1])[0] != measured:
        declared = struct.unpack("<I", length[1])[0]
        problems.append(f"File Meta Information Group Length {declared} (the group has {measured})")
    if meta.elements.get(0x00020001, (b"", b""))[1] != b"\x00\x01":
        problems.append("File Meta Information Version is not 00\\01")
    if meta.text(0x00020002) != sop_class_uid:
        problems.append("MediaStorageSOPClassUID differs from SOPClassUID")
    if meta.text(0x00020003) != sop_instance_uid:
        problems.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    if not meta.text(0x00020012):
        problems.append("no Implementation Class UID")
    return problems


def build_file_meta(
    meta: FileMeta, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    """A correct group 2 for the data set, the sender's AE titles and private data kept."""
    body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x00020003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x00020010, b"UI", transfer_syntax_uid.encode("ascii")),
            _element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            *(_element(tag, *meta.elements[tag]) for tag in _KEPT if tag in meta.elements),
        ]
    )
    return _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:  # PS3.5 7.1.1: UIDs pad with NUL, text with a space
        value += b"\0" if vr == b"UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value
